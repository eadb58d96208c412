"""The quadratic task: a T5 learns to write worked solutions (`cli.py train --task quadratic`,
`cli.py eval`).

Run directory (`runs/quadratic-<preset>-seed<seed>` by default):
    config.json, model.safetensors, generation_config.json   the best model (AutoModelForSeq2SeqLM)
    tokenizer.json, tokenizer_config.json                      the character tokenizer (AutoTokenizer)
    config.yaml        the resolved training configuration (cli.py train --config config.yaml redoes it)
    environment.json   package versions, device, command line
    dataset-card.json  the card.json of the dataset it was trained on (the gen options, for the command that remakes it)
    log.jsonl          one line per step and per evaluation; training_curve.png
    metrics.json       validation and test metrics; predictions.jsonl, one line per test equation
    checkpoint/, best/ the state for --resume, the best model while training
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from analyze.attention import padded, segments, set_attention_implementation
from gen import QuadlabError, json_objects
from train import runs
from train.engine import releasing_run_dir
from train.config import TrainConfig
from train.metrics import diagnosis, judge, quadratic_metrics, statement_names

DATASET_CARD = "dataset-card.json"  # in a run: the card.json of the dataset it was trained on
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2: T5 starts decoding with the pad id
MODEL_FILES = ("config.json", "model.safetensors", "generation_config.json")
COLUMNS = ("equation", "solution", "a", "b", "c", "num_roots")  # what `cli.py gen` writes


# ---------------------------------------------------------------------------------------------
# Data and tokenizer


def recorded_options(card: Path):
    """The `cli.py gen` options a dataset card records, or None where it cannot be read (a run
    trained before 2026-12-06 has no DATASET_CARD, nor has a dataset cut with `select` a card.json)."""
    from gen.dataset import GenOptions

    try:
        return GenOptions.from_dict(json.loads(Path(card).read_text())["options"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, QuadlabError):
        return None


def load_splits(config: TrainConfig, run_dir: Path | None = None):
    """train / validation (`val_size` rows carved from train; 0: the training rows themselves,
    for overfitting checks) / test, checked to be a dataset that `cli.py gen` writes; for a
    trained run (`run_dir`), in the format it was trained on, and where it is gone, the command
    that makes it again."""
    import datasets

    path = Path(config.data)
    elsewhere = "or point --data at one (`train --resume`: the `data:` line of the run's config.yaml)"
    trained_on = recorded_options(Path(run_dir) / DATASET_CARD) if run_dir else None
    written_with = recorded_options(path / "card.json")  # None where there is none: gone, or a dataset cut with `select`
    if not path.exists():
        remake = (f"make it with `{trained_on.command(path)}` (the options of the dataset {run_dir} was trained on, from its "
                  f"{DATASET_CARD}), {elsewhere}" if trained_on else
                  f"make it with `python cli.py gen --out {path}` and the options it was made with (the same options give "
                  f"the same rows), {elsewhere}")
    elif (path / "card.json").is_file():  # written by `cli.py gen`, then damaged: safe to replace, with the options it had
        made_with = trained_on or written_with
        remake = f"make it again with `{made_with.command(path) if made_with else f'python cli.py gen --out {path}'} --overwrite`, {elsewhere}"
    else:  # something else, which a hint must not tell anyone to overwrite
        remake = "point --data at a directory made by `python cli.py gen --out DIR` (`train --resume`: the `data:` line of the run's config.yaml)"
    if not path.is_dir():
        why = "it is a file" if path.exists() else "it does not exist"
        raise QuadlabError(f"no quadratic dataset at {path} ({why}); {remake}")
    if not (path / "dataset_dict.json").is_file():
        why = "one split saved alone" if (path / "state.json").exists() else "no dataset_dict.json in it"
        raise QuadlabError(f"{path} is not a dataset from `cli.py gen` ({why}); {remake}")
    try:
        dd = datasets.load_from_disk(str(path))
        for name in ("train", "test"):
            missing = [c for c in COLUMNS if name in dd and c not in dd[name].column_names]
            if name not in dd or missing or not len(dd[name]):
                why = (f"no {name} split" if name not in dd else f"its {name} split lacks {', '.join(missing)}" if missing
                       else f"its {name} split is empty")
                raise QuadlabError(f"{path} is not a dataset from `cli.py gen` ({why}); {remake}")
    except QuadlabError:
        raise
    except Exception as err:  # a damaged directory: whatever the library raises, said in one line
        raise QuadlabError(f"the dataset at {path} is damaged: it cannot be loaded ({type(err).__name__}); {remake}") from None
    if trained_on and written_with and written_with.format != trained_on.format:  # every grade and map would mix two formats
        same_rows = dataclasses.replace(written_with, format=trained_on.format)
        raise QuadlabError(f"the solutions in {path} are in the {written_with.format} format, but {run_dir} was trained on "
                           f"{trained_on.format}; point --data at a {trained_on.format} "
                           f"dataset, e.g. its equations in that format: `{same_rows.command(path.with_name(path.name + '-' + trained_on.format))}`")
    if config.val_size == 0:
        return datasets.DatasetDict({"train": dd["train"], "validation": dd["train"], "test": dd["test"]})
    if config.val_size >= len(dd["train"]):
        raise QuadlabError(f"val_size {config.val_size} leaves no training rows (train has {len(dd['train'])}); "
                           f"pass a smaller --set val_size=N")
    carved = dd["train"].train_test_split(test_size=config.val_size, seed=config.seed)
    return datasets.DatasetDict({"train": carved["train"], "validation": carved["test"], "test": dd["test"]})


def build_tokenizer(texts, special_tokens: dict | None = None, single: str = "$A </s>", pair: str | None = None, **options):
    """One token per character of the data (digits, symbols, letters), plus the special tokens
    {name: token} first (default SPECIAL_TOKENS as pad, eos, unk); `single` and `pair` are
    the templates that add them around one text and a pair (train/classify.py: [CLS] ... [SEP]);
    `options` go to PreTrainedTokenizerFast (saved with it)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special_tokens = special_tokens or dict(zip(("pad_token", "eos_token", "unk_token"), SPECIAL_TOKENS))
    chars = sorted(set().union(*texts) - set(special_tokens.values()))  # no set per text: 960,000 of them took 1 GB
    vocab = {token: i for i, token in enumerate(special_tokens.values())}
    vocab.update({ch: len(vocab) + i for i, ch in enumerate(chars)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token=special_tokens["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()  # characters back into one string, no spaces
    templates = single + " " + (pair or "")
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=[
        (token, vocab[token]) for token in special_tokens.values() if token in templates.replace(":1", "").split()])
    return PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens, **options)


def encode(tokenizer, dataset, chunk: int = 2_000):
    """input_ids (equation </s>) and labels (solution </s>) of every row, as small integer arrays.
    Encoded a chunk at a time, into one byte a token: all rows at once, as the tokenizer's lists of
    Python ints, took 160 bytes a token, 29 GB for the 480,000 reversed rows of a GPU recipe."""
    dtype = np.uint8 if len(tokenizer) <= 256 else np.int32
    texts, rows = dataset.select_columns(["equation", "solution"]), []
    for start in range(0, len(dataset), chunk):
        columns = texts[start : start + chunk]  # a slice is a dict of lists; it stops at the last row
        inputs = tokenizer(columns["equation"], return_attention_mask=False)["input_ids"]
        labels = tokenizer(columns["solution"], return_attention_mask=False)["input_ids"]
        rows += [{"input_ids": np.asarray(i, dtype), "labels": np.asarray(l, dtype)} for i, l in zip(inputs, labels)]
    return rows


def collator(pad_id: int):
    def collate(rows: list[dict]) -> dict:
        width_in = max(len(r["input_ids"]) for r in rows)
        width_out = max(len(r["labels"]) for r in rows)
        input_ids = torch.full((len(rows), width_in), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width_out), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r["input_ids"])] = torch.as_tensor(r["input_ids"])
            labels[i, : len(r["labels"])] = torch.as_tensor(r["labels"])
        return {"input_ids": input_ids, "attention_mask": (input_ids != pad_id).long(), "labels": labels}

    return collate


def build_model(config: TrainConfig, tokenizer):
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5Config(
        vocab_size=len(tokenizer), d_model=config.d_model, d_ff=config.d_ff, d_kv=config.d_kv,
        num_layers=config.num_layers, num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
        dropout_rate=config.dropout_rate, feed_forward_proj=config.feed_forward_proj,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )  # transformers 5 always ties T5's input and output embeddings
    torch.manual_seed(config.seed)
    # sdpa (fused attention kernels) to train on a GPU; eager on CPU, where it is faster for these
    # small models; analyses load runs with eager, which returns attention maps
    model = T5ForConditionalGeneration(t5)
    set_attention_implementation(model, "sdpa" if torch.cuda.is_available() else "eager")
    return model


ARCHITECTURE = ("d_model", "d_ff", "d_kv", "num_layers", "num_decoder_layers", "num_heads", "feed_forward_proj",
                "relative_attention_num_buckets", "relative_attention_max_distance")  # T5Config's names too


INIT_FROM_FIX = "give a quadratic run directory or a GPU job's unpacked run/ with model.safetensors in it"


def check_init_from(init_from: str) -> Path:
    """The directory `init_from` names, if it holds a model's files (a cheap check a job makes
    before generating its data)."""
    path = Path(init_from)
    files = ("config.json", "model.safetensors", "tokenizer.json")
    if not all((path / name).is_file() for name in files):
        raise QuadlabError(f"init_from {path} holds no trained model ({', '.join(files)}); {INIT_FROM_FIX}")
    return path


