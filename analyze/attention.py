"""Capturing attention and averaging it over a dataset as it streams.

Data contract (as bertviz's, with the batch kept): `capture` returns, for each attention kind, a
tensor `(layers, batch, heads, queries, keys)`, plus the query and key masks. Kinds: "encoder"
(self-attention of an encoder, or of an encoder-only model), "decoder" (causal self-attention of
the decoder) and "cross" (decoder queries, encoder keys).

`AttentionAverage` folds batches into fixed-size sums, so memory depends on the longest sequence
and the number of roles, never on the number of examples:
- by absolute position: `position_mean[l,h,i,j]` is the attention from query position i to key
  position j, averaged over the examples that have query position i (an example without key j
  counts 0 there), so every row sums to 1;
- by role: `role_mean[l,h,r,s]` is the attention that queries of role r pay to all keys of role s,
  averaged over every query of role r in the split; every row sums to 1 over the key roles;
- `role_share[l,h,s]`: the share of all attention (every query weighted alike) that keys of role
  s receive; `layer_role_summary[l,s]` is that summed over heads (the layer x token summary by role).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

KINDS = ("encoder", "decoder", "cross")

# Token roles. Equation: the digits of a, b and c, the exponent 2, the right-hand side 0.
EQUATION_ROLES = ("a", "b", "c", "x", "^", "exp", "+", "-", "=", "rhs", "</s>", "other")
SQUAD_ROLES = ("[CLS]", "question", "context", "answer", "[SEP]", "punct", "other")
SOLUTION_ROLES = ("<start>", "digit", "D", "x", "^", "=", ";", "(", ")", "+", "-", "*", "/", "none", "sqrt", "name", "</s>", "other")


class AttentionUnavailable(RuntimeError):
    """The model returned no attention weights (for instance an sdpa or flash implementation)."""


def equation_roles(tokens: list[str]) -> list[str]:
    """Role of each token of an equation such as `-7x^2+3556x+451612=0</s>`: digits belong to a
    until `x^2`, to b until the second `x`, to c until `=`, then to the right-hand side."""
    roles, part, xs, previous = [], "a", 0, None
    for tok in tokens:
        if tok == "</s>":
            role = "</s>"
        elif tok.isdigit():
            role = "exp" if previous == "^" else part
        elif tok in ("x", "^", "+", "-", "="):
            role = tok
        else:
            role = "other"
        roles.append(role)
        xs += tok == "x"
        if role == "exp":
            part = "b"
        elif tok == "x" and xs == 2:
            part = "c"
        elif tok == "=":
            part = "rhs"
        previous = tok
    return roles


def solution_roles(tokens: list[str]) -> list[str]:
    """Role of each decoder token: `<start>` (T5's start token), digits, symbols, `none`, `sqrt`,
    the names a, b, c of the steps and long formats, `</s>`."""
    out = []
    for tok in tokens:
        if tok in ("<pad>", "<start>"):
            out.append("<start>")
        elif tok.isdigit():
            out.append("digit")
        elif tok in SOLUTION_ROLES:
            out.append(tok)
        elif tok in "noe":
            out.append("none")
        elif tok in "sqrt":
            out.append("sqrt")
        elif tok in "abc":
            out.append("name")
        else:
            out.append("other")
    return out


def squad_roles(tokens: list[str], sequence_ids: list, offsets: list, answer_chars: tuple[int, int] | None, special: dict) -> list[str]:
    """Role of each token of a question-context window: [CLS], [SEP], question, context, answer (a
    context token inside the answer's characters), punct (a token made of punctuation only)."""
    import string

    roles = []
    for tok, seq, span in zip(tokens, sequence_ids, offsets):
        if seq is None:
            roles.append("[CLS]" if tok == special.get("cls") else "[SEP]" if tok == special.get("sep") else "other")
        elif tok.strip("#▁Ġ") and all(ch in string.punctuation for ch in tok.strip("#▁Ġ")):
            roles.append("punct")
        elif seq == 0:
            roles.append("question")
        elif answer_chars and span[0] < answer_chars[1] and span[1] > answer_chars[0]:
            roles.append("answer")
        else:
            roles.append("context")
    return roles


def use_eager_attention(model) -> None:
    """Attention weights come only from the eager implementation (sdpa returns none)."""
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        model.set_attn_implementation("eager")


@torch.no_grad()
def capture(model, input_ids, attention_mask, decoder_input_ids=None, decoder_attention_mask=None, token_type_ids=None) -> dict:
    """{kind: (attention (L, B, H, Q, K), query mask (B, Q), key mask (B, K))}; one forward pass,
    teacher-forced on `decoder_input_ids` for an encoder-decoder; `token_type_ids` for encoders
    that take segments (BERT's question / context)."""
    use_eager_attention(model)
    model.eval()
    if model.config.is_encoder_decoder:
        out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                    decoder_attention_mask=decoder_attention_mask, output_attentions=True)
        found = {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions, "cross": out.cross_attentions}
        masks = {"encoder": (attention_mask, attention_mask), "decoder": (decoder_attention_mask, decoder_attention_mask),
                 "cross": (decoder_attention_mask, attention_mask)}
    else:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True, **extra)
        found = {"encoder": out.attentions}
        masks = {"encoder": (attention_mask, attention_mask)}
    result = {}
    for kind, layers in found.items():
        if not layers or any(a is None for a in layers):
            raise AttentionUnavailable(
                f"the model returned no {kind} attention weights; it must run with eager attention "
                f"(model.set_attn_implementation('eager'))"
            )
        q_mask, k_mask = masks[kind]
        result[kind] = (torch.stack(layers).float(), q_mask.bool(), k_mask.bool())
    return result


