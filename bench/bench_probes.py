"""Benchmark `cli.py probe` against a naive implementation that keeps every hidden state, in one run.

For the same run, rows, split and seed, every target x layer x role:
- streamed: `python cli.py probe RUN --limit ROWS` end to end (interpreter, imports, model, one
  streamed pass that pools each batch at once, the probes on one BLAS thread, JSON, CSV, heatmaps);
- naive: the forward pass keeps every hidden state of every batch (encoder and decoder, every layer,
  unpadded), then pools them example by example, then fits the same probes (`fit_all`);
each in its own process, with its peak resident memory. The two tables must agree (accuracies
within one scored example: the pooled sums are added in another order); the script checks that.
Then the thread settings that `cli.py probe` chose, against the libraries' defaults: the forward pass
on one torch thread, the probes of a few cells on one BLAS thread, in one process per core.

Usage: python bench/bench_probes.py --run /tmp/probe-run [--rows 5000] [--thread-cells 9]
"""

from __future__ import annotations

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


def naive(run: str, rows: int, batch_size: int, seed: int, held_out: float) -> dict:
    """All hidden states in memory, pooled afterwards, then the same probes."""
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    from analyze.probes import decoder_positions, decoder_statements, fit_all, held_out_rows, hidden_states, probe_sets, type_of
    from train.runs import analysis

    task = analysis(Path(run), "probe", limit=rows)
    model = task.model.eval()
    torch.set_num_threads(1)  # as `cli.py probe`
    clock = time.perf_counter()
    kept = []  # (row, encoder states (L+1, T, d), encoder roles, ids, decoder states, decoder roles, segments, decoder ids)
    for batch in task.batches(batch_size):
        states = hidden_states(model, dict(batch["inputs"]))
        enc = torch.stack(states["encoder"]).float()
        dec = torch.stack(states["decoder"]).float() if "decoder" in states else None
        for b, row in enumerate(batch["rows"]):
            n = int((batch["roles"]["encoder"][b] >= 0).sum())
            item = [row, enc[:, b, :n].clone().numpy(), batch["roles"]["encoder"][b, :n].numpy(), batch["inputs"]["input_ids"][b, :n].numpy()]
            if dec is not None:
                m = int((batch["roles"]["decoder"][b] >= 0).sum())
                item += [dec[:, b, :m].clone().numpy(), batch["roles"]["decoder"][b, :m].numpy(), batch["segments"]["decoder"][b, :m].numpy(),
                         batch["inputs"]["decoder_input_ids"][b, :m].numpy()]
            kept.append(item)
    forward = time.perf_counter() - clock
    held = sum(x.nbytes for item in kept for x in item[1:] if hasattr(x, "nbytes"))

    clock = time.perf_counter()
    roles = list(task.roles["encoder"])
    layers, d = kept[0][1].shape[0], kept[0][1].shape[2]
    n_rows = task.n_rows
    enc = {"features": np.zeros((n_rows, layers, len(roles) + 1, d), np.float32), "present": np.zeros((n_rows, len(roles) + 1), bool),
           "types": np.zeros((n_rows, len(roles) + 1), np.int64)}
    found = {"encoder_roles": roles + ["mean"], "encoder": enc, "tokens": {}}
    equals = task.roles["decoder"].index("=") if "decoder" in task.roles else None
    names = task.statement_names() if "decoder" in task.roles else []
    columns = {name: j for j, name in enumerate(decoder_statements(names))}
    dec = None
    for item in kept:
        row, states, r, ids = item[:4]
        for j in range(len(roles) + 1):
            where = (r == j) if j < len(roles) else np.ones(len(r), bool)
            if where.any():
                enc["features"][row, :, j] = states[:, where].mean(axis=1)
                enc["present"][row, j] = True
                enc["types"][row, j] = type_of(ids[where])
        if len(item) > 4:
            dstates, droles, segments, dids = item[4:]
            if dec is None:
                dec = {"features": np.zeros((n_rows, dstates.shape[0], len(columns), d), np.float32),
                       "present": np.zeros((n_rows, len(columns)), bool), "types": np.zeros((n_rows, len(columns)), np.int64)}
            for k, pos in decoder_positions(droles, segments, equals):
                j = columns.get(names[row][k]) if k < len(names[row]) else None
                if j is not None and not dec["present"][row, j]:
                    dec["features"][row, :, j], dec["present"][row, j], dec["types"][row, j] = dstates[:, pos], True, type_of(dids[pos : pos + 1])
    if dec is not None:
        found["decoder"], found["decoder_roles"] = dec, list(columns)
    pooling = time.perf_counter() - clock

    clock = time.perf_counter()
    groups, _ = probe_sets(found, task.probe_targets(), {})
    with threadpool_limits(1):
        cells = fit_all(groups, held_out_rows(n_rows, held_out, seed), seed, progress=False)
    fitting = time.perf_counter() - clock
    return {"forward_seconds": round(forward, 2), "pooling_seconds": round(pooling, 2), "fit_seconds": round(fitting, 2),
            "hidden_state_bytes": held, "cells": cells}