def trained_start(config: TrainConfig, texts: list[str]):
    """(config with the architecture of the model in `config.init_from`, that model in float32,
    its tokenizer), checked to be a quadratic T5 whose tokenizer writes every character of `texts`."""
    from dataclasses import replace

    from transformers import T5ForConditionalGeneration

    path = check_init_from(config.init_from)
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        raise QuadlabError(f"init_from {path}: its config.json cannot be read ({runs.first_line(err)}); {INIT_FROM_FIX}") from None
    if model_type != "t5":
        raise QuadlabError(f"init_from {path} holds a {model_type} model, not the T5 of a quadratic run; {INIT_FROM_FIX}")
    tokenizer = runs.load_tokenizer(path)
    missing = sorted(set().union(*texts) - set(tokenizer.get_vocab()))
    if missing:
        raise QuadlabError(f"init_from {path}: its tokenizer lacks characters of this data ({''.join(missing[:20])!r}); "
                           f"start from a model trained on data of the same --format")
    try:  # a GPU job's weights come back in bfloat16: training goes on in float32
        model = T5ForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32, dropout_rate=config.dropout_rate)
    except Exception as err:  # whatever a damaged file raises inside the library
        raise QuadlabError(f"init_from {path}: its model cannot be loaded ({runs.first_line(err)}); {INIT_FROM_FIX}") from None
    if model.config.vocab_size != len(tokenizer):
        raise QuadlabError(f"init_from {path}: its model has {model.config.vocab_size} token embeddings and its tokenizer "
                           f"{len(tokenizer)} tokens; {INIT_FROM_FIX}")
    set_attention_implementation(model, "sdpa" if torch.cuda.is_available() else "eager")  # as build_model
    return replace(config, **{key: getattr(model.config, key) for key in ARCHITECTURE}), model, tokenizer


def generation_config(tokenizer, longest: int):
    """Greedy decoding of up to 16 tokens more than the longest training solution (`longest`)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        decoder_start_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_new_tokens=longest + 16, do_sample=False,
        # generate() would compile the model on a GPU for the static cache, again as the batch
        # shape changes (input width, batch size): tens of seconds each, for one pass of decoding
        disable_compile=True,
    )


# ---------------------------------------------------------------------------------------------
# Decoding and evaluation


def _input_batches(tokenizer, equations: list[str], rows_per_batch: int, device, progress: bool):
    """The equations in batches sorted by input length, padded: (their indices, input_ids)."""
    from tqdm import tqdm

    encoded = tokenizer(equations)["input_ids"]
    order = sorted(range(len(equations)), key=lambda i: len(encoded[i]))
    for start in tqdm(range(0, len(order), rows_per_batch), desc="decode", unit="batch", disable=None if progress else True, leave=False):
        idx = order[start : start + rows_per_batch]
        input_ids = torch.full((len(idx), max(len(encoded[i]) for i in idx)), tokenizer.pad_token_id, dtype=torch.long)
        for row, i in enumerate(idx):
            input_ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
        yield idx, input_ids.to(device)


@torch.no_grad()
def decode(model, tokenizer, equations: list[str], batch_size: int, num_beams: int = 1, progress: bool = False) -> list[list[str]]:
    """Candidates for each equation: greedy (one) or the beams, best first. Batched, sorted by
    input length, with the key-value cache."""
    from train.kv_cache import cache_arguments

    model.eval()
    out: list[list[str]] = [[] for _ in equations]
    per_row = max(1, num_beams)
    for idx, input_ids in _input_batches(tokenizer, equations, max(1, batch_size // per_row), model.device, progress):
        generated = model.generate(
            input_ids=input_ids, attention_mask=(input_ids != tokenizer.pad_token_id).long(),
            do_sample=False, num_beams=per_row, num_return_sequences=per_row,
            **cache_arguments(model, greedy=per_row == 1),
        )
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        for row, i in enumerate(idx):
            out[i] = texts[row * per_row : (row + 1) * per_row]
    return out


@torch.no_grad()
def decode_greedy(model, tokenizer, equations: list[str], batch_size: int, progress: bool = False) -> tuple[list[str], list[float]]:
    """Greedy outputs (as `decode`'s) and, for each, `least_sure`: the lowest probability the model
    gave a token of it, its </s> included. The model's own doubt about its solution, known without
    a grader: below 0.7 it flags 93% of the best model's failures in 12% of the rows (RESULTS.md,
    "At the first wrong token"), where `eval --beams-below` spends its beams."""
    from train.kv_cache import cache_arguments

    model.eval()
    texts: list[str] = [""] * len(equations)
    least_sure: list[float] = [1.0] * len(equations)
    for idx, input_ids in _input_batches(tokenizer, equations, batch_size, model.device, progress):
        generated = model.generate(
            input_ids=input_ids, attention_mask=(input_ids != tokenizer.pad_token_id).long(), do_sample=False, num_beams=1,
            output_logits=True, return_dict_in_generate=True, **cache_arguments(model, greedy=True),
        )
        tokens = generated.sequences[:, 1:]  # after the decoder start token: what each step wrote
        chosen = torch.stack(generated.logits, 1).float().softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
        ends = (tokens == tokenizer.eos_token_id).long()
        written = (ends.cumsum(1) - ends) == 0  # up to and with the first </s>; the padding after it was not chosen
        lowest = chosen.masked_fill(~written, 1.0).min(1).values.tolist()
        for row, (i, text) in enumerate(zip(idx, tokenizer.batch_decode(generated.sequences, skip_special_tokens=True))):
            texts[i], least_sure[i] = text, lowest[row]
    return texts, least_sure


def rerank_with_grader(rows, candidates: list[list[str]]) -> list[str]:
    """The most likely beam that the grader fully accepts, else the most likely beam."""
    from gen.grader import grade

    chosen = []
    for (a, b, c), beams in zip(rows, candidates):
        # one candidate (a row eval --beams-below decoded greedily only) is chosen ungraded
        chosen.append(beams[0] if len(beams) == 1 else next((text for text in beams if grade(a, b, c, text).ok), beams[0]))
    return chosen


def beam_metrics(records: list[dict], candidates: list[list[str]]) -> tuple[dict, list[str]]:
    """The metrics of K beams per row (records: a, b, c, target, num_roots, and `judge`'s grades of
    their `prediction`, which a beam of the same text reuses): of the most likely beam, and of the
    beam the grader reranks first; and that beam's text for each row. A row decoded greedily only
    (`eval --beams-below`) has its greedy output as its one candidate."""
    coefficients = [(r["a"], r["b"], r["c"]) for r in records]
    reranked = rerank_with_grader(coefficients, candidates)
    num_roots = [r["num_roots"] for r in records]

    def metrics(texts: list[str]) -> dict:
        return quadratic_metrics([r if t == r["prediction"] else judge(a, b, c, r["target"], t)
                                  for (a, b, c), r, t in zip(coefficients, records, texts)], num_roots)

    k = max(len(beams) for beams in candidates)
    return {f"beam{k}_most_likely": metrics([beams[0] for beams in candidates]), f"beam{k}_grader_reranked": metrics(reranked)}, reranked


def graded_metrics(records: list[dict]) -> dict:
    """The greedy metrics and the diagnosis of judged records (evaluate_rows, regrade)."""
    return {"greedy": quadratic_metrics(records, [r["num_roots"] for r in records]), "diagnosis": diagnosis(records)}


def evaluate_rows(model, tokenizer, dataset, batch_size: int, num_beams: int = 0, progress: bool = False,
                  beams_below: float | None = None) -> tuple[dict, list[dict]]:
    """Metrics and one record per row, with its greedy output's `least_sure` (decode_greedy). With
    num_beams > 1 also the beams, the most likely first, and the metrics of the most likely beam
    and of the beams reranked by the grader; with `beams_below`, beams only for the rows whose
    least_sure is below it, the others keeping their greedy output (`beams_on` says how many)."""
    start = time.perf_counter()
    columns = dataset.to_dict()
    greedy, least_sure = decode_greedy(model, tokenizer, columns["equation"], batch_size, progress)
    coefficients = list(zip(columns["a"], columns["b"], columns["c"]))
    records = []
    for (a, b, c), eq, target, pred, k, sure in zip(coefficients, columns["equation"], columns["solution"], greedy, columns["num_roots"], least_sure):
        records.append({"equation": eq, "a": a, "b": b, "c": c, "target": target, "prediction": pred, "num_roots": k,
                        **judge(a, b, c, target, pred), "least_sure": round(sure, 5)})
    greedy_seconds = round(time.perf_counter() - start, 2)
    metrics = {**graded_metrics(records), "greedy_seconds": greedy_seconds}
    if num_beams > 1:
        start = time.perf_counter()
        unsure = [i for i, sure in enumerate(least_sure) if beams_below is None or sure < beams_below]
        decoded = decode(model, tokenizer, [columns["equation"][i] for i in unsure], batch_size, num_beams, progress) if unsure else []
        for i, beams in zip(unsure, decoded):
            records[i]["beams"] = beams
        candidates = [record.get("beams", [record["prediction"]]) for record in records]
        found, reranked = beam_metrics(records, candidates) if unsure else ({}, greedy)
        for record, text in zip(records, reranked):
            if "beams" in record:
                record["prediction_beam_reranked"] = text
        metrics.update(found, beam_seconds=round(time.perf_counter() - start, 2))
        if beams_below is not None:
            metrics["beams_on"] = {"rows": len(unsure), "least_sure_below": beams_below}
    return metrics, records


# ---------------------------------------------------------------------------------------------
# Runs


@releasing_run_dir
def train_run(config: TrainConfig, resume: bool = False, overwrite: bool = False, stop_after_steps: int | None = None, progress: bool = True,
              deadline: float | None = None, evaluate_by: float | None = None) -> dict | None:
    """Train, keep the best model in the run directory, evaluate it on the test split; the metrics
    (None on the processes other than the main one of a multi-process run). `stop_after_steps`
    and `deadline` stop training with a checkpoint, `evaluate_by` the test after it (engine.train)."""
    from train import engine

    # before the run directory: a missing dataset leaves nothing behind
    splits = load_splits(config, config.resolved_run_dir() if resume else None)
    model = None
    if not resume:
        columns = splits["train"].select_columns(["equation", "solution"]).to_dict()
        if config.init_from:  # its architecture goes into config.yaml, which a resumed run builds from
            config, model, tokenizer = trained_start(config, columns["equation"] + columns["solution"])
        else:
            tokenizer = build_tokenizer(columns["equation"] + columns["solution"])
    run_dir = engine.prepare_run_dir(config, resume, overwrite)
    if resume:
        tokenizer = runs.load_tokenizer(run_dir)
    else:
        def save() -> None:  # every process has the same tokenizer
            tokenizer.save_pretrained(str(run_dir))
            card = Path(config.data) / "card.json"
            if recorded_options(card):  # what the run was trained on, for the analyses once the dataset is gone
                engine.write_json(run_dir / DATASET_CARD, json.loads(card.read_text()))

        engine.on_main(save)

    train_rows = encode(tokenizer, splits["train"])
    if model is None:
        model = build_model(config, tokenizer)
    model.generation_config = generation_config(tokenizer, max(len(r["labels"]) for r in train_rows))

    def evaluate(model_to_evaluate) -> dict:
        metrics, _ = evaluate_rows(model_to_evaluate, tokenizer, splits["validation"], config.eval_batch_size)
        # the per-statement accuracies give each step its learning curve in diagnosis.png
        statements = {name: m["accuracy"] for name, m in metrics["diagnosis"]["statement_accuracy"].items()}
        holds = {name: m["rate"] for name, m in metrics["diagnosis"]["statement_holds"].items()}
        return {**{k: v for k, v in metrics["greedy"].items() if k != "by_num_roots"}, "statements": statements, "holds": holds}

    summary = engine.train(
        model, train_rows, [len(r["input_ids"]) + len(r["labels"]) for r in train_rows], collator(tokenizer.pad_token_id),
        evaluate, config, run_dir, resume=resume, stop_after_steps=stop_after_steps, progress=progress, deadline=deadline, evaluate_by=evaluate_by,
    )
    if summary is None:  # not the main process of a multi-process run: that one alone evaluates and writes
        return None
    for name in MODEL_FILES:  # the best model becomes the run's model
        shutil.copyfile(run_dir / engine.BEST / name, run_dir / name)
    engine.plot_curve(run_dir, config.metric_for_best)
    _, evals = engine.read_log(run_dir)
    best = next((e["eval"] for e in evals if e["step"] == summary["best_step"]), None)
    start = next((e["eval"] for e in evals if e["step"] == 0), None)  # init_from's weights
    engine.write_json(run_dir / "metrics.json", {"training": summary, "validation_best": best, **({"validation_start": start} if start else {})})
    return evaluate_run(run_dir, limit=config.eval_limit, batch_size=config.eval_batch_size, num_beams=config.num_beams, progress=progress)


WORK_STEP = re.compile(r"(.+) work (\d+)(: .+)?")  # "sqrt(D) work 3: value": a step of a decomposed format


def work_collapsed(values: dict[str, float], counts: dict[str, int] | None = None, total: bool = False) -> list[tuple[str, float, str]]:
    """(name, value, note) for the console: a statement's work steps ("D work 3: value", ...) as one
    entry ("D work 1-12: value") with their lowest value, its step and (given `counts`) its rows, or
    with `total` their sum and the step that adds most; other statements as they are. Decomposed
    formats have dozens of steps, too many for a line; metrics.json and diagnosis.png keep each."""
    groups: dict = {}
    for name, value in values.items():
        found = WORK_STEP.fullmatch(name)
        key = (found.group(1), found.group(3) or "") if found else name
        groups.setdefault(key, []).append((int(found.group(2)) if found else 0, value, name))
    out = []
    for key, steps in groups.items():
        if isinstance(key, str):
            out.append((key, steps[0][1], ""))
            continue
        first, last = min(s[0] for s in steps), max(s[0] for s in steps)
        span = f"{key[0]} work {first}{'' if first == last else f'-{last}'}{key[1]}"
        if total:
            step, most, _ = max(steps, key=lambda s: s[1])
            out.append((span, sum(s[1] for s in steps), f" (most at step {step}: {most:.3f})"))
        else:
            step, lowest, name = min(steps, key=lambda s: s[1])
            rows = f" of {counts[name]} rows" if counts else ""
            out.append((span, lowest, f" (lowest: step {step}{rows})"))
    return out


def metric_lines(run_dir, metrics: dict, split: str) -> list[str]:
    """What `train` and `eval` print: the metrics of each decoding, by root count, and the diagnosis."""
    found, lines = metrics[split], []
    for name, m in found.items():
        if isinstance(m, dict) and "full_solution_accuracy" in m:
            parts = [f"{k.replace('_', ' ')} {m[k]:.4f}" for k in ("full_solution_accuracy", "character_accuracy", "roots_accuracy", "valid_steps_rate")]
            lines.append(f"{run_dir} {split} ({found['rows']} rows, {name}): " + ", ".join(parts))
            by = ", ".join(f"{k} {v['full_solution_accuracy']:.4f}" for k, v in m["by_num_roots"].items() if v["n"])
            lines.append(f"  full-solution accuracy by root count: {by}")
            if name.startswith("beam") and "beams_on" in found:
                lines.append(f"  beams on the {found['beams_on']['rows']} rows whose least sure token is below "
                             f"{found['beams_on']['least_sure_below']}, greedy on the others")
    diagnosed = found.get("diagnosis")
    if diagnosed and diagnosed["n"]:
        def joined(entries):
            return ", ".join(f"{name} {value:.3f}{note}" for name, value, note in entries)

        accuracy = diagnosed["statement_accuracy"]
        statements = joined(work_collapsed({k: v["accuracy"] for k, v in accuracy.items()}, {k: v["n"] for k, v in accuracy.items()}))
        lines.append(f"  greedy, each statement right: {statements}")
        if diagnosed.get("statement_holds"):
            holding = diagnosed["statement_holds"]
            holds = joined(work_collapsed({k: v["rate"] for k, v in holding.items()}, {k: v["n"] for k, v in holding.items()}))
            lines.append(f"  each statement a true equality, whatever its operands (well-formed outputs): {holds}")
        first = joined(sorted(work_collapsed(diagnosed["first_wrong"], total=True), key=lambda entry: -entry[1]))
        lines.append(f"  first statement to go wrong: {first} (diagnosis.png; each step in metrics.json)")
    return lines


def plot_diagnosis(run_dir: Path, diagnosed: dict, name: str = "diagnosis.png", out_dir: Path | None = None) -> Path:
    """Which step limits the model: accuracy of each statement and where outputs first go wrong;
    accuracy by the digits of |D|; and each statement's validation accuracy along training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from train import engine

    _, evals = engine.read_log(run_dir)
    curves = [e for e in evals if "statements" in e["eval"]]
    names = list(diagnosed["statement_accuracy"])
    fig, axes = plt.subplots(1, 3 if curves else 2, figsize=(17 if curves else 11, max(4.2, 0.16 * len(names) + 1.2)))
    axes[0].barh(names, [diagnosed["statement_accuracy"][n]["accuracy"] for n in names], color="tab:blue", label="statement right")
    axes[0].barh(names, [diagnosed["first_wrong"].get(n, 0) for n in names], color="tab:red", height=0.4, label="first wrong here")
    holds = diagnosed.get("statement_holds", {})
    held = [(f"{k}: value", v["rate"]) for k, v in holds.items() if f"{k}: value" in names]
    if held:  # on the value's row: a step learned is true even where its operands were copied wrong
        axes[0].plot([rate for _, rate in held], [names.index(row) for row, _ in held], "k|", markersize=9,
                     label="true equality, whatever its operands")
    axes[0].invert_yaxis()
    axes[0].set(xlim=(0, 1), xlabel="share of outputs", title=f"Statements ({diagnosed['n']} outputs)")
    axes[0].legend(loc="lower right", fontsize=8)
    by_d = diagnosed["by_digits_of_D"]
    digits_d = list(by_d)
    for key, label in (("full_solution_accuracy", "full solution"), ("roots_accuracy", "roots")):
        axes[1].plot(digits_d, [by_d[d][key] for d in digits_d], marker="o", label=label)
    for statement in ("D: value", "sqrt(D)", "sqrt(D): value"):
        if statement in names:
            axes[1].plot(digits_d, [by_d[d]["statements"].get(statement, {}).get("accuracy", float("nan")) for d in digits_d],
                         marker=".", ls="--", label=statement)
    axes[1].set(ylim=(0, 1.02), xlabel="digits of |D|", ylabel="accuracy", title="By the size of D")
    axes[1].legend(fontsize=8)
    if curves:
        steps = [e["step"] for e in curves]
        # the named statements' values (scratch steps are in the left panel), and the answer
        for statement in dict.fromkeys(n for e in curves for n in e["eval"]["statements"]):
            if " work " not in statement and not statement.endswith(": formula"):
                axes[2].plot(steps, [e["eval"]["statements"].get(statement, float("nan")) for e in curves], marker=".", label=statement)
        axes[2].set(ylim=(0, 1.02), xlabel="step", ylabel="validation accuracy", title="Each statement's value along training")
        axes[2].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(out_dir or run_dir) / name
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def reads_data(config: TrainConfig) -> bool:
    """A quadratic run's rows always come from config.data (train/tasks.py)."""
    return True


