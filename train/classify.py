"""The classification task: an encoder labels a text or a pair of texts (`cli.py train --task
classify`), with AutoModelForSequenceClassification on the shared engine.

Data (the classify keys of train/config.py):
    train_file, eval_file   CSV or JSONL with the columns text_column, label_column (strings or
                            integers) and, where present, text_pair_column; without eval_file,
                            eval_fraction of train_file is held out with the seed as the test split
    hub_dataset             NAME or NAME/CONFIG for datasets.load_dataset (online), e.g. glue/sst2;
                            its validation split is the test split
    otherwise               the quadratic dataset in `data` (`cli.py gen`): the equation alone,
                            labelled with its number of real roots (none, one, two)
    The validation split (early stopping, the best model) is val_size rows carved from the
    training rows with the seed (0: the training rows themselves).
Model: model_name, an encoder with its tokenizer (a local directory or a hub name), or, when it is
empty (the classify preset), an `encoder` (bert or deberta-v2) built from the config's sizes and
trained from scratch with a character tokenizer.

Run directory: the best model (its labels as id2label / label2id in config.json) and tokenizer,
config.yaml, environment.json, log.jsonl, training_curve.png, metrics.json (per split: accuracy,
macro-F1, per-label precision, recall and F1, the majority-class baseline) and predictions.jsonl
(text, label, predicted, probabilities).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import re
import shutil
from pathlib import Path

import torch

from analyze.attention import set_attention_implementation
from analyze.encoder import EncoderAnalysis, special_role, window_batch
from gen import QuadlabError, json_objects
from train import runs
from train.engine import releasing_run_dir
from train.config import TrainConfig
from train.metrics import ROOT_CLASSES, classification_metrics
from train.quadratic import EQUATION_ROLES, equation_roles

MODEL_FILES = ("config.json", "model.safetensors")
SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
TENSOR_KEYS = ("input_ids", "attention_mask", "token_type_ids")
SPLITS = ("train", "validation", "test")
TEXT_ROLES = ("[CLS]", "[SEP]", "punct", "text", "text_pair", "other")
# on the quadratic dataset the characters between [CLS] and [SEP] take the equation's roles
EQUATION_TOKEN_ROLES = ("[CLS]", "[SEP]") + tuple(r for r in EQUATION_ROLES if r != "</s>")


# ---------------------------------------------------------------------------------------------
# Data: rows {"text", "text_pair" (where the data has it), "label" (a name)}


def _rows(records, columns, config: TrainConfig, source: str, class_names=None) -> list[dict]:
    """Rows of `records` [(where, dict)], checked; `class_names` turns integer labels into names (a
    hub dataset's ClassLabel)."""
    fix = "name yours with --set text_column=NAME label_column=NAME (and text_pair_column=NAME for pairs)"
    missing = [c for c in (config.text_column, config.label_column) if c not in columns]
    if missing:
        raise QuadlabError(f"{source} has no column {' or '.join(map(repr, missing))} (its columns: {', '.join(map(str, columns)) or 'none'}); {fix}")
    pair = config.text_pair_column in columns
    if not pair and config.text_pair_column != TrainConfig.text_pair_column:  # named on purpose, so not optional
        raise QuadlabError(f"{source} has no column {config.text_pair_column!r} (its columns: {', '.join(map(str, columns))}); {fix}")
    rows = []
    for where, record in records:
        row = {}
        for key, column in (("text", config.text_column), ("text_pair", config.text_pair_column), ("label", config.label_column)):
            if key == "text_pair" and not pair:
                continue
            value = record.get(column)
            if class_names is not None and key == "label" and isinstance(value, int) and not isinstance(value, bool):
                if value < 0:  # an unlabelled row (GLUE's test splits)
                    break
                value = class_names[value]
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str) or (key == "label" and not value.strip()):
                what = "no" if value is None else "an empty" if value == "" else f"a {type(value).__name__} as its"
                raise QuadlabError(f"{source} {where} has {what} {column!r}; every row needs a text and a label (a string or an integer)")
            row[key] = value
        else:
            rows.append(row)
    if not rows:
        raise QuadlabError(f"{source} has no rows; give a file with a header line (CSV) or one JSON object per line (JSONL) and rows below")
    return rows


