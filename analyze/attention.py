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

class AttentionUnavailable(RuntimeError):
    """The model returned no attention weights (for instance an sdpa or flash implementation)."""


def segments(starts: list[bool]) -> list[int]:
    """Segment index of each token, a new segment beginning where `starts` is True (the block
    pattern of head statistics: a task marks where its segments begin)."""
    out, current = [], -1
    for i, start in enumerate(starts):
        current += 1 if (start or i == 0) else 0
        out.append(current)
    return out


def padded(rows: list[list], width: int, fill) -> torch.Tensor:
    """Rows of unequal length as one (len(rows), width) tensor, filled with `fill`."""
    return torch.tensor([r + [fill] * (width - len(r)) for r in rows])


def set_attention_implementation(model, implementation: str) -> None:
    """`model` and every model inside it (T5's encoder and decoder stacks) run `implementation`:
    transformers 5.17 (the GPU image's) sets only the outer model's, and the stacks, which hold
    their own copy of the config, keep theirs."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and getattr(module.config, "_attn_implementation", None) != implementation:
            module.set_attn_implementation(implementation)


def use_eager_attention(model) -> None:
    """Attention weights come only from the eager implementation (sdpa returns none)."""
    set_attention_implementation(model, "eager")


@torch.no_grad()
def capture(model, input_ids, attention_mask, decoder_input_ids=None, decoder_attention_mask=None, token_type_ids=None) -> dict:
    """{kind: (attention (L, B, H, Q, K), query mask (B, Q), key mask (B, K))}; one forward pass,
    teacher-forced on `decoder_input_ids` for an encoder-decoder; `token_type_ids` for encoders
    that take segments (BERT's question / context); ignored by those that have none (DistilBERT)."""
    import inspect

    use_eager_attention(model)
    model.eval()
    if model.config.is_encoder_decoder:
        if decoder_attention_mask is None:
            decoder_attention_mask = torch.ones_like(decoder_input_ids)
        out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                    decoder_attention_mask=decoder_attention_mask, output_attentions=True)
        found = {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions, "cross": out.cross_attentions}
        masks = {"encoder": (attention_mask, attention_mask), "decoder": (decoder_attention_mask, decoder_attention_mask),
                 "cross": (decoder_attention_mask, attention_mask)}
    else:
        # DistilBERT's forward would take segments into its **kwargs and hand them to the attention function
        segments = token_type_ids is not None and "token_type_ids" in inspect.signature(model.forward).parameters
        extra = {"token_type_ids": token_type_ids} if segments else {}
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


# A forward pass's attention maps, all kinds and layers, at most this many bytes on a CPU (on a GPU,
# an eighth of its free memory): averaging holds about three copies and head statistics more, so a
# batch of 256 long solutions (the reversed format's 370 labels, 32 heads) would need 13 GB; such
# batches go through in slices. Small slices are also faster on a CPU: every large tensor is fresh
# memory from the kernel, and at 1 GiB half the time went to page faults (BENCHMARKS.md).
ATTENTION_BYTES = 128 << 20


def batch_slices(batch: dict, sides: dict, layout: dict, device=None, limit: int | None = None):
    """A captured batch (train/tasks.py), or a batch of model inputs alone, in slices of consecutive
    rows, each a batch of the same kind, whose attention maps take at most `limit` bytes in float32
    (ATTENTION_BYTES on a CPU, an eighth of the free memory of `device` on a GPU), at least one row a
    slice, each cut to its longest row on each side: rows are padded on the right and the tasks sort
    them by length, so the short rows of a batch do not pay for its longest (the padding's maps
    would be computed, then masked away). Tensors of one entry a row (class labels) and lists are
    cut by rows only.
    `layout`: {kind: (layers, heads)}."""
    if limit is None:
        cuda = device is not None and torch.device(device).type == "cuda"
        limit = torch.cuda.mem_get_info(device)[0] // 8 if cuda else ATTENTION_BYTES
    # a row's length on a side: one past its last unmasked token
    masks = {side: batch["inputs"][name] for side, name in (("encoder", "attention_mask"), ("decoder", "decoder_attention_mask")) if name in batch["inputs"]}
    lengths = {side: (m.bool() * torch.arange(1, m.shape[1] + 1)).amax(dim=1).tolist() for side, m in masks.items()}
    rows = len(next(iter(lengths.values())))

    def maps_bytes(width: dict) -> int:
        return sum(4 * layers * heads * width[sides[kind][0]] * width[sides[kind][1]] for kind, (layers, heads) in layout.items() if kind in sides)

    def cut(value, name: str, start: int, end: int, width: dict):
        if isinstance(value, dict):  # {side: ...}, or the model's keyword arguments
            return {key: cut(v, key, start, end, width) for key, v in value.items()}
        side = "decoder" if name in ("decoder", "labels") or name.startswith("decoder_") else "encoder"
        if isinstance(value, torch.Tensor) and value.dim() > 1:
            return value[start:end, : width.get(side)]
        return value[start:end]  # one entry a row: classes, row indices, unpadded tokens

    start = 0
    while start < rows:
        end, width = start + 1, {side: n[start] for side, n in lengths.items()}
        while end < rows:
            wider = {side: max(width[side], n[end]) for side, n in lengths.items()}
            if (end + 1 - start) * maps_bytes(wider) > limit:
                break
            end, width = end + 1, wider
        yield {key: cut(value, key, start, end, width) for key, value in batch.items()}
        start = end


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