def load_run(run_dir: Path, command: str = "eval", data: str | Path | None = None):
    """(model, tokenizer, config) of a finished quadratic run, or a one-line error (train/runs.py)."""
    return runs.load_run(run_dir, command, task="quadratic", data=data)


def evaluate_run(run_dir: Path, split: str = "test", limit: int = 0, batch_size: int | None = None, num_beams: int = 0, progress: bool = True,
                 out_dir: Path | None = None, data: str | Path | None = None, beams_below: float | None = None) -> dict:
    """Decode a split with the run's model; write metrics.json (the split's entry), predictions.jsonl
    and diagnosis.png into out_dir (default: the run). `beams_below`: evaluate_rows."""
    from train import engine

    run_dir = Path(run_dir)
    model, tokenizer, config = load_run(run_dir, data=data)
    if torch.cuda.is_available():
        model = model.to("cuda")
    dataset = load_splits(config, run_dir)[split]
    if limit:
        dataset = dataset.select(range(min(limit, len(dataset))))
    metrics_path = Path(out_dir or run_dir) / "metrics.json"
    everything = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    runs.guard_fuller_result(run_dir, out_dir, limit, (everything.get(split) or {}).get("rows"), len(dataset), f"{split} result")
    metrics, records = evaluate_rows(model, tokenizer, dataset, batch_size or config.eval_batch_size, num_beams, progress, beams_below)
    out = engine.output_dir(out_dir or run_dir)
    everything[split] = {"rows": len(dataset), "decoding": "greedy, batched, sorted by input length, key-value cache", **metrics}
    engine.write_json(metrics_path, everything)
    engine.write_jsonl(out / ("predictions.jsonl" if split == "test" else f"predictions-{split}.jsonl"), records)
    if records:
        plot_diagnosis(run_dir, metrics["diagnosis"], "diagnosis.png" if split == "test" else f"diagnosis-{split}.png", out)
    return everything


