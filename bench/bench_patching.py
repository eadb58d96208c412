"""Benchmark activation patching (`cli.py patch`) against one forward pass per patch, in one run.

For the same run and the same pairs (the task's `patch_pairs`), the scores with the encoder's state
at every (layer, position) of every pair patched from the clean run:
- one at a time: a loop over pairs, layers and positions, one forward pass (batch of one) each;
- batched: `analyze.patching.patch_all`: the corrupted input repeated along the batch, each copy
  with its own (layer, position), `--batch-size` copies per forward pass.
Both must give the same scores (within float32 rounding; the script checks before it prints).

Usage: python bench/bench_patching.py [--run /tmp/patch-run] [--pairs 200] [--batch-size 256]
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@click.command()
@click.option("--run", default="/tmp/patch-run", show_default=True, help="A quadratic run directory.")
@click.option("--pairs", default=200, show_default=True, help="Pairs patched.")
@click.option("--batch-size", default=256, show_default=True, help="Patched copies per forward pass in the batched mode.")
@click.option("--seed", default=0, show_default=True)
def main(run, pairs, batch_size, seed):
    import torch

    from analyze import patching
    from train.runs import analysis

    clock = time.perf_counter()
    task = analysis(Path(run), "bench")
    model = task.model.eval()
    if torch.cuda.is_available():
        model.to("cuda")
    device = next(model.parameters()).device
    made = task.patch_pairs(pairs, seed)
    setup = time.perf_counter() - clock

    clock = time.perf_counter()
    batched = patching.patch_all(model, made, batch_size)
    batched_seconds = time.perf_counter() - clock

    clock = time.perf_counter()
    targets = patching.score_targets(made["targets"], model.config.vocab_size)
    single = {name: torch.full_like(values, float("nan")) for name, values in batched["patched"].items()}
    passes = 0
    for p in range(pairs):
        one = torch.tensor([p])
        states = patching.encoder_states(model, made["clean"][one].to(device), made["attention_mask"][one].to(device))
        for layer in range(len(states)):
            for t in range(int(made["attention_mask"][p].sum())):
                where = torch.zeros(1, made["clean"].shape[1], dtype=torch.bool, device=device)
                where[0, t] = True
                with patching.patched(model, torch.tensor([layer], device=device), where, states[layer]):
                    found, _ = patching.forward_scores(model, made, targets, one, made["corrupted"][one])
                for name, values in found.items():
                    single[name][p, layer, t] = values[0]
                passes += 1
    single_seconds = time.perf_counter() - clock

    for name, b in batched["patched"].items():  # the same positions patched in both (NaN: padding)
        assert torch.equal(torch.isnan(b), torch.isnan(single[name])), name
    largest = max(float(torch.nan_to_num(b - single[name]).abs().max()) for name, b in batched["patched"].items())
    assert largest < 1e-3, f"batched and one-at-a-time patching disagree by {largest} nats"
    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "run": run, "pairs": pairs, "patches": passes,
        "batch_size": batch_size, "loading_and_pairs_seconds": round(setup, 2),
        "one_at_a_time_seconds": round(single_seconds, 2), "batched_seconds": round(batched_seconds, 2),
        "speedup": round(single_seconds / batched_seconds, 1), "largest_difference_nats": largest,
    }, indent=1))


if __name__ == "__main__":
    main()