def read_file(path: Path, config: TrainConfig) -> list[dict]:
    """The rows of a CSV (with a header line) or JSONL file (one JSON object per line)."""
    kind = path.suffix.lower()
    if kind not in (".csv", ".jsonl"):
        raise QuadlabError(f"{path} is neither .csv nor .jsonl; give the data as a CSV file with a header line or a JSONL file")
    if not path.is_file():
        raise QuadlabError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise QuadlabError(f"{path} cannot be read as UTF-8 text ({runs.first_line(err)})") from None
    if not text.strip():
        raise QuadlabError(f"{path} is empty; give a CSV file with a header line or a JSONL file, and rows")
    if kind == ".csv":
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            records = [(f"row {reader.line_num}", r) for r in reader]
        except csv.Error as err:
            raise QuadlabError(f"{path} is not valid CSV ({err})") from None
        return _rows(records, reader.fieldnames or [], config, str(path))
    records = [(f"line {number}", record) for number, record in
               json_objects(text.splitlines(), str(path), 'a JSONL file holds one JSON object per line, e.g. {"text": "...", "label": "..."}')]
    return _rows(records, list(dict.fromkeys(k for _, r in records for k in r)), config, str(path))


def hold_out(rows: list[dict], count: int, seed: int, what: str) -> tuple[list[dict], list[dict]]:
    """(rest, held out): `count` rows drawn with the seed, both in file order."""
    if count >= len(rows):
        validation = what == "validation"  # held out of the rows that the test split left
        noun = ("training row" if validation else "row") + ("" if len(rows) == 1 else "s")
        raise QuadlabError(f"holding out {count} of {'the ' if validation else ''}{len(rows)} {noun} for {what} leaves none to train on; give more rows"
                           + (", or lower --set val_size=N" if validation else ", or an --eval-file"))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def _hub_rows(config: TrainConfig) -> tuple[dict, dict]:
    import datasets

    from train.squad import check_hub

    name, _, subset = config.hub_dataset.partition("/")
    check_hub(config.hub_dataset, "offline, give the data as a CSV or JSONL file with --train-file (and --eval-file), "
                                  "or drop hub_dataset to use the quadratic dataset")
    try:
        loaded = datasets.load_dataset(name, subset or None)
    except Exception as err:  # offline, an unknown name: whatever the library raises, in one line
        raise QuadlabError(f"cannot load {config.hub_dataset} from the hub ({runs.first_line(err)}); offline, give the data as a CSV or "
                           f"JSONL file with --train-file (and --eval-file), or drop hub_dataset to use the quadratic dataset") from None
    if "train" not in loaded:
        raise QuadlabError(f"{config.hub_dataset} has no train split (it has {', '.join(loaded)}); give --train-file instead")
    feature = loaded["train"].features.get(config.label_column)
    names = getattr(feature, "names", None)

    def rows(split):
        return _rows(((f"row {i}", r) for i, r in enumerate(loaded[split])), loaded[split].column_names, config,
                     f"{config.hub_dataset} ({split})", names)

    test_split = next((s for s in ("validation", "test") if s in loaded), None)
    train = rows("train")
    test = rows(test_split) if test_split else None
    if test is None:
        train, test = hold_out(train, max(1, round(config.eval_fraction * len(train))), config.seed, "the test split")
    return {"train": train, "test": test}, {"hub": config.hub_dataset, "test": test_split or f"{config.eval_fraction} of train held out"}


def label_order(names) -> list[str]:
    """Labels sorted as numbers when all are integers (2 before 10), else as text."""
    names = set(names)
    numeric = all(re.fullmatch(r"-?[0-9]+", n) for n in names)
    return sorted(names, key=int if numeric else None)


def reads_data(config: TrainConfig) -> bool:
    """Whether the run classifies the quadratic dataset's equations in config.data (no file or hub dataset given)."""
    return not config.train_file and not config.hub_dataset


