"""Benchmark writing the attention figures (PNG and SVG of each) against laying every file out anew, in one run.

`analyze.figures.save` writes a figure as PNG, then as SVG. Each figure is laid out by matplotlib's
constrained layout, which measures every tick label; since 2026-12-06 the layout of the PNG is kept
for the SVG (the layout engine is switched off after the first file) instead of being computed again.
The baseline here is the save before that change, swapped in for the same calls. Workloads:
- maps: `analyze.maps.render_maps` on RUN (example 0, one single head, the split's first --limit rows);
- explain: `analyze.maps.explain` of --equation on RUN (the per-head grids of one long solution).
The modes alternate, --repeats times each; the medians are reported.

Usage: python bench/bench_figures.py --run runs/quadratic-tiny-seed0 [--limit 20] [--equation 7x^2+3556x+451612=0] [--repeats 3]
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def relayout_every_file(fig, path_without_suffix: Path) -> list[str]:
    """analyze.figures.save as it was until 2026-12-06: constrained layout run again for the SVG."""
    import matplotlib.pyplot as plt

    written = []
    for suffix in (".png", ".svg"):
        path = path_without_suffix.with_suffix(suffix)
        tmp = path.with_name(path.stem + ".tmp" + suffix)
        fig.savefig(tmp, dpi=130)
        os.replace(tmp, path)
        written.append(path.name)
    plt.close(fig)
    return written


@click.command()
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), required=True, help="A finished quadratic run.")
@click.option("--limit", type=int, default=20, show_default=True, help="Rows averaged by the maps workload.")
@click.option("--equation", default=None, help="Also time `explain` of this equation.")
@click.option("--repeats", type=int, default=3, show_default=True)
def main(run_dir, limit, equation, repeats):
    import torch

    from analyze import figures, maps

    ours = figures.save
    workloads = {"maps": lambda out: maps.render_maps(Path(run_dir), out, limit=limit, examples=[0], heads=[(0, 0)], progress=False)}
    if equation:
        workloads["explain"] = lambda out: maps.explain(Path(run_dir), {"equation": equation}, out)
    seconds = {w: {"relayout_every_file": [], "ours": []} for w in workloads}
    files = {}
    for _ in range(repeats):
        for workload, job in workloads.items():
            for mode, save in (("relayout_every_file", relayout_every_file), ("ours", ours)):
                figures.save = save
                out = Path(tempfile.mkdtemp()) / "figs"
                start = time.perf_counter()
                job(out)
                seconds[workload][mode].append(time.perf_counter() - start)
                files[workload] = sum(1 for p in out.rglob("*") if p.suffix in (".png", ".svg"))
                shutil.rmtree(out.parent)
    figures.save = ours
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} threads {torch.get_num_threads()}",
        "run": run_dir, "repeats": repeats,
        **{workload: {"files": files[workload], **{mode: round(statistics.median(v), 2) for mode, v in modes.items()},
                      "speedup": round(statistics.median(modes["relayout_every_file"]) / statistics.median(modes["ours"]), 2)}
           for workload, modes in seconds.items()},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