def threads(run: str, rows: int, batch_size: int, seed: int, held_out: float, cells: int) -> dict:
    """The thread settings of `cli.py probe` against the libraries' defaults: the first `cells`
    encoder cells fitted in this process with the default BLAS threads, with one, and in one
    process per core (as `cli.py probe`); the forward pass over 1,000 rows with torch's default
    threads and with one."""
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    from analyze.probes import collect, fit_all, held_out_rows, probe_sets
    from train.runs import analysis

    out = {}
    task = analysis(Path(run), "probe", limit=min(rows, 1000))
    for n in (torch.get_num_threads(), 1):
        torch.set_num_threads(n)
        clock = time.perf_counter()
        collect(task, batch_size, True, {}, seed, progress=False)
        out[f"forward_1000_rows_torch_{n}_threads_seconds"] = round(time.perf_counter() - clock, 2)
    task = analysis(Path(run), "probe", limit=rows)
    found = collect(task, batch_size, True, {}, seed, progress=False)
    side, role_names, data, members = probe_sets(found, task.probe_targets(), {})[0][0]
    layers = data["features"].shape[1]
    keep = role_names[: max(1, cells // layers)]
    part = [(side, keep, {k: v[:, :, : len(keep)] if k == "features" else v[:, : len(keep)] for k, v in data.items()}, members)]
    test = held_out_rows(task.n_rows, held_out, seed)
    out |= {"cells": len(keep) * layers, "targets": len(members), "default_blas_threads": max(i["num_threads"] for i in threadpool_info())}
    clock = time.perf_counter()
    fit_all(part, test, seed, progress=False, workers=1)
    out["fit_default_blas_threads_seconds"] = round(time.perf_counter() - clock, 2)
    with threadpool_limits(1):
        clock = time.perf_counter()
        fit_all(part, test, seed, progress=False, workers=1)
        out["fit_one_blas_thread_seconds"] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()
        fit_all(part, test, seed, progress=False)
        out[f"fit_{min(os.cpu_count() or 1, 8)}_processes_seconds"] = round(time.perf_counter() - clock, 2)
    return out


@click.command()
@click.option("--run", required=True, help="A quadratic run directory (e.g. the tiny preset trained 300 steps).")
@click.option("--rows", default=5000, show_default=True, help="Test rows probed.")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--held-out", default=0.3, show_default=True)
@click.option("--thread-cells", default=9, show_default=True, help="Cells fitted under each thread setting (0: skip that comparison).")
@click.option("--mode", type=click.Choice(["naive", "threads"]), default=None, hidden=True)
def main(run, rows, batch_size, seed, held_out, thread_cells, mode):
    if mode:  # a child process: one measurement, its peak memory, as JSON
        out = naive(run, rows, batch_size, seed, held_out) if mode == "naive" else threads(run, rows, batch_size, seed, held_out, thread_cells)
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(out))
        return
    import torch

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        clock = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", "import resource, sys, cli\ntry:\n    cli.main(sys.argv[1:])\nfinally:\n"
                               "    print('peak_rss_mb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)",
                               "probe", run, "--limit", str(rows), "--batch-size", str(batch_size), "--seed", str(seed), "--held-out", str(held_out),
                               "--out", f"{tmp}/probes"], capture_output=True, text=True, env=env, cwd=ROOT)
        streamed_wall = time.perf_counter() - clock
        assert done.returncode == 0, done.stderr[-2000:]
        streamed = json.loads(Path(f"{tmp}/probes/probes.json").read_text())
        streamed_rss = float(done.stdout.strip().splitlines()[-1].split()[1])
    child = [sys.executable, __file__, "--run", run, "--rows", str(rows), "--batch-size", str(batch_size), "--seed", str(seed),
             "--held-out", str(held_out), "--thread-cells", str(thread_cells)]
    clock = time.perf_counter()
    done = subprocess.run(child + ["--mode", "naive"], capture_output=True, text=True, env=env, cwd=ROOT)
    naive_wall = time.perf_counter() - clock
    assert done.returncode == 0, done.stderr[-2000:]
    base = json.loads(done.stdout.strip().splitlines()[-1])
    ours = {(c["target"], c["side"], c["layer"], c["role"]): c for c in streamed["cells"]}
    theirs = {(c["target"], c["side"], c["layer"], c["role"]): c for c in base["cells"]}
    assert ours.keys() == theirs.keys(), "the naive implementation probes other cells"
    worst = max(abs(ours[k]["accuracy"] - theirs[k]["accuracy"]) * ours[k]["n_test"] for k in ours)
    assert worst <= 1 + 1e-9, f"the tables disagree by {worst} scored examples"
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
                   + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "torch": torch.__version__, "run": run, "rows": streamed["rows"], "cells": len({k[1:] for k in ours}), "targets": len(streamed["targets"]),
        "probes_fitted": 2 * sum(c["selectivity"] is not None for c in streamed["cells"]) + sum(c["selectivity"] is None for c in streamed["cells"]),
        "streamed": {"wall_seconds": round(streamed_wall, 1), **streamed["seconds"], "peak_rss_mb": round(streamed_rss, 1)},
        "naive": {"wall_seconds": round(naive_wall, 1), **{k: v for k, v in base.items() if k != "cells"}},
        "same_table": f"accuracies within {worst:g} scored example(s)",
    }
    if thread_cells:
        done = subprocess.run(child + ["--mode", "threads"], capture_output=True, text=True, env=env, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        result["blas_threads"] = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
