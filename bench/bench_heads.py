"""Benchmark head ablation (`cli.py heads`) against ablating one head at a time, in one run.

For the same run and the same test rows, the task metric with every head ablated in turn (plus the
unablated baseline):
- one at a time: for each head, the gate of that head closed for the whole batch and one greedy
  `generate` of all the rows (encoder included), as a loop over heads would do;
- batched: `Analysis.ablate` (train/quadratic.py): several ablations share one `generate` call (each copy of the
  rows carries its own gates) and ablations in the decoder and cross-attention reuse one encoder pass.
Both must give the same metrics for every head; the script checks that before it prints.

Usage: python bench/bench_heads.py [--run runs/quadratic-tiny-seed0] [--rows 200] [--batch-rows 2400]
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
@click.option("--run", default="runs/quadratic-tiny-seed0", show_default=True, help="A quadratic run directory.")
@click.option("--rows", default=200, show_default=True, help="Test rows decoded per ablation.")
@click.option("--batch-rows", default=2400, show_default=True, help="Rows per generate call in the batched mode.")
def main(run, rows, batch_rows):
    import torch

    from analyze import interventions
    from train.runs import analysis

    task = analysis(Path(run), "bench", limit=1, eval_limit=rows)
    model = task.model.eval()
    if torch.cuda.is_available():
        model.to("cuda")
    device = next(model.parameters()).device
    layout = interventions.shape(model)
    specs = [None] + [(k, l, h) for k, (layers, heads) in layout.items() for l in range(layers) for h in range(heads)]
    input_ids, mask = task.encoded()

    start = time.perf_counter()
    single = []
    for spec in specs:
        gates = {}
        if spec:
            gates[spec[0]] = torch.ones(1, *layout[spec[0]], device=device)
            gates[spec[0]][0, spec[1], spec[2]] = 0
        with interventions.gated(model, gates), torch.no_grad():
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=False, num_beams=1,
                                 cache_implementation="static")
        single.append(task.scores(task.tokenizer.batch_decode(out, skip_special_tokens=True)))
    one_at_a_time = time.perf_counter() - start

    start = time.perf_counter()
    batched = task.ablate(model, specs, batch_rows, progress=False)
    batched_seconds = time.perf_counter() - start
    assert batched == single, "the batched ablation disagrees with one head at a time"

    print(json.dumps({
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "torch": torch.__version__, "run": run, "rows": rows, "ablations": len(specs),
        "one_at_a_time_seconds": round(one_at_a_time, 2), "batched_seconds": round(batched_seconds, 2),
        "speedup": round(one_at_a_time / batched_seconds, 2), "same_metrics": True,
        "baseline": batched[0],
    }, indent=1))


if __name__ == "__main__":
    main()