def load_data(config: TrainConfig) -> dict:
    """{"train", "validation", "test": rows, "labels": names in id order, "majority": the most
    frequent training label, "pairs", "quadratic": whether the rows are the quadratic dataset's
    equations, "source"}."""
    quadratic = reads_data(config)
    if config.train_file:
        rows = read_file(Path(config.train_file), config)
        if config.eval_file:
            splits, source = {"train": rows, "test": read_file(Path(config.eval_file), config)}, {"train_file": config.train_file, "eval_file": config.eval_file}
        else:
            rest, test = hold_out(rows, max(1, round(config.eval_fraction * len(rows))), config.seed, "the test split")
            splits, source = {"train": rest, "test": test}, {"file": config.train_file, "test": f"{config.eval_fraction} held out with seed {config.seed}"}
    elif config.hub_dataset:
        splits, source = _hub_rows(config)
    else:
        from train.quadratic import load_splits

        loaded = load_splits(config)
        splits = {}
        for split in SPLITS:
            columns = loaded[split].select_columns(["equation", "num_roots"]).to_dict()
            splits[split] = [{"text": e, "label": ROOT_CLASSES[k]} for e, k in zip(columns["equation"], columns["num_roots"])]
        source = {"quadratic": config.data, "text": "equation", "label": "number of real roots"}
    if "validation" not in splits:
        if config.val_size:
            splits["train"], splits["validation"] = hold_out(splits["train"], config.val_size, config.seed, "validation")
        else:
            splits["validation"] = splits["train"]
    if len({"text_pair" in rows[0] for rows in splits.values()}) > 1:
        raise QuadlabError("the training rows and the test rows differ: one has text pairs, the other single texts; give both the same columns")
    labels = [ROOT_CLASSES[k] for k in sorted(ROOT_CLASSES)] if quadratic else label_order(r["label"] for s in SPLITS for r in splits[s])
    trained = {r["label"] for r in splits["train"]}
    if len(trained) < 2:
        raise QuadlabError(f"the training rows have {len(trained)} label(s) ({', '.join(map(repr, sorted(trained)))}); classification "
                           f"needs at least 2: check --set label_column=NAME, or give rows of other labels")
    counts = {label: 0 for label in labels}
    for row in splits["train"]:
        counts[row["label"]] += 1
    return {**splits, "labels": labels, "majority": max(labels, key=counts.get), "source": source, "quadratic": quadratic,
            "pairs": "text_pair" in splits["train"][0]}


# ---------------------------------------------------------------------------------------------
# Tokenizer, model, features


def character_tokenizer(data: dict):
    """One token per character of the training texts, and [PAD] [UNK] [CLS] [SEP] [MASK];
    [CLS] text [SEP] (text_pair [SEP])."""
    from train.quadratic import build_tokenizer

    texts = [r[k] for r in data["train"] for k in ("text", "text_pair") if k in r]
    return build_tokenizer(texts, SPECIAL_TOKENS, "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1",
                           model_input_names=["input_ids", "token_type_ids", "attention_mask"])  # BERT's segments of a pair


def label_keys(labels: list[str]) -> dict:
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)},
            "problem_type": "single_label_classification"}


def build_model(config: TrainConfig, tokenizer, labels: list[str]):
    """An encoder of `config.encoder` with the config's sizes, random (seeded)."""
    from transformers import BertConfig, BertForSequenceClassification, DebertaV2Config, DebertaV2ForSequenceClassification

    if config.d_model % config.num_heads:
        raise QuadlabError(f"d_model {config.d_model} is not a multiple of num_heads {config.num_heads}; pass sizes that divide")
    sizes = dict(vocab_size=len(tokenizer), hidden_size=config.d_model, num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
                 intermediate_size=config.d_ff, hidden_dropout_prob=config.dropout_rate, attention_probs_dropout_prob=config.dropout_rate,
                 max_position_embeddings=config.max_length, type_vocab_size=2, pad_token_id=tokenizer.pad_token_id, **label_keys(labels))
    if config.encoder == "bert":
        model_class, model_config = BertForSequenceClassification, BertConfig(**sizes)
    else:  # DeBERTa-v3's layout: disentangled attention over log-bucketed relative positions, no absolute ones
        model_class = DebertaV2ForSequenceClassification
        model_config = DebertaV2Config(relative_attention=True, position_buckets=256, max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
                                       position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True, **sizes)
    torch.manual_seed(config.seed)
    model = model_class(model_config)
    # sdpa to train on a GPU where the model has it; eager on CPU (faster for small models) and for
    # the analyses, which need the attention maps
    set_attention_implementation(model, "sdpa" if torch.cuda.is_available() and model._supports_sdpa else "eager")
    return model