def tested_groups(run_dir: Path) -> tuple[dict, int, dict] | str:
    """The run's test equations grouped as `like_it` compares a given one, {size_class: [rows,
    solved]}, the rows read, and the outputs grouped as `as_sure` compares one, {tenth of their
    least_sure: [rows, solved]} (empty where the rows have none), from eval's predictions
    (predictions.jsonl, or the .gz that tracked results keep); where there are none, the reason."""
    from gen.grader import GradeError, parse_equation

    found = [p for p in (Path(run_dir) / "predictions.jsonl", Path(run_dir) / "predictions.jsonl.gz") if p.is_file()]
    if not found:
        return f"not known: the run has no predictions.jsonl (`cli.py eval {run_dir}` writes it)"
    try:
        rows = read_predictions(found[0])
    except QuadlabError as err:
        return f"not known: {err}"
    groups, read, sure = {}, 0, {}
    for row in rows:
        try:
            a, b, c = parse_equation(row["equation"] if isinstance(row.get("equation"), str) else "")
        except GradeError:
            continue
        solved = row.get("exact") is True
        for count in [groups.setdefault(size_class(a, b, c), [0, 0])] + (
                [sure.setdefault(sure_tenth(row["least_sure"]), [0, 0])] if isinstance(row.get("least_sure"), (int, float)) else []):
            count[0] += 1
            count[1] += solved
        read += 1
    return groups, read, sure


def sure_tenth(least_sure: float) -> int:
    """Which tenth of [0, 1] a least_sure falls in: 0 for [0, 0.1), ..., 9 for [0.9, 1]."""
    return min(9, max(0, int(least_sure * 10)))


def as_sure(tested: tuple[dict, int, dict] | str, least_sure: float) -> str:
    """How often the run's test outputs were right where the model was as unsure of them: those
    whose least_sure falls in the same tenth as a given output's (RESULTS.md, "At the first wrong
    token": below 0.7 the best model's outputs fail in half the rows, above it in 0.5%)."""
    if isinstance(tested, str):
        return tested
    _, read, sure = tested
    if not sure:
        return "not known: the run's predictions have no least_sure (eval records it since 2026-12-07: `cli.py eval RUN` again)"
    tenth = sure_tenth(least_sure)
    low, high = tenth / 10, (tenth + 1) / 10
    n, solved = sure.get(tenth, (0, 0))
    span = f"from {low:.1f} to {high:.1f}" + (" (included)" if tenth == 9 else "")
    if n == 0:
        return f"none of the {read:,} test outputs the run was evaluated on had its least sure token {span}, as this one"
    return f"{n:,} of the {read:,} test outputs the run was evaluated on had their least sure token {span}, as this one; it solved {solved:,} of them ({solved / n:.3f})"


def size_class(a: int, b: int, c: int) -> tuple[int, int]:
    """(real roots, digits of |D|, or of |b| where D = 0): what `like_it` matches on."""
    from gen.grader import real_root_count
    from train.metrics import digits

    d = b * b - 4 * a * c
    return real_root_count(a, b, c), digits(d if d else b)


def like_it(tested: tuple[dict, int, dict] | str, a: int, b: int, c: int, ranges=None) -> str:
    """How the run did on its test equations with as many real roots as a given one and as many
    digits of |D| (of |b| where D = 0): the models learn the lengths of the numbers they were
    trained on (RESULTS.md, "Outside the training ranges"), so one equation's outcome reads against
    these. First, whether the generator could have drawn it at all (from `ranges`, the run's, where
    known)."""
    from gen.equations import outside_generator

    why = outside_generator(a, b, c, ranges)
    if why:
        return f"unlike every equation the run was trained and tested on: {why}"
    if isinstance(tested, str):
        return tested
    groups, read, _ = tested
    roots, size = size_class(a, b, c)
    kind = {2: "two real roots and a |D|", 1: "one real root (D = 0) and a |b|", 0: "no real roots and a |D|"}[roots]
    kind += f" of {size} digit{'s' if size > 1 else ''}"
    n, solved = groups.get((roots, size), (0, 0))
    if n == 0:
        return f"none of the {read:,} test equations the run was evaluated on has {kind}, as this one: it was not tested on such equations"
    return f"{n:,} of the {read:,} test equations the run was evaluated on have {kind}, as this one; it solved {solved:,} of them ({solved / n:.3f})"


def reference(a: int, b: int, c: int, fmt: str) -> str | None:
    """The reference solution of a given equation in `fmt`, or None for an equation the datasets
    never hold (`outside_generator`): most formats write none for it."""
    from gen.equations import outside_generator, write_solution

    return None if outside_generator(a, b, c) else write_solution(a, b, c, fmt)


def first_wrong(target: str, solution: str, answer_correct: bool) -> str:
    """Where a solution first parts from its reference `target` (as `diagnose` names statements),
    with both statements: the place to look at in the maps."""
    from train.metrics import diagnose, statement_names, statements

    name = diagnose(target, solution, answer_correct)["first_wrong"]
    if name is None:
        return "nothing: the solution is the reference's" if solution == target else "nothing that the statements show"
    base, names, ref, pred = name.split(": ")[0], statement_names(target), statements(target), statements(solution)
    if base not in names:  # the published format's sqrt(D), judged inside x1's formula
        return name
    i = names.index(base)
    whole = base == "answer"  # the final answer's statements together
    wrote = None if i >= len(pred) else ";".join(pred[i:]) if whole else pred[i]
    want = ";".join(ref[i:]) if whole else ref[i]
    return f"{name}, statement {i + 1}: " + (f"the model wrote `{wrote}`, the reference `{want}`" if wrote is not None else
                                             f"the solution ends before it (the reference: `{want}`)")


def solution_probabilities(model, batch: dict) -> torch.Tensor:
    """The model's next-token probabilities at each decoder position of the first solution in a
    teacher-forced batch (positions x vocabulary)."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(**{k: v.to(device) for k, v in batch["inputs"].items()}).logits[0].float().softmax(-1).cpu()


def least_sure_token(model, tokenizer, batch: dict, solution: str, ended: bool = True) -> dict:
    """Where the model was least sure of its own solution (teacher-forced in `batch`): the position
    of the lowest probability it gave a token it wrote (`least_sure`, as `eval` records it), the
    token, that probability, the statement it is in, and the model's other choice there. A solution
    that the token budget cut off (`ended` false) has no </s> of the model's to count."""
    probabilities = solution_probabilities(model, batch)
    labels = batch["labels"][0]
    counted = labels.clone()
    if not ended:
        counted[len(solution)] = -100
    written = probabilities[torch.arange(len(labels)), labels.clamp(min=0)].masked_fill(counted < 0, 1.0)
    t = int(written.argmin())
    other = probabilities[t].clone()
    other[labels[t]] = -1.0
    number = solution[:t].count(";")  # the statement the token is in, from 0; past the last one: </s>
    statement = solution.split(";")[number] if t < len(solution) else None
    return {"position": t, "token": tokenizer.convert_ids_to_tokens(int(labels[t])), "p": float(written[t]),
            "statement": None if statement is None else number + 1, "statement_text": statement,
            "other": tokenizer.convert_ids_to_tokens(int(other.argmax())), "p_other": float(other.max())}


def first_wrong_token(model, tokenizer, batch: dict, target: str, solution: str) -> dict:
    """The first position where a solution (teacher-forced in `batch`) parts from its reference,
    the two tokens there (</s> where one ends) and the probabilities the model gave them, with the
    reference token's rank among the model's choices: a near miss that a beam could mend, or a
    confident error. One token per character, so the decoder position that writes character i
    (from 0) is i: its input is the start token and the characters before."""
    t = next((i for i, (x, y) in enumerate(zip(solution, target)) if x != y), min(len(solution), len(target)))
    probabilities = solution_probabilities(model, batch)[t]
    wrote = int(batch["labels"][0, t])  # the solution's token at t, </s> where it ends
    want = tokenizer.convert_tokens_to_ids(target[t]) if t < len(target) else tokenizer.eos_token_id
    return {"position": t, "wrote": tokenizer.convert_ids_to_tokens(wrote), "reference": tokenizer.convert_ids_to_tokens(want),
            "p_wrote": float(probabilities[wrote]), "p_reference": float(probabilities[want]),
            "reference_rank": int((probabilities > probabilities[want]).sum()) + 1}


# ---------------------------------------------------------------------------------------------
# Grading saved outputs again (`cli.py grade`)

GRADES = ("num_roots", "exact", "char_accuracy", "roots_correct", "steps_valid")  # what a row of predictions.jsonl records
TOLERANCE = 1e-9  # a mean recomputed in another order differs in the last bits


def read_predictions(path: Path) -> list[dict]:
    """The rows of eval's predictions.jsonl, gzipped when the name ends `.gz`, or a one-line error."""
    import gzip

    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as lines:
            rows = [row for _, row in json_objects(lines, str(path), "give eval's predictions.jsonl")]
    except FileNotFoundError:
        raise QuadlabError(f"{path} does not exist; give eval's predictions.jsonl (or .jsonl.gz)") from None
    except IsADirectoryError:
        raise QuadlabError(f"{path} is a directory; give the predictions.jsonl in it") from None
    except (OSError, EOFError, UnicodeDecodeError) as err:  # gzip's BadGzipFile is an OSError
        raise QuadlabError(f"{path} cannot be read ({type(err).__name__}); give eval's predictions.jsonl, or a .gz of it") from None
    if not rows:
        raise QuadlabError(f"{path} has no rows; give eval's predictions.jsonl")
    return rows


