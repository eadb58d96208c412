"""Where a training step of a preset goes on a GPU, and what removes it (BENCHMARKS.md, "Training
on an H100"). A plain loop over the same length-grouped batches of data/quadratic, same model:

- A: the engine's step (collate, copy, bf16 autocast forward, backward, clip, fused AdamW,
  loss.item() each step), and a profile of 10 such steps (host time against GPU time);
- B: the same without a host sync per step, batches collated ahead into pinned memory;
- C: B compiled with static shapes (widths padded to multiples of 32; compilation timed apart);
- D: C with CUDA graphs (torch.compile mode reduce-overhead).

Prints one JSON line each. On CPU (a smoke test) C and D are left out.

Usage: python bench/bench_step_overhead.py [--steps 120] [--skip 30] [--preset small] [--no-eager]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@click.command()
@click.option("--steps", default=120, show_default=True, type=click.IntRange(min=12), help="Steps timed in each variant.")
@click.option("--skip", default=30, show_default=True, type=click.IntRange(min=1), help="First steps of each variant left out of the timing.")
@click.option("--preset", default="small", show_default=True)
@click.option("--no-eager", is_flag=True, help="Leave out A and its profile (B, C, D only).")
def main(steps, skip, preset, no_eager):
    if skip >= steps:
        raise click.UsageError("--skip must be below --steps")
    import torch

    from train import engine
    from train.config import resolve
    from train.quadratic import build_model, build_tokenizer, collator, encode, load_splits

    engine.quiet_libraries()
    torch.backends.cuda.matmul.allow_tf32 = True
    config = resolve(preset, None, {"data": "data/quadratic", "val_size": 200})
    splits = load_splits(config)
    columns = splits["train"].select_columns(["equation", "solution"]).to_dict()
    tokenizer = build_tokenizer(columns["equation"] + columns["solution"])
    rows = encode(tokenizer, splits["train"])
    lengths = [len(r["input_ids"]) + len(r["labels"]) for r in rows]
    order = list(engine.LengthGroupedBatches(lengths, config.batch_size, 0))[:steps]
    collate = collator(tokenizer.pad_token_id)
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    pin = (lambda v: v.pin_memory()) if cuda else (lambda v: v)

    def padded(batch, multiple):
        out = {}
        for k, v in batch.items():
            width = -(-v.shape[1] // multiple) * multiple
            fill = -100 if k == "labels" else 0
            out[k] = torch.nn.functional.pad(v, (0, width - v.shape[1]), value=fill)
        return out

    def fresh():
        model = build_model(config, tokenizer).to(dev)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=cuda or None)
        return model, opt

    def step(model, forward, opt, batch):
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = forward(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def timed(name, run_one, n=steps):
        times = []
        sync()
        for i in range(n):
            run_one(i)
            if i in (skip - 1, n - 1):
                sync()
                times.append(time.perf_counter())
        per = (times[1] - times[0]) / (n - skip)
        real = sum(lengths[j] for b in order[skip:n] for j in b) / (times[1] - times[0])
        print(json.dumps({name: {"seconds_per_step": round(per, 4), "real_tokens_per_second": round(real)}}), flush=True)

    # A: the engine's loop
    model, opt = fresh()

    def a(i):
        batch = {k: v.to(dev) for k, v in collate([rows[j] for j in order[i]]).items()}
        step(model, model, opt, batch).item()

    if not no_eager:
        timed("A_engine_like", a)
    t = time.perf_counter()
    cpu = [collate([rows[j] for j in order[i]]) for i in range(steps)]
    print(json.dumps({"collate_seconds_per_batch": round((time.perf_counter() - t) / steps, 4)}), flush=True)
    from torch.profiler import ProfilerActivity, profile

    if not no_eager:
        with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
            for i in range(min(10, steps)):
                a(i)
            sync()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
        if cuda:
            print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=12), flush=True)

    # B: no host sync per step, batches collated ahead into pinned memory
    pinned = [{k: pin(v) for k, v in b.items()} for b in cpu]
    model, opt = fresh()
    losses = []

    def b(i):
        batch = {k: v.to(dev, non_blocking=True) for k, v in pinned[i].items()}
        losses.append(step(model, model, opt, batch).detach())

    timed("B_no_sync", b)

    # C, D: compiled, static shapes from padding to multiples of 32
    bucketed = [{k: pin(v) for k, v in padded(b, 32).items()} for b in cpu]
    print(json.dumps({"shapes": sorted({(b["input_ids"].shape[1], b["labels"].shape[1]) for b in bucketed})}), flush=True)
    for name, mode in [("C_compiled_static", "default"), ("D_cudagraphs", "reduce-overhead")] * cuda:
        try:
            torch._dynamo.reset()
            torch._dynamo.config.recompile_limit = 64
            model, opt = fresh()
            forward = torch.compile(model, dynamic=False, mode=mode)
            t = time.perf_counter()
            seen = set()
            for i, bt in enumerate(bucketed):  # compile every shape first
                shape = (bt["input_ids"].shape[1], bt["labels"].shape[1])
                if shape not in seen:
                    seen.add(shape)
                    step(model, forward, opt, {k: v.to(dev) for k, v in bt.items()})
            sync()
            print(json.dumps({name + "_compile_seconds": round(time.perf_counter() - t, 1)}), flush=True)

            def c(i):
                batch = {k: v.to(dev, non_blocking=True) for k, v in bucketed[i].items()}
                losses.append(step(model, forward, opt, batch).detach())

            timed(name, c)
        except Exception as err:
            print(json.dumps({name: f"failed: {type(err).__name__}: {str(err)[:300]}"}), flush=True)


if __name__ == "__main__":
    main()
