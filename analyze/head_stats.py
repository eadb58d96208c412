"""Head-level statistics of attention, as defined in ../shared/GUIDE.md section 3: pure functions of
attention tensors `(layers, batch, heads, queries, keys)` and their masks, so that each one can be
checked on hand-made matrices.

Every statistic is first a mean over the valid queries of one map (one example, layer and head);
head statistics over a split are the means of those, weighted by the number of queries (every query
of the split counts alike, as in `AttentionAverage.role_share`).

Allowed keys of a query: the unpadded keys, and for the causal decoder self-attention only those at
or before the query. The uniform baseline of the entropy is the log of their number.
"""

from __future__ import annotations

import numpy as np
import torch

# Per-map features, in this order.
FEATURES = ("entropy", "uniform_entropy", "confidence", "previous", "same", "next", "distance",
            "diagonal_score", "band_score", "vertical_score", "block_score")
# Features that compare query and key positions: not defined for cross-attention (two sequences).
POSITIONAL = ("previous", "same", "next", "distance", "diagonal_score", "band_score")

PATTERNS = ("sharp diagonal", "blurred diagonal", "vertical", "block", "heterogeneous")
BAND = 4  # the blurred diagonal's half-width: keys with |i - j| <= 4
VERTICAL_KEYS = 2  # the vertical template: the share of attention on the 2 keys that receive most
# A map takes the first type, in this order, whose score reaches its threshold; else heterogeneous.
# Vertical comes first: in a short sequence, stripes onto the first keys also fill the diagonal band.
# A uniform block of at most 2 * BAND + 1 tokens counts as a blurred diagonal (no template tells them apart).
THRESHOLDS = {"vertical": ("vertical_score", 0.5), "sharp diagonal": ("diagonal_score", 0.5),
              "blurred diagonal": ("band_score", 0.5), "block": ("block_score", 0.6)}
# Query chunks of the causal JS sums: the work of a causal map falls to (1 + 1/n) / 2 of it (4: 62%).
CAUSAL_CHUNKS = 4


