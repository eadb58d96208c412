"""Benchmark writing the attention figures against analyze/figures.py as it was at a git revision, in one run.

Since 2026-12-06 (second change) the attention figures (`head_grid`, `single_head`, `layer_summary`,
`role_share`) are laid out with fixed margins measured from their labels instead of matplotlib's
constrained layout, which measured every tick label of every panel at each save. The baseline is
the module at --baseline (default a595c44: constrained layout, laid out once for the PNG and the
SVG), loaded from git and swapped in for `analyze.maps`' calls in the same process. Workloads:
- maps: `analyze.maps.render_maps` on RUN (example 0, one single head, the split's first --limit rows);
- explain: `analyze.maps.explain` of --equation on RUN (the per-head grids of one long solution).
The modes alternate, --repeats times each; the medians are reported. (The comparison of one layout
against a layout per file, 2026-12-06, was this script at 376465e: `git show 376465e:bench/bench_figures.py`.)

Usage: python bench/bench_figures.py --run runs/quadratic-tiny-seed0 [--limit 20] [--equation 7x^2+3556x+451612=0] [--repeats 3] [--baseline REV]
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def figures_at(revision: str, folder: Path):
    """analyze/figures.py as committed at `revision`, imported as its own module."""
    source = subprocess.run(["git", "show", f"{revision}:analyze/figures.py"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    path = folder / f"figures_{revision}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@click.command()
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), required=True, help="A finished quadratic run.")
@click.option("--limit", type=int, default=20, show_default=True, help="Rows averaged by the maps workload.")
@click.option("--equation", default=None, help="Also time `explain` of this equation.")
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--baseline", default="a595c44", show_default=True, help="The git revision whose analyze/figures.py is the baseline.")
def main(run_dir, limit, equation, repeats, baseline):
    import torch

    from analyze import maps

    scratch = Path(tempfile.mkdtemp())
    modules = {"before": figures_at(baseline, scratch), "ours": maps.figures}
    workloads = {"maps": lambda out: maps.render_maps(Path(run_dir), out, limit=limit, examples=[0], heads=[(0, 0)], progress=False)}
    if equation:
        workloads["explain"] = lambda out: maps.explain(Path(run_dir), {"equation": equation}, out)
    seconds = {w: {mode: [] for mode in modules} for w in workloads}
    files = {}
    for _ in range(repeats):
        for workload, job in workloads.items():
            for mode, module in modules.items():
                maps.figures = module
                out = scratch / "figs"
                start = time.perf_counter()
                job(out)
                seconds[workload][mode].append(time.perf_counter() - start)
                files[workload] = sum(1 for p in out.rglob("*") if p.suffix in (".png", ".svg"))
                shutil.rmtree(out)
    maps.figures = modules["ours"]
    shutil.rmtree(scratch)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} threads {torch.get_num_threads()}",
        "run": run_dir, "repeats": repeats, "baseline": baseline,
        **{workload: {"files": files[workload], **{mode: round(statistics.median(v), 2) for mode, v in modes.items()},
                      "speedup": round(statistics.median(modes["before"]) / statistics.median(modes["ours"]), 2)}
           for workload, modes in seconds.items()},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
