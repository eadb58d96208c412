"""Benchmark the training engine and the evaluator against a plain `Seq2SeqTrainer`, in one run.

Same model (a preset, same seed, the attention build_model sets: sdpa on a GPU, eager on CPU),
same tokenised data:
- training: N optimiser steps with `train.engine` (our batch size, length-grouped batches, bf16 on
  a GPU; on a GPU also with `compile=true`) and with `Seq2SeqTrainer` (default arguments,
  `DataCollatorForSeq2Seq` dynamic padding; its default batch size is 8), plus the Trainer at our
  batch size, and on a GPU at our batch size with bf16=True. Throughput is real (non-padding)
  input + label tokens per second of training time: over all N steps, and over the steps after
  the first fifth (`steady`: without start-up, and without the steps that compile a new batch width).
- evaluation: the test rows decoded with `train.quadratic.evaluate_rows` (batched greedy, sorted
  by length, static key-value cache, eager attention and float32 as `cli.py eval` loads a run;
  it also grades every output) and with `Seq2SeqTrainer.predict(predict_with_generate=True)`
  (default evaluation batch size 8) on the first --trainer-eval-rows of them. The weights are our
  engine's after N steps: outputs that rarely end early, so decoding runs close to its longest.
  --generate-compiled also times our evaluator with generate()'s own compilation, which
  train_run switches off (on a GPU it compiles again as batch shapes change).

Usage: python bench/bench_train.py [--data data/quadratic] [--format published] [--preset tiny]
           [--steps 60] [--trainer-steps N] [--eval-rows 1000] [--trainer-eval-rows 1000] [--generate-compiled]
On the GPU machine: --preset small --steps 200 --eval-rows 20000 --trainer-eval-rows 400
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gen.equations import FORMATS  # noqa: E402  (after the path: the bench runs as a script)


def steady(records: list[tuple[int, float, float]], skip: int) -> dict:
    """From (step, cumulative tokens, seconds): tokens per second and seconds per step over the
    steps after `skip`, without those that took over 5 times the median step (a compiled run's
    compilation of a new batch width), whose seconds are reported apart."""
    durations = [(t1 - t0, n1 - n0) for (_, n0, t0), (_, n1, t1) in zip(records[skip - 1 :], records[skip:])]
    median = sorted(d for d, _ in durations)[len(durations) // 2]
    kept = [(d, n) for d, n in durations if d <= 5 * median]
    seconds = sum(d for d, _ in kept)
    return {"steady_tokens_per_second": round(sum(n for _, n in kept) / seconds, 1),
            "steady_seconds_per_step": round(seconds / len(kept), 4),
            "slow_steps": len(durations) - len(kept), "slow_steps_seconds": round(sum(d for d, _ in durations) - seconds, 1)}


@click.command()
@click.option("--data", default="data/quadratic", show_default=True, help="Dataset from cli.py gen (made with --format if missing).")
@click.option("--format", "fmt", default="published", show_default=True, type=click.Choice(FORMATS))
@click.option("--preset", default="tiny", show_default=True)
@click.option("--steps", default=60, show_default=True, type=click.IntRange(min=5), help="Optimiser steps of our engine.")
@click.option("--trainer-steps", default=None, type=click.IntRange(min=0), help="Optimiser steps of each Trainer (0: no Trainer).  [default: --steps]")
@click.option("--eval-rows", default=1000, show_default=True, type=click.IntRange(min=0), help="Test rows decoded by our evaluator (0: none).")
@click.option("--trainer-eval-rows", default=1000, show_default=True, type=click.IntRange(min=0), help="Of those, rows decoded by Trainer.predict (0: none).")
@click.option("--generate-compiled", is_flag=True, help="Also time our evaluator with generate()'s compilation (a GPU's; off in runs).")
def main(data, fmt, preset, steps, trainer_steps, eval_rows, trainer_eval_rows, generate_compiled):
    import datasets
    import torch
    from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    from gen.dataset import GenOptions, generate
    from train import engine
    from train.config import resolve
    from train.quadratic import build_model, build_tokenizer, collator, encode, evaluate_rows, generation_config, load_splits

    engine.quiet_libraries()
    trainer_steps = steps if trainer_steps is None else trainer_steps
    if 0 < trainer_steps < 5:
        raise click.UsageError("--trainer-steps must be 0 (no Trainer) or at least 5")
    cuda = torch.cuda.is_available()
    if not Path(data, "dataset_dict.json").exists():
        generate(GenOptions(format=fmt), Path(data), workers=os.cpu_count() or 1)
    made_as = json.loads(Path(data, "card.json").read_text())["format"]
    if made_as != fmt:
        raise click.UsageError(f"{data} holds the {made_as} format, not {fmt}; give --data a directory for {fmt}")
    tmp = Path(tempfile.mkdtemp())
    config = resolve(preset, None, {"data": data, "max_steps": steps, "eval_every": 10**9, "val_size": 200, "patience": 0,
                                    "warmup_ratio": 0.0})
    splits = load_splits(config)
    columns = splits["train"].select_columns(["equation", "solution"]).to_dict()
    tokenizer = build_tokenizer(columns["equation"] + columns["solution"])
    rows = encode(tokenizer, splits["train"])
    tokens_per_row = sum(len(r["input_ids"]) + len(r["labels"]) for r in rows) / len(rows)
    device = torch.cuda.get_device_name(0) if cuda else f"{os.cpu_count()} cores, {torch.get_num_threads()} threads"
    result = {"machine": f"{platform.machine()}, {device}, torch {torch.__version__}", "preset": preset, "format": fmt,
              "steps": steps, "trainer_steps": trainer_steps, "real_tokens_per_row": round(tokens_per_row, 1)}
    skip = max(1, steps // 5)

    def report(name: str) -> None:
        click.echo(json.dumps({name: result[name]}), err=True)

    # --- training: ours, and compiled on a GPU
    for name, compiled in [("ours", "false")] + [("ours_compiled", "true")] * cuda:
        run = tmp / name
        run.mkdir()
        model = build_model(config, tokenizer)
        ours = dataclasses.replace(config, run_dir=str(run), compile=compiled)
        try:
            summary = engine.train(model, rows, [len(r["input_ids"]) + len(r["labels"]) for r in rows], collator(tokenizer.pad_token_id),
                                   lambda m: {"full_solution_accuracy": 0.0}, ours, run, progress=False)
        except Exception as err:  # a compiler failure is a result here, not the end of the benchmark
            if compiled == "false":
                raise
            result[name] = {"failed": f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"}
            report(name)
            continue
        log = engine.read_log(run)[0]
        logged = [(r["step"], r["tokens"], r["elapsed"]) for r in log]
        result[name] = {"batch_size": config.batch_size, "precision": summary["precision"], "compiled": summary["compiled"],
                        "seconds": summary["train_seconds"], "tokens_per_second": summary["train_tokens_per_second"],
                        **steady(logged, skip),
                        # the same training, so compiled and eager reach about the same loss
                        "mean_loss_last_fifth": round(sum(r["loss"] for r in log[-skip:]) / skip, 4)}
        report(name)

    # --- training: Seq2SeqTrainer, default arguments, at our batch size, and with bf16 on a GPU
    class StepClock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    train_set = datasets.Dataset.from_list(rows)
    variants = [("trainer_default", None, False), ("trainer_same_batch", config.batch_size, False)] + [("trainer_same_batch_bf16", config.batch_size, True)] * cuda
    for name, batch_size, bf16 in variants if trainer_steps else []:
        model = build_model(config, tokenizer)
        extra = {"per_device_train_batch_size": batch_size} if batch_size else {}
        args = Seq2SeqTrainingArguments(output_dir=str(tmp / name), max_steps=trainer_steps, report_to=[], save_strategy="no",
                                        disable_tqdm=True, seed=config.seed, bf16=bf16, **extra)
        clock = StepClock()
        trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train_set, callbacks=[clock],
                                 data_collator=DataCollatorForSeq2Seq(tokenizer, model=model))
        out = trainer.train()
        rows_per_step = args.per_device_train_batch_size
        seconds = out.metrics["train_runtime"]
        trainer_skip = max(1, trainer_steps // 5)
        result[name] = {"batch_size": rows_per_step, "bf16": bf16, "seconds": round(seconds, 2),
                        "tokens_per_second": round(trainer_steps * rows_per_step * tokens_per_row / seconds, 1),
                        "steady_tokens_per_second": round((trainer_steps - trainer_skip) * rows_per_step * tokens_per_row
                                                          / (clock.times[-1] - clock.times[trainer_skip - 1]), 1)}
        report(name)
    ours_runs = [result[o] for o in ("ours", "ours_compiled") if "tokens_per_second" in result.get(o, {})]
    for name, *_ in variants if trainer_steps else []:
        result.setdefault("speedup_best_ours_vs", {})[name] = {
            kind: round(max(o[kind] for o in ours_runs) / result[name][kind], 2) for kind in ("tokens_per_second", "steady_tokens_per_second")}

    # --- evaluation: our engine's weights, loaded as `cli.py eval` loads a run
    test = splits["test"].select(range(min(eval_rows, len(splits["test"]))))
    if eval_rows:
        model = AutoModelForSeq2SeqLM.from_pretrained(str(tmp / "ours" / engine.BEST), attn_implementation="eager")
        model.generation_config = generation_config(tokenizer, max(len(r["labels"]) for r in rows))
        model.to("cuda" if cuda else "cpu")
        for name, disable_compile in [("eval_ours", True)] + [("eval_ours_generate_compiled", False)] * generate_compiled:
            model.generation_config.disable_compile = disable_compile
            start = time.perf_counter()
            evaluate_rows(model, tokenizer, test, config.eval_batch_size)
            seconds = time.perf_counter() - start
            result[name] = {"rows": len(test), "seconds": round(seconds, 2), "rows_per_second": round(len(test) / seconds, 1),
                            "note": "includes grading every prediction with the sympy grader"}
            report(name)
    if eval_rows and trainer_eval_rows:
        part = test.select(range(min(trainer_eval_rows, len(test))))
        predict_args = Seq2SeqTrainingArguments(output_dir=str(tmp / "predict"), predict_with_generate=True, report_to=[], disable_tqdm=True)
        trainer = Seq2SeqTrainer(model=model, args=predict_args, data_collator=DataCollatorForSeq2Seq(tokenizer, model=model))
        start = time.perf_counter()
        trainer.predict(datasets.Dataset.from_list(encode(tokenizer, part)), max_new_tokens=model.generation_config.max_new_tokens)
        seconds = time.perf_counter() - start
        result["eval_trainer_predict"] = {"rows": len(part), "seconds": round(seconds, 2), "rows_per_second": round(len(part) / seconds, 1)}
        result["eval_speedup"] = round(result["eval_ours"]["rows_per_second"] / result["eval_trainer_predict"]["rows_per_second"], 2)
        report("eval_trainer_predict")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
