"""Matplotlib figures of attention: every figure is written as PNG and SVG, with a colour bar and a
title that names the kind, the layer, the head and the example."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text in SVG: smaller, faster, searchable

KIND_TITLES = {"encoder": "encoder self-attention", "decoder": "decoder self-attention", "cross": "cross-attention"}
AXES = {"encoder": ("query (input)", "key (input)"), "decoder": ("query (output)", "key (output)"), "cross": ("query (output)", "key (input)")}


def save(fig, path_without_suffix: Path) -> list[str]:
    """PNG and SVG, each written to a temporary name and renamed."""
    written = []
    for suffix in (".png", ".svg"):
        path = path_without_suffix.with_suffix(suffix)
        tmp = path.with_name(path.stem + ".tmp" + suffix)
        fig.savefig(tmp, dpi=130)
        os.replace(tmp, path)
        written.append(path.name)
    plt.close(fig)
    return written


def _ticks(ax, labels, axis: str, size: float) -> None:
    positions = np.arange(len(labels))
    if axis == "x":
        ax.set_xticks(positions, labels, fontsize=size, rotation=90)
    else:
        ax.set_yticks(positions, labels, fontsize=size)


def head_grid(maps: np.ndarray, q_labels, k_labels, kind: str, title: str, path: Path, vmax: float | None = None) -> list[str]:
    """All heads of all layers: maps (L, H, Q, K), one panel per head. Token labels on the outer
    panels for short sequences; longer ones get position numbers (every token is labelled in the
    single-head figures and in the report's viewer), since laying out thousands of labels is slow."""
    layers, heads = maps.shape[:2]
    if max(maps.shape[2:]) > 40:
        q_labels = k_labels = None
    side = 2.2 if max(maps.shape[2:]) < 40 else 3.2
    fig, axes = plt.subplots(layers, heads, figsize=(side * heads + 1.2, side * layers + 0.8), squeeze=False, layout="constrained")
    size = max(2.5, min(7.0, 260 / max(maps.shape[2], maps.shape[3], 1)))
    image = None
    for l in range(layers):
        for h in range(heads):
            ax = axes[l, h]
            image = ax.imshow(maps[l, h], cmap="viridis", vmin=0, vmax=vmax or 1.0, aspect="auto", interpolation="nearest")
            ax.set_title(f"layer {l} head {h}", fontsize=8)
            if h == 0 and q_labels is not None:
                _ticks(ax, q_labels, "y", size)
            elif h != 0:
                ax.set_yticks([])
            if l == layers - 1 and k_labels is not None:
                _ticks(ax, k_labels, "x", size)
            elif l != layers - 1:
                ax.set_xticks([])
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    fig.suptitle(title, fontsize=11)
    fig.supylabel(AXES[kind][0], fontsize=9)
    fig.supxlabel(AXES[kind][1], fontsize=9)
    return save(fig, path)


def single_head(matrix: np.ndarray, q_labels, k_labels, kind: str, title: str, path: Path) -> list[str]:
    q, k = matrix.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.14 * k + 2), max(3.5, 0.14 * q + 1.5)), layout="constrained")
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    size = max(4.0, min(8.0, 500 / max(q, k)))
    _ticks(ax, k_labels, "x", size)
    _ticks(ax, q_labels, "y", size)
    ax.set_ylabel(AXES[kind][0])
    ax.set_xlabel(AXES[kind][1])
    fig.colorbar(image, ax=ax, label="attention weight")
    ax.set_title(title, fontsize=10)
    return save(fig, path)


def layer_summary(summary: np.ndarray, labels, title: str, path: Path, xlabel: str) -> list[str]:
    """Layers x tokens (or roles): attention received, summed over heads, averaged over queries."""
    layers, width = summary.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 0.16 * width + 2.5), 0.5 * layers + 1.8), layout="constrained")
    image = ax.imshow(summary, cmap="magma", aspect="auto", interpolation="nearest")
    _ticks(ax, labels, "x", max(4.0, min(9.0, 600 / max(width, 1))))
    ax.set_yticks(np.arange(layers), [f"layer {l}" for l in range(layers)], fontsize=8)
    ax.set_xlabel(xlabel)
    fig.colorbar(image, ax=ax, label="attention received (sum over heads)")
    ax.set_title(title, fontsize=10)
    return save(fig, path)


def role_share(share: np.ndarray, roles, baseline: np.ndarray | None, title: str, path: Path) -> list[str]:
    """One layer: heads x key roles, the share of attention each role receives (annotated)."""
    import seaborn as sns

    heads, width = share.shape
    fig, ax = plt.subplots(figsize=(0.62 * width + 2.5, 0.42 * heads + 1.9), layout="constrained")
    sns.heatmap(share, ax=ax, cmap="rocket_r", vmin=0, vmax=max(0.05, float(share.max())), annot=True, fmt=".2f",
                annot_kws={"fontsize": 6}, xticklabels=list(roles), yticklabels=[f"head {h}" for h in range(heads)],
                cbar_kws={"label": "share of attention received"})
    if baseline is not None:
        ax.set_xticks(np.arange(width) + 0.5, [f"{r}\n({b:.2f})" for r, b in zip(roles, baseline)], fontsize=7)
        ax.set_xlabel("key role (share of the keys that have it)")
    ax.set_title(title, fontsize=10)
    return save(fig, path)