def encode(tokenizer, rows: list[dict], max_length: int):
    """The tokenizer's encoding of the rows (texts, or pairs truncated longest first)."""
    pairs = [r["text_pair"] for r in rows] if "text_pair" in rows[0] else None
    return tokenizer([r["text"] for r in rows], pairs, truncation=True, max_length=max_length)


def features(tokenizer, rows: list[dict], max_length: int, labels: list[str] | None = None) -> list[dict]:
    """Tokenised rows {input_ids, attention_mask, token_type_ids (where the tokenizer gives them),
    labels (ids, when `labels` are given)}."""
    if not rows:
        return []
    encoded = encode(tokenizer, rows, max_length)
    out = [{k: encoded[k][i] for k in TENSOR_KEYS if k in encoded} for i in range(len(rows))]
    if labels is not None:
        index = {name: i for i, name in enumerate(labels)}
        for f, r in zip(out, rows):
            f["labels"] = index[r["label"]]
    return out


def collator(pad_id: int):
    def collate(rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        batch = {k: torch.tensor([r[k] + [pad_id if k == "input_ids" else 0] * (width - len(r[k])) for r in rows])
                 for k in TENSOR_KEYS if k in rows[0]}
        if "labels" in rows[0]:
            batch["labels"] = torch.tensor([r["labels"] for r in rows])
        return batch

    return collate


@torch.no_grad()
def predict(model, rows: list[dict], pad_id: int, batch_size: int, around=None, progress: bool = False) -> torch.Tensor:
    """Probabilities (N, labels) of tokenised rows, from batched forward passes sorted by length;
    `around(row indices, width)`, when given, is the context each batch runs in (key blocking)."""
    from tqdm import tqdm

    model.eval()
    device = next(model.parameters()).device
    collate = collator(pad_id)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out = torch.zeros(len(rows), model.config.num_labels)
    for start in tqdm(range(0, len(order), batch_size), desc="classify", unit="batch", disable=None if progress else True, leave=False):
        idx = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([rows[j] for j in idx]).items() if k != "labels"}
        with around(idx, batch["input_ids"].shape[1]) if around else contextlib.nullcontext():
            logits = model(**batch).logits
        out[idx] = logits.float().softmax(dim=-1).cpu()
    return out


def scored(probabilities: torch.Tensor, rows: list[dict], labels: list[str], majority: str) -> tuple[dict, list[dict]]:
    """Metrics and one record per row (text, label, predicted, probabilities)."""
    predicted = [labels[i] for i in probabilities.argmax(dim=1).tolist()]
    records = [{**{k: r[k] for k in ("text", "text_pair") if k in r}, "label": r["label"], "predicted": p,
                "probabilities": {name: round(float(x), 6) for name, x in zip(labels, probs)}}
               for r, p, probs in zip(rows, predicted, probabilities)]
    return classification_metrics([r["label"] for r in rows], predicted, majority), records


# ---------------------------------------------------------------------------------------------
# Runs


