"""Benchmark the SQuAD path against a plain `Trainer` set up like Hugging Face's question-answering
example (`run_qa.py`: features padded to max_length, `default_data_collator`), in one run.

Same encoder (the packaged MiniLM-L6 if installed, else a small BERT built here), same articles of
the dev set (the first train, the next evaluate), same windows:
- training: N optimiser steps with `train.engine` (dynamic padding, length-grouped batches) and
  with `Trainer` (its default arguments but our batch size); real (non-padding) tokens per second;
- evaluation: `train.squad.predict` (dynamic padding, batches of eval_batch_size) against
  `Trainer.predict` on max_length-padded features followed by the same post-processing;
  questions per second.

Usage: python bench/bench_squad.py [--steps 30] [--train-articles 2] [--eval-articles 1]
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
DEV = ROOT.parent / "shared" / "data" / "squad" / "dev-v1.1.json"


@click.command()
@click.option("--model", default="minilm-l6-packaged", show_default=True, help="Model name or directory.")
@click.option("--steps", default=30, show_default=True)
@click.option("--batch-size", default=16, show_default=True)
@click.option("--train-articles", default=2, show_default=True)
@click.option("--eval-articles", default=1, show_default=True)
@click.option("--max-length", default=384, show_default=True)
def main(model, steps, batch_size, train_articles, eval_articles, max_length):
    import datasets
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, Trainer, TrainingArguments, default_data_collator

    from train import engine
    from train.config import resolve
    from train.squad import collator, model_path, predict
    from train.squad_data import Skipped, eval_features, examples_from, postprocess, read_squad, train_features

    engine.quiet_libraries()
    path = model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    _, articles = read_squad(DEV)
    train_rows = examples_from(articles[:train_articles], Skipped())
    eval_rows = examples_from(articles[train_articles : train_articles + eval_articles], Skipped())
    tmp = Path(tempfile.mkdtemp())
    config = resolve("squad", None, {"model_name": path, "run_dir": str(tmp / "ours"), "max_steps": steps, "eval_every": 10**9,
                                     "batch_size": batch_size, "max_length": max_length, "stride": 128, "patience": 0})
    dynamic = train_features(tokenizer, train_rows, max_length, 128)
    tokens_per_feature = sum(sum(f["attention_mask"]) for f in dynamic) / len(dynamic)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}", "model": model,
              "train_questions": len(train_rows), "train_windows": len(dynamic), "eval_questions": len(eval_rows), "steps": steps,
              "batch_size": batch_size, "max_length": max_length}

    # --- training
    (tmp / "ours").mkdir(parents=True)
    summary = engine.train(AutoModelForQuestionAnswering.from_pretrained(path), dynamic, [len(f["input_ids"]) for f in dynamic],
                           collator(tokenizer.pad_token_id), lambda m: {"f1": 0.0}, config, tmp / "ours", progress=False)
    result["ours_train_tokens_per_second"] = summary["train_tokens_per_second"]
    padded = datasets.Dataset.from_list(train_features(tokenizer, train_rows, max_length, 128, padding="max_length"))
    args = TrainingArguments(output_dir=str(tmp / "trainer"), max_steps=steps, per_device_train_batch_size=batch_size, report_to=[],
                             save_strategy="no", disable_tqdm=True, learning_rate=config.learning_rate)
    trainer = Trainer(model=AutoModelForQuestionAnswering.from_pretrained(path), args=args, train_dataset=padded,
                      data_collator=default_data_collator)
    seconds = trainer.train().metrics["train_runtime"]
    result["trainer_train_tokens_per_second"] = round(steps * batch_size * tokens_per_feature / seconds, 1)
    result["train_speedup"] = round(result["ours_train_tokens_per_second"] / result["trainer_train_tokens_per_second"], 2)

    # --- evaluation, the same (just fine-tuned) weights
    trained = trainer.model
    features = eval_features(tokenizer, eval_rows, max_length, 128)
    start = time.perf_counter()
    predict(trained, tokenizer, eval_rows, features, config, False)
    ours = time.perf_counter() - start
    padded_eval = eval_features(tokenizer, eval_rows, max_length, 128, padding="max_length")
    inputs = datasets.Dataset.from_list([{k: f[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in f} for f in padded_eval])
    predict_args = TrainingArguments(output_dir=str(tmp / "predict"), per_device_eval_batch_size=config.eval_batch_size, report_to=[],
                                     disable_tqdm=True)
    start = time.perf_counter()
    out = Trainer(model=trained, args=predict_args, data_collator=default_data_collator).predict(inputs)
    postprocess(eval_rows, padded_eval, out.predictions[0], out.predictions[1])
    theirs = time.perf_counter() - start
    result["ours_eval_questions_per_second"] = round(len(eval_rows) / ours, 1)
    result["trainer_eval_questions_per_second"] = round(len(eval_rows) / theirs, 1)
    result["eval_speedup"] = round(theirs / ours, 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
