"""Benchmark the training engine and the evaluator against a plain `Seq2SeqTrainer`, in one run.

Same model (a preset, same seed), same tokenised data:
- training: N optimiser steps with `train.engine` (our batch size, length-grouped batches) and with
  `Seq2SeqTrainer` (default arguments, `DataCollatorForSeq2Seq` dynamic padding; its default batch
  size is 8), plus the Trainer at our batch size for a like-for-like view. Throughput is real
  (non-padding) input + label tokens per second of training time (evaluation excluded).
- evaluation: the test rows decoded with `train.quadratic.evaluate_rows` (batched greedy, sorted by
  length, static key-value cache) and with `Seq2SeqTrainer.predict(predict_with_generate=True)`
  (default evaluation batch size 8). Throughput is rows per second.

Usage: python bench/bench_train.py [--data data/quadratic] [--steps 60] [--eval-rows 1000]
"""

from __future__ import annotations

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


@click.command()
@click.option("--data", default="data/quadratic", show_default=True, help="Dataset from cli.py gen (made if missing).")
@click.option("--preset", default="tiny", show_default=True)
@click.option("--steps", default=60, show_default=True, help="Optimiser steps for each trainer.")
@click.option("--eval-rows", default=1000, show_default=True, help="Test rows decoded by each evaluator.")
def main(data, preset, steps, eval_rows):
    import datasets
    import torch
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from gen.dataset import GenOptions, generate
    from train import engine
    from train.config import resolve
    from train.quadratic import build_model, build_tokenizer, collator, encode, evaluate_rows, load_splits

    engine.quiet_libraries()
    if not Path(data, "dataset_dict.json").exists():
        generate(GenOptions(), Path(data), workers=os.cpu_count() or 1)
    tmp = Path(tempfile.mkdtemp())
    config = resolve(preset, None, {"data": data, "run_dir": str(tmp / "ours"), "max_steps": steps, "eval_every": 10**9,
                                    "val_size": 200, "patience": 0, "warmup_ratio": 0.0})
    splits = load_splits(config)
    columns = splits["train"].select_columns(["equation", "solution"]).to_dict()
    tokenizer = build_tokenizer(columns["equation"] + columns["solution"])
    rows = encode(tokenizer, splits["train"])
    tokens_per_row = sum(len(r["input_ids"]) + len(r["labels"]) for r in rows) / len(rows)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
              "preset": preset, "steps": steps}

    # --- training: ours
    model = build_model(config, tokenizer)
    (tmp / "ours").mkdir(parents=True)
    summary = engine.train(model, rows, [len(r["input_ids"]) + len(r["labels"]) for r in rows], collator(tokenizer.pad_token_id),
                           lambda m: {"full_solution_accuracy": 0.0}, config, tmp / "ours", progress=False)
    result["ours"] = {"batch_size": config.batch_size, "tokens_per_second": summary["train_tokens_per_second"],
                      "seconds": summary["train_seconds"]}

    # --- training: Seq2SeqTrainer, default arguments (and at our batch size)
    train_set = datasets.Dataset.from_list(rows)
    for name, batch_size in (("trainer_default", None), ("trainer_same_batch", config.batch_size)):
        model = build_model(config, tokenizer)
        extra = {"per_device_train_batch_size": batch_size} if batch_size else {}
        args = Seq2SeqTrainingArguments(output_dir=str(tmp / name), max_steps=steps, report_to=[], save_strategy="no",
                                        disable_tqdm=True, seed=config.seed, **extra)
        trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train_set,
                                 data_collator=DataCollatorForSeq2Seq(tokenizer, model=model))
        out = trainer.train()
        rows_seen = steps * args.per_device_train_batch_size
        seconds = out.metrics["train_runtime"]
        result[name] = {"batch_size": args.per_device_train_batch_size, "seconds": round(seconds, 2),
                        "tokens_per_second": round(rows_seen * tokens_per_row / seconds, 1)}
    result["train_speedup_vs_trainer_default"] = round(result["ours"]["tokens_per_second"] / result["trainer_default"]["tokens_per_second"], 2)
    result["train_speedup_vs_trainer_same_batch"] = round(result["ours"]["tokens_per_second"] / result["trainer_same_batch"]["tokens_per_second"], 2)

    # --- evaluation: the same trained weights, the same test rows
    test = splits["test"].select(range(min(eval_rows, len(splits["test"]))))
    model.generation_config.max_new_tokens = max(len(r) for r in tokenizer(list(test["solution"]))["input_ids"]) + 16
    model.generation_config.decoder_start_token_id = tokenizer.pad_token_id
    model.set_attn_implementation("eager")
    start = time.perf_counter()
    evaluate_rows(model, tokenizer, test, config.eval_batch_size)
    ours_seconds = time.perf_counter() - start
    predict_args = Seq2SeqTrainingArguments(output_dir=str(tmp / "predict"), predict_with_generate=True, report_to=[], disable_tqdm=True)
    trainer = Seq2SeqTrainer(model=model, args=predict_args, data_collator=DataCollatorForSeq2Seq(tokenizer, model=model))
    start = time.perf_counter()
    trainer.predict(datasets.Dataset.from_list(encode(tokenizer, test)), max_new_tokens=model.generation_config.max_new_tokens)
    trainer_seconds = time.perf_counter() - start
    result["eval_rows"] = len(test)
    result["eval_ours_rows_per_second"] = round(len(test) / ours_seconds, 1)
    result["eval_ours_note"] = "includes grading every prediction with the sympy grader"
    result["eval_trainer_predict_rows_per_second"] = round(len(test) / trainer_seconds, 1)
    result["eval_speedup"] = round(trainer_seconds / ours_seconds, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
