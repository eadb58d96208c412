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
        fig.set_layout_engine("none")  # the PNG's layout holds for the SVG: constrained layout once, not once a file
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


# ---------------------------------------------------------------------------------------------
# Head-level figures (`cli.py heads`)


def layer_head_panels(panels: dict, title: str, path: Path, diverging: bool = False) -> list[str]:
    """One annotated layers x heads heatmap per statistic. (Plain imshow and fixed margins: with many
    panels, constrained layout and seaborn took 20 s a figure.)"""
    names = list(panels)
    layers, heads = np.asarray(next(iter(panels.values()))).shape
    columns = min(3, len(names))
    rows = (len(names) + columns - 1) // columns
    width, height = 0.5 * heads + 2.2, 0.38 * layers + 1.3
    fig, axes = plt.subplots(rows, columns, figsize=(columns * width, rows * height + 0.6), squeeze=False)
    fig.subplots_adjust(left=0.6 / (columns * width), right=0.97, bottom=0.45 / (rows * height + 0.6), top=1 - 0.75 / (rows * height + 0.6),
                        wspace=0.45, hspace=0.75)
    for ax, name in zip(axes.flat, names):
        values = np.asarray(panels[name], dtype=float)
        finite = values[np.isfinite(values)]
        if diverging:
            bound = max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-9)
            image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
        else:
            image = ax.imshow(values, cmap="viridis", aspect="auto", interpolation="nearest")
        if layers * heads <= 200:
            big = finite.size and np.abs(finite).max() >= 100
            for l in range(layers):
                for h in range(heads):
                    light = image.norm(values[l, h]) < 0.5 if not diverging else abs(image.norm(values[l, h]) - 0.5) > 0.3
                    ax.text(h, l, f"{values[l, h]:.3g}" if big else f"{values[l, h]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if light else "black")
        ax.set_xticks(np.arange(heads), [f"h{h}" for h in range(heads)], fontsize=6)
        ax.set_yticks(np.arange(layers), [f"L{l}" for l in range(layers)], fontsize=6)
        ax.set_title(name, fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03).ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


PATTERN_COLOURS = ("#1b9e77", "#66c2a5", "#d95f02", "#7570b3", "#bbbbbb")


def pattern_types(types: np.ndarray, names, title: str, path: Path) -> list[str]:
    """Left: the type of every head (layers x heads); right: the count of each type per layer."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    layers, heads = types.shape
    fig, (left, right) = plt.subplots(1, 2, figsize=(0.5 * heads + 7.5, 0.45 * layers + 2.2), layout="constrained",
                                      gridspec_kw={"width_ratios": [max(heads, 2), 6]})
    left.imshow(types, cmap=ListedColormap(PATTERN_COLOURS), vmin=-0.5, vmax=len(names) - 0.5, aspect="auto")
    left.set_xticks(np.arange(heads), [f"h{h}" for h in range(heads)], fontsize=7)
    left.set_yticks(np.arange(layers), [f"layer {l}" for l in range(layers)], fontsize=7)
    for l in range(layers):
        for h in range(heads):
            left.text(h, l, names[types[l, h]].replace(" diagonal", "\ndiagonal"), ha="center", va="center", fontsize=6)
    left.set_title("type of each head", fontsize=9)
    bottom = np.zeros(layers)
    for index, name in enumerate(names):
        counts = (types == index).sum(axis=1)
        right.barh(np.arange(layers), counts, left=bottom, color=PATTERN_COLOURS[index], label=name)
        bottom += counts
    right.set_yticks(np.arange(layers), [f"layer {l}" for l in range(layers)], fontsize=7)
    right.invert_yaxis()
    right.set_xlabel("heads")
    right.set_title("count per layer", fontsize=9)
    fig.legend(handles=[Patch(color=c, label=n) for c, n in zip(PATTERN_COLOURS, names)], loc="outside lower center", ncol=len(names), fontsize=7)
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def head_mds(coords: np.ndarray, labels: np.ndarray, layout: tuple[int, int], title: str, path: Path) -> list[str]:
    """Heads placed by MDS of their JS distances, coloured by layer (left) and by cluster (right)."""
    layers, heads = layout
    layer_of = np.repeat(np.arange(layers), heads)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained")
    for ax, colour, name in ((axes[0], layer_of, "layer"), (axes[1], labels, "cluster")):
        points = ax.scatter(coords[:, 0], coords[:, 1], c=colour, cmap="viridis" if name == "layer" else "tab10", s=40)
        for p, (x, y) in enumerate(coords):
            ax.annotate(f"{p // heads}.{p % heads}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        fig.colorbar(points, ax=ax, label=name)
        ax.set_title(f"coloured by {name} (labels: layer.head)", fontsize=9)
        ax.set_xlabel("MDS 1")
        ax.set_ylabel("MDS 2")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def cluster_makeup(clusters: list[dict], class_name: str, title: str, path: Path) -> list[str]:
    """For each KMeans cluster of maps: its make-up by layer (left) and by example class (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(clusters) + 2.4), layout="constrained")
    labels = [f"cluster {c['cluster']} ({c['type']}, {c['maps']} maps)" for c in clusters]
    for ax, key, name in ((axes[0], "by_layer", "layer"), (axes[1], "by_class", class_name)):
        groups = sorted({k for c in clusters for k in c[key]}, key=str)
        left = np.zeros(len(clusters))
        for g_index, group in enumerate(groups):
            values = np.array([c[key].get(group, 0) / max(c["maps"], 1) for c in clusters])
            ax.barh(np.arange(len(clusters)), values, left=left, label=f"{name} {group}", color=plt.cm.tab10(g_index % 10))
            left += values
        ax.set_yticks(np.arange(len(clusters)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("share of the cluster's maps")
        ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def context_scatter(panels: list[dict], columns: int, title: str, path: Path) -> list[str]:
    """Mean layer context variance against a metric, one point per model, one panel per entry of
    `panels` ({"title", "points", "kind", "metric", "correlation": {"r", "p"}}), `columns` a row.
    A point is labelled with its "label" (heads.json files written before 2026-12-06 have none: the
    last part of its "model")."""
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.8 * columns + 0.6, 3.2 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        kind, metric, points = panel["kind"], panel["metric"], panel["points"]
        x = [p["variance"][kind]["mean"] for p in points]
        y = [p["metrics"][metric] for p in points]
        ax.scatter(x, y, s=22)
        for p, xi, yi in zip(points, x, y):
            ax.annotate(p.get("label") or Path(p["model"]).name, (xi, yi), fontsize=6, xytext=(2, 2), textcoords="offset points")
        c = panel["correlation"]
        r = c.get("r")
        fit = f"r = {r:+.2f}, p = {c['p']:.2g}, n = {len(points)}" if r is not None and r == r else "r undefined"
        ax.set_title(f"{panel['title']}: {fit}", fontsize=8)
        ax.set_xlabel(f"mean layer context variance ({kind})", fontsize=7)
        ax.set_ylabel(metric.replace("_", " "), fontsize=7)
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def symbol_shares(symbols: dict, title: str, path: Path) -> list[str]:
    """Per symbol set: the share of attention by layer with its 95% CI, against the uniform baseline."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8), layout="constrained")
    for index, (name, rows) in enumerate(symbols.items()):
        layers = [r["layer"] for r in rows]
        share = np.array([r["share"] for r in rows])
        lo, hi = np.array([r["ci"][0] for r in rows]), np.array([r["ci"][1] for r in rows])
        colour = plt.cm.tab10(index % 10)
        ax.plot(layers, share, "o-", color=colour, label=f"{name}")
        ax.fill_between(layers, lo, hi, color=colour, alpha=0.25)
        ax.axhline(rows[0]["baseline"], color=colour, linestyle=":", linewidth=1)
    ax.set_xticks(sorted({r["layer"] for rows in symbols.values() for r in rows}))
    ax.set_xlabel("layer")
    ax.set_ylabel("share of attention received")
    ax.legend(fontsize=7, title="keys (dotted: uniform)", title_fontsize=7)
    ax.set_title(title, fontsize=9)
    return save(fig, path)