@releasing_run_dir
def train_run(config: TrainConfig, resume: bool = False, overwrite: bool = False, stop_after_steps: int | None = None, progress: bool = True,
              deadline: float | None = None, evaluate_by: float | None = None) -> dict | None:
    """Train, keep the best model (by validation `metric_for_best`) in the run directory, evaluate
    it on the test split; the metrics (None on the other processes of a multi-process run)."""
    from transformers import AutoModelForSequenceClassification

    from train import engine
    from train.squad import load_encoder

    engine.quiet_libraries()
    data = load_data(config)  # data and model before the run directory: a refusal leaves nothing behind
    labels = data["labels"]
    if config.model_name:
        torch.manual_seed(config.seed)  # the new classification head
        model, tokenizer = load_encoder(config, AutoModelForSequenceClassification, ignore_mismatched_sizes=True, **label_keys(labels))
        if tokenizer.pad_token_id is None:
            raise QuadlabError(f"the tokenizer of {config.model_name} has no padding token; give an encoder whose tokenizer pads (BERT, DeBERTa, RoBERTa)")
    else:
        tokenizer = runs.load_tokenizer(config.resolved_run_dir()) if resume else character_tokenizer(data)
        model = build_model(config, tokenizer, labels)
    run_dir = engine.prepare_run_dir(config, resume, overwrite)
    if not resume:
        engine.on_main(lambda: tokenizer.save_pretrained(str(run_dir)))
    train_set = features(tokenizer, data["train"], config.max_length, labels)
    validation_set = features(tokenizer, data["validation"], config.max_length)

    def evaluate(model_to_evaluate) -> dict:
        probabilities = predict(model_to_evaluate, validation_set, tokenizer.pad_token_id, config.eval_batch_size)
        metrics, _ = scored(probabilities, data["validation"], labels, data["majority"])
        return {k: metrics[k] for k in ("accuracy", "macro_f1")}

    summary = engine.train(model, train_set, [len(f["input_ids"]) for f in train_set], collator(tokenizer.pad_token_id), evaluate,
                           config, run_dir, resume=resume, stop_after_steps=stop_after_steps, progress=progress, deadline=deadline, evaluate_by=evaluate_by)
    if summary is None:  # not the main process of a multi-process run: that one alone evaluates and writes
        return None
    for name in MODEL_FILES:  # the best model becomes the run's model
        shutil.copyfile(run_dir / engine.BEST / name, run_dir / name)
    if config.best_model_path:
        shutil.copytree(run_dir / engine.BEST, config.best_model_path, dirs_exist_ok=True)
        tokenizer.save_pretrained(config.best_model_path)
    engine.plot_curve(run_dir, config.metric_for_best)
    _, evals = engine.read_log(run_dir)
    best = next((e["eval"] for e in evals if e["step"] == summary["best_step"]), None)
    engine.write_json(run_dir / "metrics.json", {"training": summary, "validation_best": best, "labels": labels, "data": data["source"]})
    return evaluate_run(run_dir, limit=config.eval_limit, batch_size=config.eval_batch_size, progress=progress)


def metric_lines(run_dir, metrics: dict, split: str) -> list[str]:
    """What `train` and `eval` print."""
    m = metrics[split]
    return [f"{run_dir} {split} ({m['n']} rows): accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} "
            f"(majority class {m['majority_class']}: accuracy {m['majority_baseline']:.4f})",
            "  F1 by label: " + ", ".join(f"{name} {v['f1']:.4f} (n {v['n']})" for name, v in m["by_label"].items())]


def evaluate_run(run_dir: Path, split: str = "test", limit: int = 0, batch_size: int | None = None, num_beams: int = 0, progress: bool = True,
                 out_dir: Path | None = None, data: str | Path | None = None, beams_below: float | None = None) -> dict:
    """Classify the first `limit` rows (0: all) of `split` with a run's model: metrics.json (under
    the split) and predictions.jsonl (predictions-<split>.jsonl for other splits) in out_dir
    (default: the run). `num_beams` and `beams_below` do not apply to a classifier."""
    from train import engine

    run_dir = Path(run_dir)
    model, tokenizer, config = load_run(run_dir, data=data)
    loaded = load_data(config)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    rows = loaded[split][: limit or None]
    unknown = sorted({r["label"] for r in rows} - set(labels))
    if unknown:
        raise QuadlabError(f"the {split} rows have labels that {run_dir}'s model does not know ({', '.join(map(repr, unknown[:5]))}); "
                           f"its data changed since training: restore it, or train again")
    path = Path(out_dir or run_dir) / "metrics.json"
    everything = json.loads(path.read_text()) if path.exists() else {}
    runs.guard_fuller_result(run_dir, out_dir, limit, (everything.get(split) or {}).get("n"), len(rows), f"{split} result")
    if torch.cuda.is_available():
        model = model.to("cuda")
    probabilities = predict(model, features(tokenizer, rows, config.max_length), tokenizer.pad_token_id, batch_size or config.eval_batch_size,
                            progress=progress)
    metrics, records = scored(probabilities, rows, labels, loaded["majority"])
    out = engine.output_dir(out_dir or run_dir)
    everything[split] = metrics
    engine.write_json(path, everything)
    engine.write_jsonl(out / ("predictions.jsonl" if split == "test" else f"predictions-{split}.jsonl"), records)
    return everything


