"""Beam search (`cli.py eval --num-beams K`) with the lab's cache against the library's, in one run.

For the same run, rows and batches, `train.quadratic.decode`:
- greedy: one candidate per row (static cache), the baseline a beam costs against;
- beams, library cache: `generate(num_beams=K)` with transformers' own encoder-decoder cache,
  which concatenates the self-attention cache at every token and copies all of it at every reorder;
- beams, lab cache: `train.beam_cache`, which writes in place and copies only the beams that moved.
The two beam searches must give the same beams, row for row (the script checks before it prints).

Usage: python bench/bench_beams.py [--run figures/results/padded-d-plain-cpu-iterated/run]
       [--data data/padded-d-plain] [--rows 64] [--beams 4] [--batch-size 64]
(the data: `python cli.py gen --format padded-d-plain --out data/padded-d-plain`)
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
@click.option("--run", default="figures/results/padded-d-plain-cpu-iterated/run", show_default=True, help="A quadratic run directory.")
@click.option("--data", default="data/padded-d-plain", show_default=True, help="A dataset of the run's format; its first test rows are decoded.")
@click.option("--rows", default=64, show_default=True, type=click.IntRange(min=1), help="Test rows decoded in each mode.")
@click.option("--beams", default=4, show_default=True, type=click.IntRange(min=2), help="Beams per row.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Sequences per generate call (rows x beams), as eval's.")
def main(run, data, rows, beams, batch_size):
    import torch

    from train import beam_cache
    from train.quadratic import decode, load_run, load_splits

    model, tokenizer, config = load_run(Path(run), data=data)
    if torch.cuda.is_available():
        model = model.to("cuda")
    test = load_splits(config, Path(run))["test"]
    equations = list(test.select(range(min(rows, len(test))))["equation"])
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"

    def timed(num_beams):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = decode(model, tokenizer, equations, batch_size, num_beams)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    _, greedy_s = timed(1)
    lab, lab_s = timed(beams)
    made = beam_cache.beam_search_cache
    beam_cache.beam_search_cache = lambda: None  # decode then passes no cache: generate makes its own
    try:
        library, library_s = timed(beams)
    finally:
        beam_cache.beam_search_cache = made
    if lab != library:
        differ = sum(a != b for a, b in zip(lab, library))
        raise SystemExit(f"the two beam searches differ in {differ} of {len(equations)} rows")
    print(json.dumps({
        "device": device, "run": run, "rows": len(equations), "beams": beams, "batch_size": batch_size,
        "greedy_s": round(greedy_s, 2), "beams_library_cache_s": round(library_s, 2), "beams_lab_cache_s": round(lab_s, 2),
        "speedup_over_library": round(library_s / lab_s, 2), "lab_beams_over_greedy": round(lab_s / greedy_s, 2),
        "same_beams": True,
    }))


if __name__ == "__main__":
    main()