def layer_token_summary(attention: torch.Tensor, q_len: int, k_len: int) -> np.ndarray:
    """One example (L, H, Q, K): attention each key token receives per layer, summed over heads and
    averaged over the (valid) queries: (L, k_len)."""
    a = attention[:, :, :q_len, :k_len]
    return a.mean(dim=2).sum(dim=1).cpu().numpy()


@dataclass
class _Sums:
    position: torch.Tensor  # (L, H, Q, K) float64
    position_queries: torch.Tensor  # (Q,)
    role: torch.Tensor  # (L, H, Rq, Rk)
    role_queries: torch.Tensor  # (Rq,)
    role_keys: torch.Tensor  # (Rk,): keys of each role, for the baseline share


class AttentionAverage:
    """Streaming dataset averages of one attention kind (see the module docstring)."""

    def __init__(self, query_roles: tuple[str, ...], key_roles: tuple[str, ...]):
        self.query_roles, self.key_roles = query_roles, key_roles
        self.sums: _Sums | None = None
        self.examples = 0

    def _grow(self, layers: int, heads: int, q: int, k: int, device) -> None:
        if self.sums is None:
            zeros = lambda *shape: torch.zeros(shape, dtype=torch.float64, device=device)
            self.sums = _Sums(zeros(layers, heads, q, k), zeros(q), zeros(layers, heads, len(self.query_roles), len(self.key_roles)),
                              zeros(len(self.query_roles)), zeros(len(self.key_roles)))
            return
        old = self.sums
        _, _, q0, k0 = old.position.shape
        if q > q0 or k > k0:
            position = torch.zeros((layers, heads, max(q, q0), max(k, k0)), dtype=torch.float64, device=device)
            position[:, :, :q0, :k0] = old.position
            queries = torch.zeros(max(q, q0), dtype=torch.float64, device=device)
            queries[:q0] = old.position_queries
            old.position, old.position_queries = position, queries

    def add(self, attention: torch.Tensor, q_mask: torch.Tensor, k_mask: torch.Tensor, q_roles: torch.Tensor, k_roles: torch.Tensor) -> None:
        """attention (L, B, H, Q, K); masks (B, Q) and (B, K) booleans; roles (B, Q), (B, K) role
        indices, -1 for padding."""
        layers, batch, heads, q, k = attention.shape
        self._grow(layers, heads, q, k, attention.device)
        # per batch in float32 (memory), summed into float64 (precision over many batches)
        a = attention * (q_mask[None, :, None, :, None] & k_mask[None, :, None, None, :])
        self.sums.position[:, :, :q, :k] += a.sum(dim=1).double()
        self.sums.position_queries[:q] += q_mask.sum(dim=0)
        rq = torch.nn.functional.one_hot(q_roles.clamp(min=0), len(self.query_roles)).float() * (q_roles >= 0)[..., None]
        rk = torch.nn.functional.one_hot(k_roles.clamp(min=0), len(self.key_roles)).float() * (k_roles >= 0)[..., None]
        to_key_roles = torch.matmul(a, rk[None, :, None])  # (L, B, H, Q, Rk)
        self.sums.role += torch.einsum("lbhqs,bqr->lhrs", to_key_roles, rq).double()
        self.sums.role_queries += rq.sum(dim=(0, 1)).double()
        self.sums.role_keys += rk.sum(dim=(0, 1)).double()
        self.examples += batch

    @property
    def position_mean(self) -> np.ndarray:
        s = self.sums
        return (s.position / s.position_queries.clamp(min=1)[None, None, :, None]).cpu().numpy()

    @property
    def role_mean(self) -> np.ndarray:
        s = self.sums
        return (s.role / s.role_queries.clamp(min=1)[None, None, :, None]).cpu().numpy()

    @property
    def role_share(self) -> np.ndarray:
        s = self.sums
        return (s.role.sum(dim=2) / s.role_queries.sum().clamp(min=1)).cpu().numpy()

    @property
    def layer_role_summary(self) -> np.ndarray:
        return self.role_share.sum(axis=1)

    @property
    def query_role_counts(self) -> np.ndarray:
        return self.sums.role_queries.cpu().numpy()

    @property
    def key_role_baseline(self) -> np.ndarray:
        """Share of all keys that have each role: what a role would get from attention spread evenly."""
        keys = self.sums.role_keys
        return (keys / keys.sum().clamp(min=1)).cpu().numpy()