def regrade(rows: list[dict], fmt: str | None, source: str) -> list[dict]:
    """Judge each row's output again: `prediction`, or in a compact row (`exact` true, no output)
    the reference. The reference is the row's `target`, else the solution of `fmt` for its equation.
    Each record has the row's coefficients, reference and output (a compact row made whole again:
    the scripts of figures/results/ read tracked predictions through it), and the row's K `beams`
    if `eval --num-beams K` wrote them (with --beams-below, only on some rows)."""
    from tqdm import tqdm

    from gen.equations import write_solution
    from gen.grader import MAX_SOLUTION_CHARS, GradeError, parse_equation, real_root_count

    records = []
    counted = None  # the number of beams of the first row that has them
    for number, row in enumerate(tqdm(rows, desc="grade", unit="row", disable=None), 1):
        where = f"{source} line {number}"
        try:
            a, b, c = parse_equation(row.get("equation") if isinstance(row.get("equation"), str) else "")
        except GradeError as err:
            raise QuadlabError(f"{where}: no equation that can be read ({err}); each row needs `equation`, e.g. 2x^2-3x+1=0") from None
        target = row.get("target")
        if target is None:
            if fmt is None:
                raise QuadlabError(f"{where} has no `target`; give the format its references are written in: --format NAME")
            target = write_solution(a, b, c, fmt)
        prediction = row.get("prediction")
        if prediction is None and row.get("exact") is True:  # compact: the output only where it is wrong
            prediction = target
        beams = row.get("beams", [])
        if not isinstance(beams, list) or len(beams) == 1:
            raise QuadlabError(f"{where}: `beams` is not a list of two or more solutions (what eval --num-beams K writes)")
        for name, text in (("target", target), ("prediction", prediction), *(("beams", beam) for beam in beams)):
            if not isinstance(text, str) or len(text) > MAX_SOLUTION_CHARS:
                raise QuadlabError(f"{where}: `{name}` is not a solution of at most {MAX_SOLUTION_CHARS} characters "
                                   f"(a row without `prediction` needs `exact`: true)")
        if beams and counted not in (None, len(beams)):
            raise QuadlabError(f"{where} has {len(beams)} beams, an earlier line {counted}; "
                               f"every row of one evaluation has the same number, or none (`eval --beams-below`: decoded greedily only)")
        counted = counted or (len(beams) if beams else None)
        records.append({"equation": row["equation"], "a": a, "b": b, "c": c, "target": target, "prediction": prediction,
                        "num_roots": real_root_count(a, b, c), **judge(a, b, c, target, prediction), **({"beams": beams} if beams else {})})
    return records


def _differences(recorded, graded, where: str) -> list[str]:
    """Where two metrics (nested dicts of numbers) disagree beyond TOLERANCE."""
    if isinstance(recorded, dict) and isinstance(graded, dict):
        out = []
        for key in dict.fromkeys([*recorded, *graded]):
            if key not in graded or key not in recorded:
                out.append(f"{where}.{key}: {'recorded' if key in recorded else 'graded'} only")
            else:
                out += _differences(recorded[key], graded[key], f"{where}.{key}")
        return out
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (recorded, graded))
    if recorded == graded or numbers and abs(recorded - graded) <= TOLERANCE:
        return []
    return [f"{where}: recorded {recorded}, graded {graded}"]


def row_differences(rows: list[dict], records: list[dict]) -> list[str]:
    """The grades recorded in the rows that the records do not give again."""
    out = []
    for number, (row, record) in enumerate(zip(rows, records), 1):
        for key in GRADES:
            if key in row and _differences(row[key], record[key], key):
                out.append(f"line {number} ({row['equation']}): {key} recorded {json.dumps(row[key])}, graded {json.dumps(record[key])}")
    return out


def metrics_differences(recorded: dict, graded: dict, entry: str) -> list[str]:
    """The metrics.json entry's metrics (greedy, beams) and diagnosis against those graded again."""
    return [line for key in graded if key in recorded for line in _differences(recorded[key], graded[key], f"{entry}.{key}")]


def compact(row: dict, record: dict) -> dict:
    """A row as tracked results keep it: the equation and its grades, the output only where it is
    wrong, its least_sure, and the beams (from which the grader's choice among them follows)."""
    return {"equation": row["equation"], **{k: record[k] for k in GRADES}, **({} if record["exact"] else {"prediction": row["prediction"]}),
            **{k: row[k] for k in ("least_sure",) if k in row}, **({"beams": record["beams"]} if "beams" in record else {})}


def _json_object(path: Path) -> dict:
    """A JSON object file beside the predictions (metrics.json, dataset-card.json), {} when absent."""
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise QuadlabError(f"{path} cannot be read as JSON ({type(err).__name__}); repair it or move it aside") from None
    metrics = path.name == "metrics.json"  # an object of entries, one per split
    if not isinstance(value, dict) or metrics and not all(isinstance(v, dict) for v in value.values()):
        raise QuadlabError(f"{path} is not what eval and gen write (a JSON object{' of entries' if metrics else ''}); repair it or move it aside")
    return value


def write_rows(path: Path, rows: list[dict]) -> None:
    """JSON lines, gzipped when the name ends `.gz` (with no time stamp: the same rows give the same bytes)."""
    import gzip

    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw:
        with (gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.name.endswith(".gz") else raw) as out:
            out.write("".join(json.dumps(row) + "\n" for row in rows).encode())
    os.replace(tmp, path)


def grade_file(path: Path, fmt: str | None = None, out_dir: Path | None = None, compact_rows: bool = False) -> tuple[list[str], list[str]]:
    """`cli.py grade`: the outputs in eval's predictions file graded again, compared with the grades
    its rows record and with the entry of metrics.json beside it that its name names
    (predictions.jsonl: test, predictions-NAME.jsonl: NAME); with `out_dir`, the rows and that entry
    rewritten there with the new grades. (report lines, differences)."""
    from train import engine

    path = Path(path)
    rows = read_predictions(path)
    stem = path.name.removesuffix(".gz").removesuffix(".jsonl")
    entry = "test" if stem == "predictions" else stem.removeprefix("predictions-")
    if fmt is None:
        from gen.equations import FORMATS

        fmt = _json_object(path.parent / DATASET_CARD).get("format")
        if fmt is not None and fmt not in FORMATS:
            raise QuadlabError(f"{path.parent / DATASET_CARD} names no format this lab writes ({fmt!r}); give --format NAME")
    # the files beside and in out_dir are read first: a damaged one is refused before minutes of grading
    metrics_path = path.parent / "metrics.json"
    recorded = _json_object(metrics_path).get(entry)
    everything = _json_object(Path(out_dir) / "metrics.json") if out_dir is not None else {}
    records = regrade(rows, fmt, str(path))
    graded = graded_metrics(records)
    differences = row_differences(rows, records)
    if any("beams" in record for record in records):
        found, reranked = beam_metrics(records, [record.get("beams", [record["prediction"]]) for record in records])
        graded.update(found)
        for number, (row, record, text) in enumerate(zip(rows, records, reranked), 1):
            if "beams" not in record:
                continue
            record["prediction_beam_reranked"] = text
            if row.get("prediction_beam_reranked", text) != text:
                differences.append(f"line {number} ({row['equation']}): prediction_beam_reranked is not the beam the grader accepts first")
    lines = metric_lines(path, {entry: {"rows": len(rows), **graded}}, entry)
    if recorded is None:
        lines.append(f"  (no entry {entry!r} in a metrics.json beside it: only the grades in its rows were compared)")
    else:
        differences += metrics_differences(recorded, graded, f"metrics.json {entry}")
    if differences:
        lines.append(f"  graded again, it disagrees with what it records in {len(differences)} places:")
        lines += [f"    {line}" for line in differences[:20]] + ([f"    ... and {len(differences) - 20} more"] if len(differences) > 20 else [])
    else:
        lines.append(f"  graded again, every grade recorded in its {len(rows)} rows"
                     f"{'' if recorded is None else f' and in metrics.json {entry!r}'} is given again")
    if out_dir is not None:
        out = engine.output_dir(out_dir)
        if compact_rows:
            written = [compact(row, record) for row, record in zip(rows, records)]
        else:
            written = [{**row, **{k: record[k] for k in GRADES}, **{k: record[k] for k in ("diagnosis", "prediction_beam_reranked") if k in row}}
                       for row, record in zip(rows, records)]
        name = path.name if path.name.endswith(".gz") or not compact_rows else path.name + ".gz"
        write_rows(out / name, written)
        out_metrics = out / "metrics.json"
        everything[entry] = {**(recorded or {"rows": len(rows)}), **graded,
                             "graded": f"grades and diagnosis recomputed by `cli.py grade` from the outputs in {name}"}
        engine.write_json(out_metrics, everything)
        figure = plot_diagnosis(path.parent, graded["diagnosis"], "diagnosis.png" if entry == "test" else f"diagnosis-{entry}.png", out)
        lines.append(f"  wrote {out / name}, {out_metrics} ({entry!r}) and {figure} with the new grades")
    return lines, differences


# ---------------------------------------------------------------------------------------------
# Analysis (the interface in train/tasks.py): token roles, captured batches, decoding under
# interventions

# Equation: the digits of a, b and c, the exponent 2, the right-hand side 0.
EQUATION_ROLES = ("a", "b", "c", "x", "^", "exp", "+", "-", "=", "rhs", "</s>", "other")
SOLUTION_ROLES = ("<start>", "digit", "D", "x", "^", "=", ";", "(", ")", "+", "-", "*", "/", "none", "sqrt", "name", "</s>", "other", "~")


def equation_roles(tokens: list[str]) -> list[str]:
    """Role of each token of an equation such as `-7x^2+3556x+451612=0</s>`: digits belong to a
    until `x^2`, to b until the second `x`, to c until `=`, then to the right-hand side."""
    roles, part, xs, previous = [], "a", 0, None
    for tok in tokens:
        if tok == "</s>":
            role = "</s>"
        elif tok.isdigit():
            role = "exp" if previous == "^" else part
        elif tok in ("x", "^", "+", "-", "="):
            role = tok
        else:
            role = "other"
        roles.append(role)
        xs += tok == "x"
        if role == "exp":
            part = "b"
        elif tok == "x" and xs == 2:
            part = "c"
        elif tok == "=":
            part = "rhs"
        previous = tok
    return roles


