"""Benchmark the statistics pass of `cli.py heads` (analyze.heads.stream) against the same pass on
whole batches, in one run.

For the same run and the same rows (the task's captured batches, as `cli.py heads` makes them):
- whole: the pass as before 2026-12-06, the baseline: every batch in one forward pass, the
  Jensen-Shannon sums from three fresh tensors of a kind's maps per pair row and every key of every
  query, the positional features from five masked copies of the maps;
- sliced: `analyze.heads.stream` as it is: batches in slices of analyze.attention.ATTENTION_BYTES
  of maps, each cut to its own rows; the JS sums in one buffer, the causal decoder's in query
  chunks that skip the keys after them; the positional features from the maps' diagonals.
Each mode runs in a fresh process, so that its peak resident memory (ru_maxrss) is its own; "extra
memory" is that peak less the process's size once the model and data are loaded; kernel = the
process's system time (page faults show there). The script checks that both modes give the same
per-map features and JS distances before it prints the summary.

Usage: python bench/bench_head_stats.py --run RUN_DIR [--rows 256] [--batch-size 64] [--modes whole,sliced]
"""

from __future__ import annotations

import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _js_before(attention, q_mask, causal=False):
    """analyze.head_stats.js_divergence_sums before 2026-12-06 (every key of every query)."""
    import torch

    layers, batch, heads, q, k = attention.shape
    rows = attention.permute(0, 2, 1, 3, 4).reshape(layers * heads, batch, q, k).float()
    own = -torch.special.xlogy(rows, rows).sum(dim=-1)
    valid = q_mask[None].double()
    out = torch.zeros(layers * heads, layers * heads, dtype=torch.float64, device=attention.device)
    for p in range(layers * heads):
        m = (rows[p][None] + rows[p:]) / 2
        js = -torch.special.xlogy(m, m).sum(dim=-1) - (own[p][None] + own[p:]) / 2
        out[p, p:] = (js.clamp(min=0).double() * valid).sum(dim=(1, 2))
    return torch.triu(out, diagonal=1) + torch.triu(out).T


def _features_before(map_features, attention, q_mask, k_mask, key_segments, positional, causal):
    """analyze.head_stats.map_features before 2026-12-06: the positional features from five masked
    copies of the maps (now from their diagonals, which are views); the rest as now."""
    import torch

    from analyze.head_stats import BAND, FEATURES, allowed_keys

    out = map_features(attention, q_mask, k_mask, key_segments, positional, causal)
    if positional:
        a = attention * allowed_keys(q_mask, k_mask, causal)[None, :, None]
        q, k = a.shape[-2:]
        offset = (torch.arange(k)[None, :] - torch.arange(q)[:, None]).float()
        qm = q_mask[None, :, None, :].float()
        n_queries = q_mask.sum(dim=1).clamp(min=1).float()[None, :, None]
        for name, keys in (("previous", offset == -1), ("same", offset == 0), ("next", offset == 1), ("diagonal_score", offset.abs() <= 1),
                           ("band_score", offset.abs() <= BAND)):
            out[..., FEATURES.index(name)] = ((a * keys).sum(dim=-1) * qm).sum(dim=-1) / n_queries
    return out


def measure(run: str, rows: int, mode: str, batch_size: int, save: str | None) -> dict:
    import numpy as np
    import torch

    from analyze import head_stats, heads
    from train.runs import analysis

    task = analysis(Path(run), "bench", limit=rows, eval_limit=1)
    model = task.model.eval()
    batches = list(task.batches(batch_size))
    if mode == "whole":
        heads.batch_slices = lambda batch, *_: [batch]
        head_stats.js_divergence_sums, head_stats.map_features = _js_before, functools.partial(_features_before, head_stats.map_features)
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731 - MB on Linux
    loaded, kernel = rss(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
    start = time.perf_counter()
    found = heads.stream(task, model, batches, progress=False)
    seconds = time.perf_counter() - start
    kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime - kernel
    if save:
        np.savez(save, **{f"{kind}-{name}": found[kind][name] for kind in task.kinds for name in ("features", "js")})
    return {"mode": mode, "rows": task.n_rows, "batches": len(batches), "seconds": round(seconds, 2), "kernel_seconds": round(kernel, 2),
            "extra_memory_mb": round(rss() - loaded, 1), "threads": torch.get_num_threads()}


@click.command()
@click.option("--run", required=True, help="A run directory of any task (its data must be on disk, as for `cli.py heads`).")
@click.option("--rows", default=256, show_default=True, help="Rows of the test split analysed.")
@click.option("--batch-size", default=64, show_default=True, help="Rows per captured batch (`cli.py heads --batch-size`).")
@click.option("--modes", default="whole,sliced", show_default=True, help="Comma-separated: whole (the baseline), sliced.")
@click.option("--mode", default=None, hidden=True)
@click.option("--save", default=None, hidden=True)
def main(run, rows, batch_size, modes, mode, save):
    if mode:  # one measurement, in this process
        print(json.dumps(measure(run, rows, mode, batch_size, save)))
        return
    import numpy as np
    import torch

    results, arrays = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in modes.split(","):
            saved = Path(tmp) / f"{m}.npz"
            out = subprocess.run([sys.executable, __file__, "--run", run, "--rows", str(rows), "--batch-size", str(batch_size), "--mode", m,
                                  "--save", str(saved)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if out.returncode:
                sys.exit(f"mode {m} failed:\n{out.stderr[-3000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr)
            arrays[m] = dict(np.load(saved))
    first, *others = arrays.values()
    for other in others:  # the same numbers, or the timing means nothing
        for name, value in first.items():
            np.testing.assert_allclose(other[name], value, atol=1e-4, err_msg=name)
    summary = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}", "run": run, "results": results}
    by = {r["mode"]: r for r in results}
    if {"whole", "sliced"} <= set(by):
        summary["sliced_over_whole_time"] = round(by["sliced"]["seconds"] / by["whole"]["seconds"], 2)
        summary["sliced_over_whole_extra_memory"] = round(by["sliced"]["extra_memory_mb"] / max(by["whole"]["extra_memory_mb"], 1), 3)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