def allowed_keys(q_mask: torch.Tensor, k_mask: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, Q, K) booleans: the keys each query may attend to."""
    allowed = q_mask[:, :, None] & k_mask[:, None, :]
    if causal:
        q, k = allowed.shape[1:]
        allowed = allowed & torch.ones(q, k, dtype=torch.bool, device=allowed.device).tril()
    return allowed


def map_features(attention: torch.Tensor, q_mask: torch.Tensor, k_mask: torch.Tensor, key_segments: torch.Tensor,
                 positional: bool, causal: bool) -> torch.Tensor:
    """(L, B, H, F) features of every map (FEATURES order), means over each map's valid queries.

    key_segments (B, K): the segment of each key (-1 for padding), for the block template: the share of
    a query's attention that falls in the one segment it attends to most. With `positional` False
    (cross-attention) the positional features are NaN."""
    allowed = allowed_keys(q_mask, k_mask, causal)
    a = attention * allowed[None, :, None]
    layers, batch, heads, q, k = a.shape
    n_queries = q_mask.sum(dim=1).clamp(min=1).float()  # (B,)
    qm = q_mask[None, :, None, :].float()

    def per_map(rows: torch.Tensor) -> torch.Tensor:  # (L, B, H, Q) -> (L, B, H)
        return (rows * qm).sum(dim=-1) / n_queries[None, :, None]

    feats = {}
    feats["entropy"] = per_map(-torch.special.xlogy(a, a).sum(dim=-1))
    uniform = torch.log(allowed.sum(dim=-1).clamp(min=1).float())  # (B, Q)
    feats["uniform_entropy"] = per_map(uniform[None, :, None].expand(layers, batch, heads, q))
    feats["confidence"] = per_map(a.max(dim=-1).values)
    i = torch.arange(q, device=a.device)[:, None]
    j = torch.arange(k, device=a.device)[None, :]
    offset = (j - i).float()  # (Q, K)
    if positional:
        def near(d: int) -> torch.Tensor:  # (L, B, H, Q): a[..., i, i + d], 0 where that key does not exist (a view, no copy of the maps)
            diagonal = torch.diagonal(a, offset=d, dim1=-2, dim2=-1)
            first = min(max(-d, 0), q)
            return torch.nn.functional.pad(diagonal, (first, q - first - diagonal.shape[-1]))

        diagonals = {d: near(d) for d in range(-BAND, BAND + 1)}
        feats["previous"], feats["same"], feats["next"] = (per_map(diagonals[d]) for d in (-1, 0, 1))
        feats["distance"] = per_map((a * offset.abs()).sum(dim=-1))
        feats["diagonal_score"] = per_map(sum(diagonals[d] for d in (-1, 0, 1)))
        feats["band_score"] = per_map(sum(diagonals.values()))
    else:
        for name in POSITIONAL:
            feats[name] = torch.full((layers, batch, heads), float("nan"), device=a.device)
    column = a.sum(dim=3) / n_queries[None, :, None, None]  # (L, B, H, K): mean attention each key receives
    feats["vertical_score"] = column.topk(min(VERTICAL_KEYS, k), dim=-1).values.sum(dim=-1)
    n_segments = int(key_segments.max().item()) + 1 if key_segments.numel() else 1
    onehot = torch.nn.functional.one_hot(key_segments.clamp(min=0), max(n_segments, 1)).float() * (key_segments >= 0)[..., None]
    per_segment = torch.matmul(a, onehot[None, :, None])  # (L, B, H, Q, S)
    feats["block_score"] = per_map(per_segment.max(dim=-1).values)
    return torch.stack([feats[name] for name in FEATURES], dim=-1)


def classify(scores: np.ndarray) -> np.ndarray:
    """Pattern type index (into PATTERNS) for feature vectors (..., F): the first type in THRESHOLDS
    whose score reaches its threshold (NaN scores never do); heterogeneous if none does."""
    out = np.full(scores.shape[:-1], PATTERNS.index("heterogeneous"), dtype=np.int64)
    decided = np.zeros(scores.shape[:-1], dtype=bool)
    for pattern, (feature, threshold) in THRESHOLDS.items():
        index = PATTERNS.index(pattern)
        value = scores[..., FEATURES.index(feature)]
        hit = ~decided & (np.nan_to_num(value, nan=-1.0) >= threshold)
        out[hit] = index
        decided |= hit
    return out


def js_divergence_sums(attention: torch.Tensor, q_mask: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """(P, P) sums over the batch's valid queries of the Jensen-Shannon divergence (natural log, at
    most ln 2) between the rows of every pair of heads, P = layers * heads. `causal`: the maps are 0
    after each query's position (0 log 0 = 0), so queries go in chunks that skip the keys after them."""
    layers, batch, heads, q, k = attention.shape
    rows = attention.permute(0, 2, 1, 3, 4).reshape(layers * heads, batch, q, k).float()
    own = -torch.special.xlogy(rows, rows).sum(dim=-1)  # (P, B, Q)
    valid = q_mask[None].double()
    out = torch.zeros(layers * heads, layers * heads, dtype=torch.float64, device=attention.device)
    chunks = CAUSAL_CHUNKS if causal else 1
    edges = sorted({q * i // chunks for i in range(chunks + 1)})  # no empty chunk when q < chunks
    mixed = torch.empty(rows.numel(), device=rows.device)  # the mixtures, in place: fresh memory costs page faults on a CPU
    for p in range(layers * heads):  # the upper triangle; JS is symmetric
        for lo, hi in zip(edges, edges[1:]):
            keys = hi if causal else k
            shape = (layers * heads - p, batch, hi - lo, keys)
            m = torch.add(rows[p:, :, lo:hi, :keys], rows[p, :, lo:hi, :keys], out=mixed[: shape[0] * batch * (hi - lo) * keys].view(shape))
            js = -m.mul_(0.5).xlogy_(m).sum(dim=-1) - (own[p, :, lo:hi] + own[p:, :, lo:hi]) / 2
            out[p, p:] += (js.clamp(min=0).double() * valid[:, :, lo:hi]).sum(dim=(1, 2))
    return torch.triu(out, diagonal=1) + torch.triu(out).T


def rollout(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention rollout (Abnar and Zuidema 2020) of self-attention (L, B, H, N, N) with mask (B, N):
    B_l = rownorm(mean_h A[l,h] + I) over the valid tokens, R_1 = B_1, R_l = B_l R_(l-1).
    Returns (L, B, N, N): R_l for every layer; padding rows and columns are 0."""
    valid = (mask[:, :, None] & mask[:, None, :]).float()  # (B, N, N)
    eye = torch.eye(attention.shape[-1], device=attention.device)[None] * valid
    out, previous = [], None
    for layer in range(attention.shape[0]):
        b = (attention[layer].mean(dim=1) * valid + eye)
        b = b / b.sum(dim=-1, keepdim=True).clamp(min=1e-12)
        previous = b if previous is None else torch.matmul(b, previous)
        out.append(previous)
    return torch.stack(out)


def symbol_share(attention: torch.Tensor, q_mask: torch.Tensor, k_mask: torch.Tensor, symbol_keys: torch.Tensor,
                 causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: the share of attention the keys in `symbol_keys` (B, K) receive in each layer
    (mean over heads and valid queries), (L, B); and what uniform attention over each query's allowed
    keys would give them, (B,)."""
    allowed = allowed_keys(q_mask, k_mask, causal)
    n_queries = q_mask.sum(dim=1).clamp(min=1).float()
    to_symbols = (attention * symbol_keys[None, :, None, None, :]).sum(dim=-1).mean(dim=2)  # (L, B, Q)
    share = (to_symbols * q_mask[None]).sum(dim=-1) / n_queries[None]
    uniform_rows = (allowed & symbol_keys[:, None, :]).sum(dim=-1) / allowed.sum(dim=-1).clamp(min=1)
    baseline = (uniform_rows * q_mask).sum(dim=-1) / n_queries
    return share, baseline


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two ends of its t confidence interval over the first axis."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    if n < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * values.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half


def pearson(x, y) -> dict:
    """Pearson r and its two-sided p-value; NaN (with the reason) when fewer than 3 points or a
    constant series make it undefined."""
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3:
        return {"r": float("nan"), "p": float("nan"), "n": len(x), "note": "fewer than 3 points"}
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"r": float("nan"), "p": float("nan"), "n": len(x), "note": "one series is constant"}
    result = stats.pearsonr(x, y)
    return {"r": float(result.statistic), "p": float(result.pvalue), "n": len(x)}