def solution_roles(tokens: list[str]) -> list[str]:
    """Role of each decoder token: `<start>` (T5's start token), digits, symbols, `none`, `sqrt`,
    the names a, b, c of the steps and long formats, `</s>`, the mark `~` of the reversed
    formats."""
    out = []
    for tok in tokens:
        if tok in ("<pad>", "<start>"):
            out.append("<start>")
        elif tok.isdigit():
            out.append("digit")
        elif tok in SOLUTION_ROLES:
            out.append(tok)
        elif tok in "noe":
            out.append("none")
        elif tok in "sqrt":
            out.append("sqrt")
        elif tok in "abc":
            out.append("name")
        else:
            out.append("other")
    return out


def teacher_forced_batch(tokenizer, equations: list[str], solutions: list[str]) -> dict:
    """A captured batch (train/tasks.py) for one teacher-forced pass: decoder input = start token +
    solution, labels = solution + </s>. Segments: the equation's terms (a new one at each sign and
    at `=`), the solution's statements (a new one after each `;`)."""
    pad = tokenizer.pad_token_id
    enc = tokenizer(equations)["input_ids"]
    targets = tokenizer(solutions)["input_ids"]
    dec = [[pad] + ids[:-1] for ids in targets]  # drop the final </s>: it is only predicted
    width_enc, width_dec = max(map(len, enc)), max(map(len, dec))
    enc_tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in enc]
    dec_tokens = [["<start>" if t == "<pad>" else t for t in tokenizer.convert_ids_to_tokens(ids)] for ids in dec]
    enc_segments = [segments([t in "+-=" and (j == 0 or toks[j - 1] != "^") for j, t in enumerate(toks)]) for toks in enc_tokens]
    dec_segments = [segments([j > 0 and toks[j - 1] == ";" for j in range(len(toks))]) for toks in dec_tokens]
    return {
        "inputs": {"input_ids": padded(enc, width_enc, pad), "attention_mask": padded([[1] * len(r) for r in enc], width_enc, 0),
                   "decoder_input_ids": padded(dec, width_dec, pad), "decoder_attention_mask": padded([[1] * len(r) for r in dec], width_dec, 0)},
        "labels": padded(targets, width_dec, -100),  # what each decoder position predicts
        "roles": {"encoder": padded([[EQUATION_ROLES.index(r) for r in equation_roles(t)] for t in enc_tokens], width_enc, -1),
                  "decoder": padded([[SOLUTION_ROLES.index(r) for r in solution_roles(t)] for t in dec_tokens], width_dec, -1)},
        "segments": {"encoder": padded(enc_segments, width_enc, -1), "decoder": padded(dec_segments, width_dec, -1)},
        "tokens": {"encoder": enc_tokens, "decoder": dec_tokens},
    }


