"""Matplotlib figures of attention: every figure is written as PNG and SVG, with a colour bar and a
title that names the kind, the layer, the head and the example."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.textpath import text_to_path  # noqa: E402

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


# Attention maps are laid out with fixed margins measured from their labels, not by constrained
# layout, which measured every tick label of every panel again for each figure: `maps` took 1.4-1.6
# times as long (BENCHMARKS.md, "Writing the figures"). Lengths are in inches, font sizes in points.
LINE = 1.3 / 72  # the height of a line of text, per point of its size
TICKS = 0.1  # a tick and the gap to its label
EDGE = 0.1  # blank border around the figure
BAR_GAP, BAR_WIDTH, BAR_TEXT = 0.2, 0.15, 10  # the colour bar right of the panels; its labels' size (matplotlib's default)


def text_inches(texts, size: float) -> float:
    """Width of the widest line of `texts` at `size` points, measured with the font that draws it."""
    prop = FontProperties(size=size)
    lines = {line for text in texts for line in str(text).split("\n") if line}
    return max((text_to_path.get_text_width_height_descent(line, prop, ismath=False)[0] for line in lines), default=0.0) / 72


def wrapped(title: str, size: float, inches: float) -> tuple[str, int]:
    """`title` broken at spaces into lines of at most `inches` (a single long word keeps its own
    line; line breaks already in it stay), and the number of lines."""
    lines = []
    for paragraph in title.split("\n"):
        lines.append("")
        for word in paragraph.split(" "):
            longer = f"{lines[-1]} {word}" if lines[-1] else word
            if lines[-1] and text_inches([longer], size) > inches:
                lines.append(word)
            else:
                lines[-1] = longer
    return "\n".join(lines), len(lines)


def _framed(rows: int, columns: int, panel: tuple[float, float], ticks: tuple[float, float], title: str, labels: tuple[str, str],
            sizes=(10, 10), gaps=(0.0, 0.0), panel_titles: float = 0.0, bar_lines: int = 1, bar_shrink: float = 1.0):
    """A figure of rows x columns panels of `panel` (width, height) with `gaps` (between columns,
    between rows), around them the room their tick labels take (`ticks`: the left one's width, the
    bottom one's height), their axis labels (`labels`: x, y; "" for none), the panels' own titles
    (`panel_titles`: their height), the figure's title, wrapped to the figure, and a colour bar on
    the right (`bar_lines`: the lines of its label; `bar_shrink`: its share of the panels' height).
    `sizes`: the font sizes of the title and of the axis labels. Returns the figure, the panels and
    the colour bar's axes."""
    (w, h), (column_gap, row_gap), (title_size, label_size) = panel, gaps, sizes
    left = EDGE + (label_size * LINE + 0.05 if labels[1] else 0.0) + TICKS + ticks[0]
    bottom = EDGE + (label_size * LINE + 0.05 if labels[0] else 0.0) + TICKS + ticks[1]
    right = BAR_GAP + BAR_WIDTH + TICKS + text_inches(["0.000"], BAR_TEXT) + 0.1 + bar_lines * BAR_TEXT * LINE + EDGE
    width = left + columns * w + (columns - 1) * column_gap + right
    title, lines = wrapped(title, title_size, width - 2 * EDGE)
    top = EDGE + lines * title_size * LINE + 0.1 + panel_titles
    height = bottom + rows * h + (rows - 1) * row_gap + top
    fig, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False,
                             gridspec_kw={"left": left / width, "right": 1 - right / width, "bottom": bottom / height,
                                          "top": 1 - top / height, "wspace": column_gap / w, "hspace": row_gap / h})
    fig.suptitle(title, y=1 - EDGE / height, va="top", fontsize=title_size)
    # axis labels placed at the edges, centred on the panels (not moved clear of the tick labels at every draw)
    middle_x, middle_y = (left + (width - right)) / 2 / width, (bottom + (height - top)) / 2 / height
    if labels[0]:
        fig.text(middle_x, EDGE / height, labels[0], ha="center", va="bottom", fontsize=label_size)
    if labels[1]:
        fig.text(EDGE / width, middle_y, labels[1], ha="left", va="center", rotation=90, fontsize=label_size)
    tall = (1 - (top + bottom) / height) * bar_shrink
    bar = fig.add_axes((1 - (right - BAR_GAP) / width, middle_y - tall / 2, BAR_WIDTH / width, tall))
    return fig, axes, bar


def _fitting(count: int, inches: float, largest: float) -> float:
    """The font size (points) of `count` labels side by side along `inches`: most of the space a label
    has, at most `largest`."""
    return min(largest, 0.8 * 72 * inches / max(count, 1))


def _ticks(ax, labels, axis: str, size: float) -> None:
    positions = np.arange(len(labels))
    if axis == "x":
        ax.set_xticks(positions, labels, fontsize=size, rotation=90)
    else:
        ax.set_yticks(positions, labels, fontsize=size)


def head_grid(maps: np.ndarray, q_labels, k_labels, kind: str, title: str, path: Path, vmax: float | None = None) -> list[str]:
    """All heads of all layers: maps (L, H, Q, K), one panel per head. Token labels on the outer
    panels for a side of at most 40 tokens; a longer side gets position numbers (every token is
    labelled in the single-head figures and in the report's viewer), since laying out thousands of
    labels is slow. (Cross-attention over a long solution keeps the equation's tokens.)"""
    layers, heads, q, k = maps.shape
    q_labels = q_labels if q <= 40 else None
    k_labels = k_labels if k <= 40 else None
    side = 2.0 if max(q, k) < 40 else 3.0
    q_size, k_size = _fitting(q, side, 7.0), _fitting(k, side, 7.0)
    numbers = 7  # the size of position numbers
    ticks = (text_inches(q_labels, q_size) if q_labels is not None else text_inches([str(q)], numbers),
             text_inches(k_labels, k_size) if k_labels is not None else numbers * LINE)
    fig, axes, bar = _framed(layers, heads, (side, side), ticks, title, AXES[kind][::-1], sizes=(11, 9), gaps=(0.15, 8 * LINE + 0.12),
                             panel_titles=8 * LINE, bar_shrink=0.6)
    image = None
    for l in range(layers):
        for h in range(heads):
            ax = axes[l, h]
            image = ax.imshow(maps[l, h], cmap="viridis", vmin=0, vmax=vmax or 1.0, aspect="auto", interpolation="nearest")
            ax.set_title(f"layer {l} head {h}", fontsize=8, y=1.0)  # placed: not measured against the ticks at each draw
            ax.tick_params(labelsize=numbers)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # positions are whole numbers
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            if h == 0 and q_labels is not None:
                _ticks(ax, q_labels, "y", q_size)
            elif h != 0:
                ax.set_yticks([])
            if l == layers - 1 and k_labels is not None:
                _ticks(ax, k_labels, "x", k_size)
            elif l != layers - 1:
                ax.set_xticks([])
    fig.colorbar(image, cax=bar, label="attention weight")
    return save(fig, path)


def single_head(matrix: np.ndarray, q_labels, k_labels, kind: str, title: str, path: Path) -> list[str]:
    q, k = matrix.shape
    panel = (max(2.2, 0.14 * k), max(2.2, 0.14 * q))
    q_size, k_size = _fitting(q, panel[1], 8.0), _fitting(k, panel[0], 8.0)
    fig, axes, bar = _framed(1, 1, panel, (text_inches(q_labels, q_size), text_inches(k_labels, k_size)), title, AXES[kind][::-1])
    ax = axes[0, 0]
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    _ticks(ax, k_labels, "x", k_size)
    _ticks(ax, q_labels, "y", q_size)
    fig.colorbar(image, cax=bar, label="attention weight")
    return save(fig, path)


def layer_summary(summary: np.ndarray, labels, title: str, path: Path, xlabel: str) -> list[str]:
    """Layers x tokens (or roles): attention received, summed over heads, averaged over queries."""
    layers, width = summary.shape
    panel = (max(2.5, 0.16 * width), max(1.5, 0.5 * layers))
    size = _fitting(width, panel[0], 9.0)
    rows = [f"layer {l}" for l in range(layers)]
    fig, axes, bar = _framed(1, 1, panel, (text_inches(rows, 8), text_inches(labels, size)), title, (xlabel, ""), bar_lines=2)
    ax = axes[0, 0]
    image = ax.imshow(summary, cmap="magma", aspect="auto", interpolation="nearest")
    _ticks(ax, labels, "x", size)
    ax.set_yticks(np.arange(layers), rows, fontsize=8)
    fig.colorbar(image, cax=bar, label="attention received\n(sum over heads)")
    return save(fig, path)


def role_share(share: np.ndarray, roles, baseline: np.ndarray, title: str, path: Path) -> list[str]:
    """One layer: heads x key roles, the share of attention each role receives (annotated), each
    role labelled with the share of the keys that have it."""
    import seaborn as sns

    heads, width = share.shape
    labels = [f"{r}\n({b:.2f})" for r, b in zip(roles, baseline)]
    rows = [f"head {h}" for h in range(heads)]
    panel = (max(3.0, 0.62 * width), max(1.2, 0.42 * heads))
    size = min(7.0, 7.0 * 0.9 * panel[0] / width / max(text_inches(labels, 7.0), 1e-9))  # a role name fits its column
    fig, axes, bar = _framed(1, 1, panel, (text_inches(rows, 9), 2 * size * LINE), title, ("key role (share of the keys that have it)", ""))
    ax = axes[0, 0]
    sns.heatmap(share, ax=ax, cbar_ax=bar, cmap="rocket_r", vmin=0, vmax=max(0.05, float(share.max())), annot=True,
                fmt=".2f", annot_kws={"fontsize": 6}, xticklabels=False, yticklabels=False, cbar_kws={"label": "share of attention received"})
    ax.set_xticks(np.arange(width) + 0.5, labels, fontsize=size, rotation=0)
    ax.set_yticks(np.arange(heads) + 0.5, rows, fontsize=9, rotation=0)
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
    title, lines = wrapped(title, 10, columns * width - 2 * EDGE)
    tall = rows * height + 0.6 + (lines - 1) * 10 * LINE
    fig, axes = plt.subplots(rows, columns, figsize=(columns * width, tall), squeeze=False)
    fig.subplots_adjust(left=0.6 / (columns * width), right=0.97, bottom=0.45 / tall, top=1 - (0.75 + (lines - 1) * 10 * LINE) / tall,
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
    fig.suptitle(wrapped(title, 10, fig.get_size_inches()[0] - 2 * EDGE)[0], fontsize=10)
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
    fig.suptitle(wrapped(title, 10, fig.get_size_inches()[0] - 2 * EDGE)[0], fontsize=10)
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
    fig.suptitle(wrapped(title, 10, fig.get_size_inches()[0] - 2 * EDGE)[0], fontsize=10)
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
        ax.set_title(wrapped(f"{panel['title']}: {fit}", 8, 3.6)[0], fontsize=8)
        ax.set_xlabel(f"mean layer context variance ({kind})", fontsize=7)
        ax.set_ylabel(metric.replace("_", " "), fontsize=7)
    fig.suptitle(wrapped(title, 10, fig.get_size_inches()[0] - 2 * EDGE)[0], fontsize=10)
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
    fig.suptitle(wrapped(title, 9, fig.get_size_inches()[0] - 2 * EDGE)[0], fontsize=9)
    return save(fig, path)