def load_run(run_dir: Path, command: str = "eval", data: str | Path | None = None):
    """(model, tokenizer, config) of a finished classification run, or a one-line error (train/runs.py)."""
    return runs.load_run(run_dir, command, task="classify", data=data)


# ---------------------------------------------------------------------------------------------
# Analysis (the interface in train/tasks.py)


def token_roles(tokenizer, tokens: list[str], sequence_ids: list, equation: bool) -> list[str]:
    """[CLS], [SEP] and punct (analyze/encoder.py), text or text_pair; on equations the parts of the
    equation (train/quadratic.py) for the characters between [CLS] and [SEP]."""
    if equation:
        parts = iter(equation_roles([t for t, s in zip(tokens, sequence_ids) if s is not None]))
        return [special_role(t, None, tokenizer) if s is None else next(parts) for t, s in zip(tokens, sequence_ids)]
    return [special_role(t, s, tokenizer) or ("text" if s == 0 else "text_pair") for t, s in zip(tokens, sequence_ids)]


def windows(tokenizer, rows: list[dict], max_length: int, equation: bool) -> list[dict]:
    """Tokenised rows with their tokens, sequence ids and roles (analyze.encoder.window_batch)."""
    if not rows:
        return []
    encoded = encode(tokenizer, rows, max_length)
    out = []
    for i, ids in enumerate(encoded["input_ids"]):
        tokens, sequence_ids = tokenizer.convert_ids_to_tokens(ids), encoded.sequence_ids(i)
        out.append({**{k: encoded[k][i] for k in TENSOR_KEYS if k in encoded}, "tokens": tokens, "sequence_ids": sequence_ids,
                    "roles": token_roles(tokenizer, tokens, sequence_ids, equation)})
    return out