def captured_batches(tokenizer, equations: list[str], solutions: list[str], classes: list[str], batch_size: int):
    """Teacher-forced captured batches of the rows, shortest solutions first (little padding)."""
    order = sorted(range(len(equations)), key=lambda i: len(solutions[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = teacher_forced_batch(tokenizer, [equations[i] for i in idx], [solutions[i] for i in idx])
        yield {**batch, "classes": [classes[i] for i in idx], "rows": idx}


# The key-value cache of one generate call on a CPU, at most this many bytes (on a GPU, a
# quarter of its free memory): ablations decode many copies of the rows at once, and 2,400 rows of
# the reversed format (640 new tokens) took 14 GB
CACHE_BYTES = 2 << 30


def cache_rows(model, input_width: int) -> int:
    """Rows whose decoding cache, at its largest (self-attention over max_new_tokens, cross-attention
    over the input; train/kv_cache.py grows no further), fits in CACHE_BYTES; at least 1."""
    c, g = model.config, model.generation_config
    steps = g.max_new_tokens or g.max_length
    parameter = next(model.parameters())
    row = 2 * c.num_decoder_layers * c.num_heads * c.d_kv * (steps + input_width) * parameter.element_size()
    budget = torch.cuda.mem_get_info(parameter.device)[0] // 4 if parameter.device.type == "cuda" else CACHE_BYTES
    return max(1, budget // row)


PATCH_DIGITS = 2  # activation patching scores D's value up to its first 2 digits (its minus sign included)
CLASS_TOKENS = {"none": "-", "one": "0", "two": "123456789"}  # D's first character says the root class
# D's statement where it writes its operands: `D=X-Y=` or `D=X-(-Y)=` (after `D=b^2-4*a*c=` in the steps formats), then its value
D_OPERANDS = re.compile(r"=(?P<x>[0-9]+)-(?P<neg>\(-)?(?P<y>[0-9]+)\)?=(?P<value>-?[0-9]+)")
PAGE_ROLES = ("b^2 (X)", "minus", "4ac (Y)", "= (D's value next)")  # the decoder positions page_pairs patches


def root_class(a: int, b: int, c: int) -> str:
    disc = b * b - 4 * a * c
    return "two" if disc > 0 else "one" if disc == 0 else "none"


def corruption(a: int, b: int, c: int, rng, largest: dict | None = None) -> tuple[str, tuple[int, int, int]] | None:
    """(name, (a, b, c)) with one coefficient, chosen at random, changed to another of the same
    sign and number of digits (the equation keeps its tokens' count, positions and roles), and at
    most largest[name] in size (the data's range), such that the number of real roots changes;
    None when no such change is found (e.g. a and c of opposite signs: D > b^2 whatever their digits)."""
    values = {"a": a, "b": b, "c": c}
    for name in rng.sample("abc", 3):
        v = values[name]
        digits = len(str(abs(v)))
        lo, hi = (1 if name == "a" or v < 0 else 0, 9) if digits == 1 else (10 ** (digits - 1), 10**digits - 1)  # -0 would be +0
        hi = min(hi, (largest or {}).get(name, hi))
        if hi < lo:
            continue
        if hi - lo < 64:
            candidates = rng.sample(range(lo, hi + 1), hi - lo + 1)
        else:  # wide ranges: a random sample of them, repeats harmless
            candidates = [rng.randint(lo, hi) for _ in range(64)]
        for m in candidates:
            changed = {**values, name: m if v >= 0 else -m}
            if m != abs(v) and root_class(*changed.values()) != root_class(a, b, c):
                return name, tuple(changed.values())
    return None


class Analysis:
    """Equations and their reference solutions, teacher-forced; classes: two, one or no real roots.
    Special symbols: x, ^, = of the equation (the prior study's hypothesis)."""

    name = "quadratic"
    batch_size = 64
    kinds = ("encoder", "decoder", "cross")
    sides = {"encoder": ("encoder", "encoder"), "decoder": ("decoder", "decoder"), "cross": ("decoder", "encoder")}
    roles = {"encoder": EQUATION_ROLES, "decoder": SOLUTION_ROLES}
    symbols = ("x", "^", "=")
    control_roles, control_name = ("a", "b", "c"), "digits"
    metrics = ("full_solution_accuracy", "roots_accuracy", "character_accuracy")
    class_name = "number of real roots"
    inputs = ("equation",)
    averaged_on = "the split's reference solutions, teacher-forced"
    attended = [("encoder self-attention", "encoder", None, None), ("cross-attention", "cross", None, None)]
    # what the first wrong token's query reads: the keys of cross-attention are the equation's
    # tokens, those of the decoder's self-attention the solution's own
    at_first_wrong = {"cross": "cross-attention at the first wrong token", "decoder": "decoder self-attention at the first wrong token"}

    def __init__(self, run_dir: Path, command: str, split: str | None = "test", limit: int = 0, eval_limit: int = 0,
                 data: str | Path | None = None):
        from train.metrics import ROOT_CLASSES

        self.model, self.tokenizer, self.config = load_run(run_dir, command, data)
        self.run_dir, self.tested, self.trained_on = Path(run_dir), None, None
        if split is None:  # given equations only: the run's dataset need not be here
            columns = {k: [] for k in ("equation", "solution", "num_roots", "a", "b", "c")}
        else:
            dataset = load_splits(self.config, run_dir)[split]
            columns = dataset.select(range(min(max(limit or len(dataset), eval_limit), len(dataset)))).to_dict()
        self.rows = {k: v[: limit or None] for k, v in columns.items()}
        self.eval_rows = {k: v[:eval_limit] for k, v in columns.items()}
        self.classes = [ROOT_CLASSES[k] for k in self.rows["num_roots"]]
        self.split, self.n_rows, self.n_eval_rows = split, len(self.rows["equation"]), len(self.eval_rows["equation"])

    def probe_targets(self) -> dict:
        """What `cli.py probe` decodes from the hidden states, one label per analysed row: the
        root class, facts about D = b^2 - 4ac and its parts, the signs of the coefficients."""
        a, b, c = (self.rows[k] for k in "abc")
        d = [y * y - 4 * x * z for x, y, z in zip(a, b, c)]

        def sign(v):
            return "+" if v > 0 else "-" if v < 0 else "0"

        return {"root class": list(self.classes), "sign of D": [sign(v) for v in d],
                "last digit of |D|": [str(abs(v))[-1] for v in d], "leading digit of |D|": [str(abs(v))[0] for v in d],
                "digits of |D|": [len(str(abs(v))) for v in d], "last digit of b^2": [str(y * y)[-1] for y in b],
                "sign of a": [sign(x) for x in a], "sign of b": [sign(y) for y in b],
                "sign of ac": [sign(x * z) for x, z in zip(a, c)]}  # ac > 0 is what lets D be negative

    def page_pairs(self, n: int, seed: int) -> dict:
        """`n` pairs for patching the decoder: one equation, teacher-forced on its reference
        solution up to D's value (clean) and on the same text with one digit of D's first operand
        X changed (corrupted), where D's statement writes its operands (`D=X-Y=` or `X-(-Y)=`: the
        formats that write their work; X = b^2 as written). The digit is drawn so that X - Y, as
        the format writes it, starts otherwise than D's value: a model that subtracts what is on
        the page then writes another D. Scored: "D digits" as in patch_pairs. Patchable: the
        decoder positions from the changed digit to the `=` before D's value (before it the two
        runs are the same), with the roles PAGE_ROLES."""
        import random

        from gen.equations import REVERSED_MARK, reverse_digits, write_equation

        tok, rng = self.tokenizer, random.Random(seed)
        chosen = []
        for row in rng.sample(range(self.n_rows), self.n_rows):
            if len(chosen) == n:
                break
            solution = self.rows["solution"][row]
            marked = solution.startswith(REVERSED_MARK)  # numbers written least significant digit first
            statement = next((s for s in solution.removeprefix(REVERSED_MARK).split(";") if s.startswith("D=")), "")
            found = D_OPERANDS.search(statement)
            if found is None:
                continue

            def read(text):
                return int(reverse_digits(text) if marked else text)

            def write(value):
                return reverse_digits(str(value)) if marked else str(value)

            x, y, value = found["x"], read(found["y"]) * (-1 if found["neg"] else 1), found["value"]
            if read(x) - y != read(value):
                continue  # not D's subtraction
            scored = value[: PATCH_DIGITS + value.startswith("-")]
            corrupted = None
            for i in rng.sample(range(len(x)), len(x)):
                for digit in rng.sample("0123456789", 10):
                    other = x[:i] + digit + x[i + 1 :]
                    leading = other[-1] if marked else other[0]
                    if other != x and (leading != "0" or len(x) == 1) and not write(read(other) - y).startswith(scored):
                        corrupted = (i, other)
                        break
                if corrupted:
                    break
            if corrupted is None:
                continue
            at = solution.index(statement)  # characters are tokens: the decoder holds character k at position k + 1
            start, changed = at + found.start("value"), at + found.start("x") + corrupted[0]
            texts = (solution[:start] + scored, solution[:changed] + corrupted[1][corrupted[0]] + solution[changed + 1 : start] + scored)
            ids = [tok(text, add_special_tokens=False)["input_ids"] for text in texts]
            if any(tok.unk_token_id in i or len(i) != len(texts[0]) for i in ids):
                continue  # characters this model never saw
            spans = [(found.span("x"), 0), (found.span("y"), 2), ((found.start("value") - 1, found.start("value")), 3)]  # else: - ( )
            roles = [next((r for (lo, hi), r in spans if lo <= k - at < hi), 1) for k in range(changed, start)]
            chosen.append({"row": row, "equation": write_equation(*(self.rows[k][row] for k in "abc")), "ids": ids, "start": start,
                           "changed": changed, "roles": roles, "scored": scored, "x": x, "corrupted_x": corrupted[1]})
        if len(chosen) < n:
            raise QuadlabError(f"only {len(chosen)} of the {self.n_rows} rows of the {self.split} split make a pair for the decoder (D's "
                               f"statement written as X-Y=, and a digit of X whose change changes D's first digits): a format that writes "
                               f"D's operands is needed (reversed, long, ...; not published)"
                               + (f"; pass --pairs {len(chosen)} or fewer" if chosen else ""))
        pad = tok.pad_token_id
        encoder = tok([p["equation"] for p in chosen])["input_ids"]
        clean, corrupted = ([[pad] + p["ids"][k][:-1] for p in chosen] for k in (0, 1))  # position j predicts ids[j]
        width, depth = max(map(len, encoder)), max(map(len, clean))
        patchable = [[0] * (p["changed"] + 1) + [1] * (p["start"] - p["changed"]) for p in chosen]
        return {
            "side": "decoder", "input_ids": padded(encoder, width, pad), "attention_mask": padded([[1] * len(r) for r in encoder], width, 0),
            "clean": padded(clean, depth, pad), "corrupted": padded(corrupted, depth, pad), "decoder_input_ids": padded(clean, depth, pad),
            "decoder_attention_mask": padded([[1] * len(r) for r in clean], depth, 0), "patchable": padded(patchable, depth, 0).bool(),
            "roles": padded([[-1] * (p["changed"] + 1) + p["roles"] for p in chosen], depth, -1), "role_names": list(PAGE_ROLES),
            "tokens": [["<start>"] + tok.convert_ids_to_tokens(r[1:]) for r in clean],
            "corrupted_tokens": [["<start>"] + tok.convert_ids_to_tokens(r[1:]) for r in corrupted],
            "targets": {"D digits": [[(p["start"] + i, [t]) for i, t in enumerate(p["ids"][0][p["start"]:])] for p in chosen]},
            "scores": {"D digits": f"log P of D's value up to its first {PATCH_DIGITS} digits (minus sign included), teacher-forced on "
                                   f"the clean solution up to there; the corrupted run has one digit of X (b^2) in D's statement changed"},
            "pairs": [{"row": p["row"], "equation": p["equation"], "x": p["x"], "corrupted_x": p["corrupted_x"], "scored": p["scored"]}
                      for p in chosen],
        }

    def statement_names(self) -> list[list[str]]:
        """Per analysed row, the name of each statement of its reference solution, in order (the
        decoder's segments): `D`, `sqrt(D)`, `x1`, `D work 2`, ... (train/metrics.py)."""
        return [statement_names(solution) for solution in self.rows["solution"]]

    def load_model(self, path: Path):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM.from_pretrained(str(path), attn_implementation="eager")

    def batches(self, batch_size: int):
        return captured_batches(self.tokenizer, self.rows["equation"], self.rows["solution"], self.classes, batch_size)

    def example(self, index: int | None = None, given: dict | None = None) -> dict:
        """The model's own solution of a row or of a given equation, teacher-forced, graded."""
        from gen.equations import write_equation
        from gen.grader import GradeError, grade, parse_equation, true_roots

        if given is not None:
            try:
                a, b, c = parse_equation(given["equation"])
            except GradeError as err:
                raise QuadlabError(f"cannot read the equation: {err}") from None
            equation, name = write_equation(a, b, c), "given"  # the form the model was trained on: `x^2 - 5x + 6 = 0` -> 1x^2-5x+6=0
            ids = self.tokenizer(equation)["input_ids"]
            if self.tokenizer.unk_token_id in ids:
                bad = sorted({ch for ch in equation if self.tokenizer.convert_tokens_to_ids(ch) == self.tokenizer.unk_token_id})
                raise QuadlabError(f"the model's tokenizer cannot encode {''.join(bad)!r} in {equation!r}; write it like 7x^2+3556x+451612=0")
            if self.tested is None:  # once: serve asks again for every equation typed
                self.tested, self.trained_on = tested_groups(self.run_dir), recorded_options(self.run_dir / DATASET_CARD)
        else:
            equation, name = self.rows["equation"][index], str(index)
            a, b, c = (self.rows[k][index] for k in "abc")
        solution = decode(self.model, self.tokenizer, [equation], batch_size=1)[0][0]
        batch, verdict = teacher_forced_batch(self.tokenizer, [equation], [solution]), grade(a, b, c, solution)
        answer = {"equation": equation, "solution": solution, "verdict": verdict.as_dict(), "true_roots": true_roots(a, b, c)}
        ended = len(solution) < self.model.generation_config.max_new_tokens  # else generate stopped at the budget, before any </s>
        least = least_sure_token(self.model, self.tokenizer, batch, solution, ended)
        where = f"in statement {least['statement']} `{least['statement_text']}`" if least["statement"] else "ending the solution"
        answer["least_sure_token"] = (f"probability {least['p']:.2f}, at decoder position {least['position']}: {least['token']!r} {where}; "
                                      f"its other choice there {least['other']!r} ({least['p_other']:.2f})")
        focus = {}
        if given is not None:
            answer["test_rows_like_it"] = like_it(self.tested, a, b, c, self.trained_on.ranges if self.trained_on else None)
            answer["test_rows_as_sure"] = as_sure(self.tested, least["p"])
            target = reference(a, b, c, self.trained_on.format) if self.trained_on else None
            if target is not None:
                answer["first_wrong"] = first_wrong(target, solution, verdict.answer_correct)
            if target is not None and solution != target:
                token = first_wrong_token(self.model, self.tokenizer, batch, target, solution)
                t = token["position"]
                answer["first_wrong_token"] = (f"decoder position {t} (as in the maps), which writes the solution's character {t + 1}: the model "
                                               f"wrote {token['wrote']!r} (probability {token['p_wrote']:.2f}), where the reference has "
                                               f"{token['reference']!r} ({token['p_reference']:.2f})")
                # and the decoder's own: the long formats read their earlier work
                focus = {"focus": [{"label": label, "kind": kind, "query": t} for kind, label in self.at_first_wrong.items()]}
        return {"name": name, "input": equation, "output": solution, "batch": batch, "answer": answer, **focus}

    @staticmethod
    def answer_lines(result: dict) -> list[str]:
        answer, verdict = result["answer"], result["answer"]["verdict"]

        def roots(value) -> str:  # the grader's reading, in plain digits whatever the format: a list of roots, "none" or None
            return "unreadable" if value is None else "no real roots" if value in ("none", []) else ", ".join(value)

        lines = [f"equation: {answer['equation']}", f"solution: {answer['solution']}",
                 "verdict:  " + ", ".join(f"{k} {verdict[k]}" for k in ("ok", "well_formed", "steps_valid", "substitutions_valid", "answer_correct")),
                 f"answer:   {roots(verdict['stated_answer'])} (true: {roots(answer['true_roots'])})",
                 *([f"like it:  {answer['test_rows_like_it']}"] if "test_rows_like_it" in answer else []),
                 *([f"wrong at: {answer['first_wrong']}"] if "first_wrong" in answer else []),
                 *([f"at token: {answer['first_wrong_token']}"] if "first_wrong_token" in answer else []),
                 *([f"least sure: {answer['least_sure_token']}"] if "least_sure_token" in answer else []),
                 *([f"as sure:  {answer['test_rows_as_sure']}"] if "test_rows_as_sure" in answer else [])]
        for label, layers in result["attended"].items():
            side = "output" if label == Analysis.at_first_wrong["decoder"] else "input"
            lines += [f"{label}, layer {layer}: most attended {side} token {token}" for layer, token in enumerate(layers)]
        return lines

    def gradient_batches(self, batch_size: int) -> list[dict]:
        return list(self.batches(batch_size))  # they carry the labels

    def query_masks(self, batch: dict) -> dict:
        i = batch["inputs"]
        return {"encoder": i["attention_mask"].bool(), "decoder": i["decoder_attention_mask"].bool(), "cross": i["decoder_attention_mask"].bool()}

    def row_losses(self, model, batch: dict) -> torch.Tensor:
        device = next(model.parameters()).device
        logits = model(**{k: v.to(device) for k, v in batch["inputs"].items()}).logits
        labels = batch["labels"].to(device)
        per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=-100, reduction="none")
        return per_token.sum(dim=1) / (labels != -100).sum(dim=1).clamp(min=1)

    def encoded(self):
        """The eval rows' equations as one padded batch: (input_ids, attention_mask)."""
        ids = self.tokenizer(self.eval_rows["equation"])["input_ids"]
        input_ids = padded(ids, max(map(len, ids)), self.tokenizer.pad_token_id)
        return input_ids, (input_ids != self.tokenizer.pad_token_id).long()

    @torch.no_grad()
    def generate(self, model, input_ids, mask, repeat: int, gates: dict, block: tuple | None = None, encoder_hidden=None) -> list[str]:
        """Greedy decoding of `repeat` copies of the rows, each copy with its own gates; `block` is
        ({kind: [layers]}, (B, K) keys); the encoder's output is reused when given (the gates and
        blocks of the encoder are then already in it)."""
        from transformers.modeling_outputs import BaseModelOutput

        from analyze import interventions
        from train.kv_cache import cache_arguments

        device = next(model.parameters()).device
        ids, mask = input_ids.repeat(repeat, 1).to(device), mask.repeat(repeat, 1).to(device)
        block_layers, block_keys = block if block else ({}, None)
        block_keys = block_keys.repeat(repeat, 1).to(device) if block_keys is not None else None
        if encoder_hidden is None:
            with interventions.gated(model, {k: v for k, v in gates.items() if k == "encoder"}), \
                    interventions.blocked(model, {k: v for k, v in block_layers.items() if k == "encoder"}, block_keys):
                encoder_hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            encoder_hidden = encoder_hidden.repeat(repeat, 1, 1)
        with interventions.gated(model, {k: v for k, v in gates.items() if k != "encoder"}), \
                interventions.blocked(model, {k: v for k, v in block_layers.items() if k != "encoder"}, block_keys):
            generated = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden), attention_mask=mask,
                                       do_sample=False, num_beams=1, **cache_arguments(model, greedy=True))
        return self.tokenizer.batch_decode(generated, skip_special_tokens=True)

    def scores(self, predictions: list[str]) -> dict:
        r = self.eval_rows
        judged = [judge(a, b, c, t, p) for a, b, c, t, p in zip(r["a"], r["b"], r["c"], r["solution"], predictions)]
        return {k: v for k, v in quadratic_metrics(judged, r["num_roots"]).items() if k in self.metrics}

    def evaluate(self, model, gates: dict | None = None, blocked: tuple | None = None) -> dict:
        input_ids, mask = self.encoded()
        block = None
        if blocked:
            layers, choose = blocked
            keys = torch.zeros(input_ids.shape, dtype=torch.bool)
            for row, ids in enumerate(self.tokenizer(self.eval_rows["equation"])["input_ids"]):
                keys[row, choose(equation_roles(self.tokenizer.convert_ids_to_tokens(ids)))] = True
            block = (layers, keys)
        return self.scores(self.generate(model, input_ids, mask, 1, gates or {}, block))

    def ablate(self, model, specs: list, batch_rows: int, progress: bool) -> list[dict]:
        """Metrics with each spec's head ablated. Several ablations share one generate call (each
        copy of the rows has its own gates); ablations in the decoder and cross-attention reuse one
        encoder pass."""
        from tqdm import tqdm

        from analyze import interventions

        model.eval()
        input_ids, mask = self.encoded()
        n = len(input_ids)
        per_call = max(1, min(batch_rows, cache_rows(model, input_ids.shape[1])) // max(n, 1))
        layout = interventions.shape(model)
        device = next(model.parameters()).device
        with torch.no_grad():
            encoder_hidden = model.get_encoder()(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        groups = []
        for side in ("encoder", "decoder"):
            chosen = [i for i, s in enumerate(specs) if (s is not None and s[0] == "encoder") == (side == "encoder")]
            groups += [(side, chosen[i : i + per_call]) for i in range(0, len(chosen), per_call)]
        results: list = [None] * len(specs)
        for side, group in tqdm(groups, desc="ablate", unit="call", disable=None if progress else True):
            gates = {kind: torch.ones(len(group) * n, *layout[kind], device=device) for kind in layout}
            for copy, index in enumerate(group):
                if specs[index] is not None:
                    kind, layer, head = specs[index]
                    gates[kind][copy * n : (copy + 1) * n, layer, head] = 0
            texts = self.generate(model, input_ids, mask, len(group), gates, encoder_hidden=None if side == "encoder" else encoder_hidden)
            for copy, index in enumerate(group):
                results[index] = self.scores(texts[copy * n : (copy + 1) * n])
        return results

    def patch_pairs(self, n: int, seed: int, side: str = "encoder") -> dict:
        """`n` pairs for activation patching (analyze/patching.py), from the analysed rows in a
        seeded random order; `side` "decoder": page_pairs. The clean equation and a corrupted one (`corruption`: one coefficient's
        digits changed, within the largest size of that coefficient in the rows, so that the number
        of real roots changes; the same tokens' count and roles).
        Both runs are teacher-forced on the clean solution up to D's value (`D=(b^2-4*a*c)=` in the
        published format; all of it up to there in the others), and scored at D's value:
          "D digits"    log P of its characters up to its first PATCH_DIGITS digits written, minus sign
                        included (the last digits, in formats that write numbers reversed)
          "root class"  log P that its first character is of the clean class: `-` none, `0` one, 1-9 two
                        (reversed formats: rows whose D > 0 ends in 0 are left out, as its `0` comes first)
        "side" "encoder"; padded tensors: clean, corrupted, attention_mask, patchable (P, T); decoder_input_ids,
        decoder_attention_mask (P, S); roles (P, T) indices into roles["encoder"]; targets
        {score: per pair [(decoder position, [token ids whose probabilities add up])]}."""
        import random

        from gen.equations import REVERSED_MARK, reverse_digits, write_equation

        if side == "decoder":
            return self.page_pairs(n, seed)
        tok, rng = self.tokenizer, random.Random(seed)
        order = rng.sample(range(self.n_rows), self.n_rows)
        largest = {k: max(map(abs, self.rows[k]), default=0) for k in "abc"}  # corrupted equations stay in the data's ranges
        chosen = []
        for row in order:
            if len(chosen) == n:
                break
            a, b, c = (self.rows[k][row] for k in "abc")
            solution, disc = self.rows["solution"][row], b * b - 4 * a * c
            marked = solution.startswith(REVERSED_MARK)  # numbers written least significant digit first
            statement = next((s for s in solution.removeprefix(REVERSED_MARK).split(";") if s.startswith("D=")), None)
            found = corruption(a, b, c, rng, largest)
            if statement is None or found is None or marked and disc > 0 and disc % 10 == 0:
                continue  # (the last: written first, D's last digit 0 would name the one-root class)
            value = statement.rsplit("=", 1)[1]
            prefix = solution[: solution.index(statement) + len(statement) - len(value)]
            scored = value[: PATCH_DIGITS + value.startswith("-")]
            equations = (write_equation(a, b, c), write_equation(*found[1]))
            ids = [tok(text, add_special_tokens=False)["input_ids"] for text in (*equations, prefix + scored)]
            if any(tok.unk_token_id in i for i in ids) or (reverse_digits(value) if marked else value) != str(disc):
                continue  # characters this model never saw; a D statement that is not D
            chosen.append({"row": row, "equations": equations, "changed": found[0], "target": ids[2], "start": len(prefix),
                           "scored": scored, "classes": (root_class(a, b, c), root_class(*found[1]))})
        if len(chosen) < n:
            raise QuadlabError(f"only {len(chosen)} of the {self.n_rows} rows of the {self.split} split make a pair (a change of one "
                               f"coefficient that keeps the tokens and changes the number of real roots); "
                               + (f"pass --pairs {len(chosen)} or fewer, or " if chosen else "") + "use a split or dataset with more rows")
        clean = tok([p["equations"][0] for p in chosen])["input_ids"]
        corrupted = tok([p["equations"][1] for p in chosen])["input_ids"]
        decoder = [[tok.pad_token_id] + p["target"][:-1] for p in chosen]  # position j predicts target[j]
        width, depth = max(map(len, clean)), max(map(len, decoder))
        class_ids = {k: tok.convert_tokens_to_ids(list(v)) for k, v in CLASS_TOKENS.items()}
        tokens = [tok.convert_ids_to_tokens(ids) for ids in clean]
        return {
            "side": "encoder", "clean": padded(clean, width, tok.pad_token_id), "corrupted": padded(corrupted, width, tok.pad_token_id),
            "attention_mask": padded([[1] * len(r) for r in clean], width, 0),
            "decoder_input_ids": padded(decoder, depth, tok.pad_token_id), "decoder_attention_mask": padded([[1] * len(r) for r in decoder], depth, 0),
            "patchable": padded([[1] * len(r) for r in clean], width, 0).bool(),  # every input token
            "roles": padded([[EQUATION_ROLES.index(r) for r in equation_roles(t)] for t in tokens], width, -1), "role_names": list(EQUATION_ROLES),
            "tokens": tokens, "corrupted_tokens": [tok.convert_ids_to_tokens(ids) for ids in corrupted],
            "targets": {"D digits": [[(p["start"] + i, [t]) for i, t in enumerate(p["target"][p["start"]:])] for p in chosen],
                        "root class": [[(p["start"], class_ids[p["classes"][0]])] for p in chosen]},
            "scores": {"D digits": f"log P of D's value up to its first {PATCH_DIGITS} digits (minus sign included), teacher-forced on the "
                                   f"clean solution up to there",
                       "root class": "log P that D's first character is of the clean root class (- none, 0 one, 1-9 two), after the "
                                     "clean solution up to D's value"},
            "pairs": [{"row": p["row"], "clean": p["equations"][0], "corrupted": p["equations"][1], "changed": p["changed"],
                       "scored": p["scored"], "clean_class": p["classes"][0], "corrupted_class": p["classes"][1]} for p in chosen],
        }
