"""Benchmark the dataset-averaged maps against a bare forward pass and a naive average, in one run.

For the same run and the same test rows (teacher-forced on the reference solutions, batches of
256 in order of length):
- bare: the eager forward pass with `output_attentions=True`, the attention thrown away;
- average: `analyze.maps.dataset_average` (the forward pass plus the streaming sums);
- naive: the forward pass, every example's maps kept (cropped to its length), averaged at the end;
- average-whole: `dataset_average` with every batch in one forward pass, as before batches were
  sliced to analyze.attention.ATTENTION_BYTES of maps (the baseline of the slicing);
- average-1gib: `dataset_average` with the slicing of 2026-12-04 to 2026-12-05 (slices of 1 GiB of
  maps, every slice as wide as its batch), the baseline of slices cut to their rows and of 128 MiB.
Each mode runs in a fresh process, so that its peak resident memory (ru_maxrss) is its own;
"extra memory" is that peak less the process's size once the model and data are loaded.

Usage: python bench/bench_maps.py [--run runs/quadratic-tiny-seed0] [--rows 500 --rows 5000] [--modes bare,average,naive]
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _slices_before(batch: dict, sides: dict, layout: dict, device=None, limit: int | None = None):
    """analyze.attention.batch_slices before 2026-12-06: as many rows a slice as fit at the batch's
    width (1 GiB of maps), every slice as wide as the batch."""
    limit = limit or 1 << 30
    width = {side: roles.shape[1] for side, roles in batch["roles"].items()}
    row_bytes = sum(4 * layers * heads * width[sides[kind][0]] * width[sides[kind][1]] for kind, (layers, heads) in layout.items() if kind in sides)
    rows = len(next(iter(batch["roles"].values())))
    step = max(1, limit // max(row_bytes, 1))
    for start in range(0, rows, step):
        cut = slice(start, start + step)
        yield {"inputs": {name: t[cut] for name, t in batch["inputs"].items()}, "roles": {side: r[cut] for side, r in batch["roles"].items()}}


def measure(run: str, rows: int, mode: str, batch_size: int) -> dict:
    import numpy as np
    import torch

    from analyze.attention import capture
    from analyze.maps import dataset_average
    from train.quadratic import Analysis, captured_batches, load_run, load_splits, teacher_forced_batch

    model, tokenizer, config = load_run(Path(run))
    test = load_splits(config)["test"]
    columns = test.select(range(min(rows, len(test)))).select_columns(["equation", "solution"]).to_dict()
    equations, solutions = columns["equation"], columns["solution"]
    torch.set_grad_enabled(False)
    loaded = _rss_mb()
    kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    start = time.perf_counter()
    if mode.startswith("average"):
        from analyze import maps

        if mode == "average-whole":
            maps.batch_slices = lambda batch, *_: [batch]
        elif mode == "average-1gib":
            maps.batch_slices = _slices_before
        dataset_average(model, captured_batches(tokenizer, equations, solutions, ["?"] * len(equations), batch_size), Analysis.sides, Analysis.roles)
    else:
        order = sorted(range(len(equations)), key=lambda i: len(solutions[i]))
        kept = []
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            batch = teacher_forced_batch(tokenizer, [equations[i] for i in idx], [solutions[i] for i in idx])
            captured = capture(model, **batch["inputs"])
            if mode == "naive":
                for kind, (a, q_mask, k_mask) in captured.items():
                    for b in range(a.shape[1]):
                        q, k = int(q_mask[b].sum()), int(k_mask[b].sum())
                        kept.append((kind, a[:, b, :, :q, :k].numpy().copy()))
        if mode == "naive":  # the averages by position, as the streaming version computes them
            for kind in ("encoder", "decoder", "cross"):
                maps = [m for k, m in kept if k == kind]
                L, H = maps[0].shape[:2]
                Q, K = max(m.shape[2] for m in maps), max(m.shape[3] for m in maps)
                total, queries = np.zeros((L, H, Q, K)), np.zeros(Q)
                for m in maps:
                    total[:, :, : m.shape[2], : m.shape[3]] += m
                    queries[: m.shape[2]] += 1
                _ = total / np.maximum(queries, 1)[None, None, :, None]
    seconds = time.perf_counter() - start
    kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime - kernel  # page faults show here
    return {"mode": mode, "rows": len(equations), "seconds": round(seconds, 2), "kernel_seconds": round(kernel, 2),
            "extra_memory_mb": round(_rss_mb() - loaded, 1)}


@click.command()
@click.option("--run", default="runs/quadratic-tiny-seed0", show_default=True, help="A finished quadratic run.")
@click.option("--rows", multiple=True, type=int, default=[500, 5000], show_default=True, help="Test rows (repeatable).")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--modes", default="bare,average,naive", show_default=True,
              help="Comma-separated: bare, average, naive, average-whole, average-1gib (naive keeps every map: not for long "
                   "solutions; bare and average-whole: one forward pass a batch, too large for long solutions at 256 rows).")
@click.option("--mode", default=None, hidden=True)
def main(run, rows, batch_size, modes, mode):
    if mode:  # one measurement, in this process
        print(json.dumps(measure(run, rows[0], mode, batch_size)))
        return
    results = []
    for n in rows:
        for m in modes.split(","):
            out = subprocess.run([sys.executable, __file__, "--run", run, "--rows", str(n), "--batch-size", str(batch_size), "--mode", m],
                                 capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr)
    import torch

    by = {(r["mode"], r["rows"]): r for r in results}
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "run": run, "results": results,
    }
    for other, base in (("average", "bare"), ("naive", "bare"), ("average", "average-whole"), ("average", "average-1gib")):
        if all((m, n) in by for m in (other, base) for n in rows):
            summary[f"{other}_over_{base}_time"] = {n: round(by[other, n]["seconds"] / by[base, n]["seconds"], 2) for n in rows}
            summary[f"{other}_over_{base}_extra_memory"] = {n: round(by[other, n]["extra_memory_mb"] / max(by[base, n]["extra_memory_mb"], 1), 3) for n in rows}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
