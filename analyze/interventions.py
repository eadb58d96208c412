"""Interventions on attention heads, through hooks (transformers 5 has no `head_mask`):

- `gated`: each head's output is multiplied by a gate xi before the attention output projection
  (Michel et al. 2019), by a forward pre-hook on that projection. Gates are `(batch or 1, layers,
  heads)` per kind, so one forward pass can ablate a different head in every row.
- `blocked`: attention to chosen keys is removed (their scores set to the lowest float before the
  softmax) in chosen layers, by a pre-hook on the attention module that edits its mask.
- `ContextVariance`: streams the variance of each head's and layer's output (context) vectors.

Supported (`ARCHITECTURES`): T5 and mT5 (encoder, decoder and cross-attention) and the BERT-style encoders
BERT (MiniLM included), RoBERTa, ELECTRA, DeBERTa-v2 (`encoder.layer[l].attention.self /
.output.dense`) and DistilBERT (`transformer.layer[l].attention / .out_lin`). A model type is named
here only once the tests in tests/test_architectures.py pass on it: a look-alike whose attention
reads its mask differently would be blocked silently wrong.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from gen import QuadlabError


ARCHITECTURES = {"t5": "T5", "mt5": "mT5", "bert": "BERT", "roberta": "RoBERTa", "electra": "ELECTRA",
                 "deberta-v2": "DeBERTa-v2", "distilbert": "DistilBERT"}


@dataclass
class AttentionSite:
    attention: torch.nn.Module  # computes the weights; its mask argument is `mask_argument`
    projection: torch.nn.Linear  # the output projection: its input is the heads' concatenated outputs
    heads: int
    head_dim: int
    mask_argument: str
    mask_keeps: bool = False  # the mask is 1 / True where attention is allowed (DeBERTa), not a bias added to the scores


def sites(model) -> dict[str, list[AttentionSite]]:
    """{kind: [one site per layer]} for the kinds the model has."""
    config = model.config
    if config.model_type not in ARCHITECTURES:
        raise QuadlabError(f"head interventions support T5 and BERT-style encoders ({', '.join(ARCHITECTURES.values())}); "
                           f"this model is {config.model_type!r}")
    heads = config.num_attention_heads

    def site(attention, projection, mask_argument, mask_keeps=False):
        return AttentionSite(attention, projection, heads, projection.in_features // heads, mask_argument, mask_keeps)

    if config.model_type in ("t5", "mt5"):
        return {"encoder": [site(b.layer[0].SelfAttention, b.layer[0].SelfAttention.o, "mask") for b in model.encoder.block],
                "decoder": [site(b.layer[0].SelfAttention, b.layer[0].SelfAttention.o, "mask") for b in model.decoder.block],
                "cross": [site(b.layer[1].EncDecAttention, b.layer[1].EncDecAttention.o, "mask") for b in model.decoder.block]}
    if config.model_type == "distilbert":
        return {"encoder": [site(l.attention, l.attention.out_lin, "attention_mask") for l in model.base_model.transformer.layer]}
    # DeBERTa-v2 takes a 0/1 mask (B, 1, Q, K), passed by position, and fills the scores where it is 0
    keeps = config.model_type == "deberta-v2"
    return {"encoder": [site(l.attention.self, l.attention.output.dense, "attention_mask", keeps) for l in model.base_model.encoder.layer]}


def shape(model) -> dict[str, tuple[int, int]]:
    """{kind: (layers, heads)}."""
    return {kind: (len(found), found[0].heads) for kind, found in sites(model).items()}


@contextmanager
def gated(model, gates: dict[str, torch.Tensor]):
    """Within the block, head h of layer l of `kind` has its output multiplied by gates[kind][:, l, h]
    (shape (batch or 1, layers, heads)); kinds not given are untouched."""
    handles = []
    found = sites(model)
    for kind, gate in gates.items():
        for layer, site in enumerate(found[kind]):
            def hook(module, args, gate=gate, layer=layer, site=site):
                x = args[0]
                g = gate[:, layer].to(x.dtype)
                if g.shape[0] != 1 and g.shape[0] != x.shape[0]:
                    raise RuntimeError(f"gates for {g.shape[0]} rows, batch of {x.shape[0]}")
                heads = x.view(*x.shape[:-1], site.heads, site.head_dim) * g[:, None, :, None]
                return (heads.view(x.shape), *args[1:])

            handles.append(site.projection.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def blocked(model, layers: dict[str, list[int]], blocked_keys: torch.Tensor):
    """Within the block, no query attends to the keys where `blocked_keys` (B, K) is True, in the given
    layers of each kind (the other keys share the attention)."""
    handles = []
    found = sites(model)
    for kind, chosen in layers.items():
        for layer in chosen:
            site = found[kind][layer]
            # the mask comes by name (BERT, T5) or by position (DeBERTa-v2's layers call attention(x, mask))
            position = list(inspect.signature(site.attention.forward).parameters).index(site.mask_argument)

            def hook(module, args, kwargs, site=site, position=position):
                positional = len(args) > position
                mask = args[position] if positional else kwargs.get(site.mask_argument)
                keys = blocked_keys[:, None, None, :]
                if mask is not None and (site.mask_keeps or mask.dtype == torch.bool):
                    mask = (mask.bool() & ~keys).to(mask.dtype)
                else:  # an additive mask, or none (sdpa and eager pass None when nothing is padded)
                    dtype = mask.dtype if mask is not None else args[0].dtype
                    bias = torch.zeros(keys.shape, dtype=dtype, device=keys.device).masked_fill(keys, torch.finfo(dtype).min)
                    mask = bias if mask is None else (mask + bias).clamp(min=torch.finfo(dtype).min)
                if positional:
                    return (*args[:position], mask, *args[position + 1:]), kwargs
                kwargs[site.mask_argument] = mask
                return args, kwargs

            handles.append(site.attention.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class ContextVariance:
    """Variance over a split of each head's output (context) vectors, the input of the output
    projection, and of each layer's attention output, the projection's output: the total variance
    (sum over dimensions of the per-dimension variance: the mean squared distance to the mean vector),
    over every valid token. Set `query_masks[kind]` (B, Q) before each forward pass."""

    def __init__(self, model):
        self.sites = sites(model)
        self.query_masks: dict[str, torch.Tensor] = {}
        self.sums: dict = {}
        self._handles = []

    def __enter__(self):
        for kind, found in self.sites.items():
            for layer, site in enumerate(found):
                def hook(module, args, output, kind=kind, layer=layer, site=site):
                    mask = self.query_masks[kind].to(output.device)
                    if mask.shape != output.shape[:2]:  # e.g. a single decoding step: not part of the split's passes
                        return
                    heads = args[0].detach().view(*args[0].shape[:-1], site.heads, site.head_dim)[mask].double()  # (N, H, d)
                    whole = output.detach()[mask].double()  # (N, D)
                    s = self.sums.setdefault((kind, layer), [0, 0.0, 0.0, 0.0, 0.0])
                    s[0] += heads.shape[0]
                    s[1] = s[1] + heads.sum(dim=0)
                    s[2] = s[2] + (heads ** 2).sum(dim=0)
                    s[3] = s[3] + whole.sum(dim=0)
                    s[4] = s[4] + (whole ** 2).sum(dim=0)

                self._handles.append(site.projection.register_forward_hook(hook))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def result(self) -> dict[str, dict]:
        """{kind: {"head": (L, H) array, "layer": (L,) array}}."""
        import numpy as np

        out = {}
        for kind, found in self.sites.items():
            head_var, layer_var = np.zeros((len(found), found[0].heads)), np.zeros(len(found))
            for layer in range(len(found)):
                n, s1, s2, t1, t2 = self.sums.get((kind, layer), [0, 0.0, 0.0, 0.0, 0.0])
                if n:
                    head_var[layer] = ((s2 / n) - (s1 / n) ** 2).clamp(min=0).sum(dim=-1).cpu().numpy()
                    layer_var[layer] = float(((t2 / n) - (t1 / n) ** 2).clamp(min=0).sum())
            out[kind] = {"head": head_var, "layer": layer_var}
        return out
