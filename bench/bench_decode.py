"""Decoding (`cli.py eval`, greedy and `--num-beams K`) with the lab's cache against the library's,
in one run.

The same run, rows and batches (the rows sorted by input length, as `eval` does), one `generate`
call per batch; only the key-value cache differs:
- greedy, static cache: what `eval` used on every device until 2026-12-06 (still on a GPU), the
  baseline; it attends over the whole token budget at every step;
- greedy, lab cache: `train.kv_cache`, what `eval` and `heads`' ablations now use on a CPU;
- beams, library cache: transformers' own encoder-decoder cache, which concatenates the
  self-attention cache at every token and copies all of it at every reorder of the beams;
- beams, lab cache: written in place, only the beams that moved copied.
Each pair must give the same outputs, row for row (the script checks before it prints).
Then `cli.py heads`' ablation (`Analysis.ablate`: greedy decoding of several gated copies of the
rows per call) of the baseline and `--ablations` heads on `--ablation-rows` rows, with the static
cache and with the lab's; both must give the same metrics.

Usage: python bench/bench_decode.py [--run figures/results/padded-d-plain-cpu-iterated/run]
       [--data data/padded-d-plain] [--rows 64] [--beams 4] [--batch-size 64] [--ablations 8] [--ablation-rows 32]
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
@click.option("--ablations", default=8, show_default=True, type=click.IntRange(min=1), help="Heads ablated (the first of the encoder's), besides the baseline.")
@click.option("--ablation-rows", default=32, show_default=True, type=click.IntRange(min=1), help="Test rows decoded per ablation.")
def main(run, data, rows, beams, batch_size, ablations, ablation_rows):
    import torch

    from train.kv_cache import lab_cache_arguments
    from train.quadratic import load_run, load_splits

    model, tokenizer, config = load_run(Path(run), data=data)
    cuda = torch.cuda.is_available()
    model = model.to("cuda" if cuda else "cpu").eval()
    test = load_splits(config, Path(run))["test"]
    equations = sorted(test.select(range(min(rows, len(test))))["equation"], key=lambda e: len(tokenizer(e)["input_ids"]))
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"

    @torch.no_grad()
    def timed(num_beams, cache):
        if cuda:
            torch.cuda.synchronize()
        start, texts = time.perf_counter(), []
        per_call = max(1, batch_size // num_beams)
        for first in range(0, len(equations), per_call):
            inputs = tokenizer(equations[first : first + per_call], padding=True, return_tensors="pt").to(model.device)
            caching = {"cache_implementation": "static"} if cache == "static" else lab_cache_arguments(model) if cache == "lab" else {}
            out = model.generate(**inputs, do_sample=False, num_beams=num_beams, num_return_sequences=num_beams, **caching)
            texts += tokenizer.batch_decode(out, skip_special_tokens=True)
        if cuda:
            torch.cuda.synchronize()
        return texts, time.perf_counter() - start

    outputs, seconds = {}, {}
    for name, num_beams, cache in (("greedy_static", 1, "static"), ("greedy_lab", 1, "lab"), ("beams_library", beams, "library"), ("beams_lab", beams, "lab")):
        outputs[name], seconds[name] = timed(num_beams, cache)
    for lab, library in (("greedy_lab", "greedy_static"), ("beams_lab", "beams_library")):
        differ = sum(a != b for a, b in zip(outputs[lab], outputs[library]))
        if differ:
            raise SystemExit(f"{lab}: {differ} of {len(outputs[lab])} outputs differ from {library}'s")
    from analyze import interventions
    from train import kv_cache
    from train.runs import analysis

    task = analysis(Path(run), "bench", limit=1, eval_limit=ablation_rows, data=data)
    ablated = task.model.to(model.device).eval()
    specs = [None] + [(kind, layer, head) for kind, (layers, heads) in interventions.shape(ablated).items()
                      for layer in range(layers) for head in range(heads)][:ablations]
    lab_arguments, metrics = kv_cache.cache_arguments, {}
    for name in ("ablation_static", "ablation_lab"):
        if name == "ablation_static":
            kv_cache.cache_arguments = lambda model, greedy: {"cache_implementation": "static"}
        start = time.perf_counter()
        metrics[name] = task.ablate(ablated, specs, 2400, progress=False)
        seconds[name] = time.perf_counter() - start
        kv_cache.cache_arguments = lab_arguments
    if metrics["ablation_lab"] != metrics["ablation_static"]:
        raise SystemExit("ablation_lab: the metrics differ from ablation_static's")
    print(json.dumps({
        "device": device, "run": run, "rows": len(equations), "beams": beams, "batch_size": batch_size,
        **{f"{name}_s": round(s, 2) for name, s in seconds.items()},
        "greedy_speedup": round(seconds["greedy_static"] / seconds["greedy_lab"], 2),
        "beams_speedup": round(seconds["beams_library"] / seconds["beams_lab"], 2),
        "lab_beams_over_lab_greedy": round(seconds["beams_lab"] / seconds["greedy_lab"], 2),
        "ablations": len(specs), "ablation_rows": ablation_rows, "ablation_speedup": round(seconds["ablation_static"] / seconds["ablation_lab"], 2),
        "same_outputs": True,
    }))


if __name__ == "__main__":
    main()