class Analysis(EncoderAnalysis):
    """The split's texts; classes: the gold label. Special symbols: [CLS], [SEP] and punctuation
    (Clark et al. 2019's finding for BERT); on the quadratic dataset [CLS], [SEP] and the
    equation's x, ^, = (the prior study's hypothesis), against its digits."""

    name = "classify"
    roles = {"encoder": TEXT_ROLES}
    symbols = ("[CLS]", "[SEP]", "punct")
    control_roles, control_name = ("text", "text_pair"), "text tokens"
    metrics = ("accuracy", "macro_f1")
    class_name = "label"
    inputs = ("text", "text_pair")
    averaged_on = "the split's texts (of pairs: text, then text_pair)"
    attended = [("[CLS] attends most to", "encoder", ("[CLS]",), None)]

    def __init__(self, run_dir: Path, command: str, split: str | None = "test", limit: int = 0, eval_limit: int = 0,
                 data: str | Path | None = None):
        self.model, self.tokenizer, self.config = load_run(run_dir, command, data)
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        if split is None and reads_data(self.config):  # given equations only: single texts; the dataset need not be here
            loaded = {"majority": None, "quadratic": True, "pairs": False}
        else:  # a file's rows say whether the model reads pairs
            loaded = load_data(self.config)
        self.majority, self.equation = loaded["majority"], loaded["quadratic"]
        if self.equation:
            self.roles = {"encoder": EQUATION_TOKEN_ROLES}
            self.symbols, self.control_roles, self.control_name = ("[CLS]", "[SEP]", "x", "^", "="), ("a", "b", "c"), "digits"
            self.averaged_on = "the split's equations"
        if not loaded["pairs"]:
            self.inputs = ("text",)
        rows = loaded[split] if split is not None else []
        self.rows, self.eval_rows = rows[: limit or None], rows[:eval_limit]
        self.split, self.n_rows, self.n_eval_rows = split, len(self.rows), len(self.eval_rows)

    def windows_of(self, rows: list[dict]) -> list[dict]:
        return windows(self.tokenizer, rows, self.config.max_length, self.equation)

    def batches(self, batch_size: int):
        found = self.windows_of(self.rows)
        order = sorted(range(len(found)), key=lambda i: len(found[i]["input_ids"]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield {**window_batch([found[i] for i in idx], self.roles["encoder"], self.tokenizer.pad_token_id),
                   "classes": [self.rows[i]["label"] for i in idx], "rows": idx}

    def probe_targets(self) -> dict:
        """What `cli.py probe` decodes from the hidden states: the gold label of each analysed row."""
        return {"label": [row["label"] for row in self.rows]}

    def example(self, index: int | None = None, given: dict | None = None) -> dict:
        """The predicted label, with the probabilities of every label, of a row of the split or of
        a given text (on equation runs an equation, written as the dataset writes it)."""
        if given is not None:
            text, pair, gold = given.get("text") or "", given.get("text_pair"), {}
            if not text.strip():
                raise QuadlabError("the text is empty; give the text to classify")
            if self.equation:
                from gen.equations import write_equation
                from gen.grader import GradeError, parse_equation, real_root_count

                try:
                    a, b, c = parse_equation(text)
                except GradeError as err:
                    raise QuadlabError(f"cannot read the equation: {err}") from None
                text = write_equation(a, b, c)  # `x^2 - 5x + 6 = 0` -> 1x^2-5x+6=0, as trained
                gold = {"label": ROOT_CLASSES[real_root_count(a, b, c)]}  # as the dataset labels it
            row, name = {"text": text, **({"text_pair": pair} if pair is not None else {}), **gold}, "given"
        else:
            row, name = self.rows[index], str(index)
        window = self.windows_of([row])[0]
        probabilities = predict(self.model, [window], self.tokenizer.pad_token_id, 1)[0]
        predicted = self.labels[int(probabilities.argmax())]
        shown = row["text"] + (f" | {row['text_pair']}" if "text_pair" in row else "")
        return {"name": name, "input": shown, "output": predicted,
                "batch": window_batch([window], self.roles["encoder"], self.tokenizer.pad_token_id),
                "answer": {"label": predicted, "gold": row.get("label"),
                           "probabilities": {n: round(float(p), 6) for n, p in zip(self.labels, probabilities)}}}

    @staticmethod
    def answer_lines(result: dict) -> list[str]:
        answer = result["answer"]
        probabilities = ", ".join(f"{name} {p:.3f}" for name, p in answer["probabilities"].items())
        true = "" if answer.get("gold") is None else f"true: {answer['gold']}; "
        lines = [f"label: {answer['label']} ({true}probabilities: {probabilities})"]
        for label, layers in result["attended"].items():
            lines += [f"layer {layer}: {label} {token}" for layer, token in enumerate(layers)]
        return lines

    def gradient_batches(self, batch_size: int) -> list[dict]:
        found = features(self.tokenizer, self.rows, self.config.max_length, self.labels)
        collate = collator(self.tokenizer.pad_token_id)
        return [{"inputs": collate(found[i : i + batch_size])} for i in range(0, len(found), batch_size)]

    def row_losses(self, model, batch: dict) -> torch.Tensor:
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in batch["inputs"].items()}
        labels = inputs.pop("labels")
        return torch.nn.functional.cross_entropy(model(**inputs).logits.float(), labels, reduction="none")

    def evaluate(self, model, gates: dict | None = None, blocked: tuple | None = None) -> dict:
        from analyze import interventions

        found = self.windows_of(self.eval_rows)

        def around(indices, width):
            return self.blocking(model, blocked, [found[j]["roles"] for j in indices], width)

        with interventions.gated(model, gates or {}):
            probabilities = predict(model, found, self.tokenizer.pad_token_id, self.config.eval_batch_size, around if blocked else None)
        metrics, _ = scored(probabilities, self.eval_rows, self.labels, self.majority)
        return {k: metrics[k] for k in self.metrics}
