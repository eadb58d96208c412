"""The quadratic task: a T5 learns to write worked solutions (`cli.py train --task quadratic`,
`cli.py eval`).

Run directory (`runs/quadratic-<preset>-seed<seed>` by default):
    config.json, model.safetensors, generation_config.json   the best model (AutoModelForSeq2SeqLM)
    tokenizer.json, tokenizer_config.json                      the character tokenizer (AutoTokenizer)
    config.yaml        the resolved training configuration (cli.py train --config config.yaml redoes it)
    environment.json   package versions, device, command line
    log.jsonl          one line per step and per evaluation; training_curve.png
    metrics.json       validation and test metrics; predictions.jsonl, one line per test equation
    checkpoint/, best/ the state for --resume, the best model while training
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from gen import QuadlabError
from train import runs
from train.config import TrainConfig
from train.metrics import diagnosis, judge, quadratic_metrics

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2: T5 starts decoding with the pad id
MODEL_FILES = ("config.json", "model.safetensors", "generation_config.json")
COLUMNS = ("equation", "solution", "a", "b", "c", "num_roots")  # what `cli.py gen` writes


# ---------------------------------------------------------------------------------------------
# Data and tokenizer


def load_splits(config: TrainConfig):
    """train / validation (`val_size` rows carved from train; 0: the training rows themselves,
    for overfitting checks) / test, checked to be a dataset that `cli.py gen` writes."""
    import datasets

    path = Path(config.data)
    elsewhere = "or point --data (for a run: `data:` in its config.yaml) at one"
    if not path.exists():
        remake = f"make it with `python cli.py gen --out {path}` (the same options give the same rows), {elsewhere}"
    elif (path / "card.json").is_file():  # written by `cli.py gen`, then damaged: safe to replace
        remake = f"make it again with `python cli.py gen --out {path} --overwrite`, {elsewhere}"
    else:  # something else, which a hint must not tell anyone to overwrite
        remake = "point --data (for a run: `data:` in its config.yaml) at a directory made by `python cli.py gen --out DIR`"
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
    if config.val_size == 0:
        return datasets.DatasetDict({"train": dd["train"], "validation": dd["train"], "test": dd["test"]})
    if config.val_size >= len(dd["train"]):
        raise QuadlabError(f"val_size {config.val_size} leaves no training rows (train has {len(dd['train'])}); "
                           f"pass a smaller --set val_size=N")
    carved = dd["train"].train_test_split(test_size=config.val_size, seed=config.seed)
    return datasets.DatasetDict({"train": carved["train"], "validation": carved["test"], "test": dd["test"]})


def build_tokenizer(texts):
    """One token per character of the data (digits, symbols, letters), plus </s>, <pad>, <unk>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set().union(*map(set, texts)))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(chars)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()  # characters back into one string, no spaces
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def encode(tokenizer, dataset):
    """input_ids (equation </s>) and labels (solution </s>)."""
    columns = dataset.select_columns(["equation", "solution"]).to_dict()
    inputs = tokenizer(columns["equation"])["input_ids"]
    labels = tokenizer(columns["solution"])["input_ids"]
    return [{"input_ids": i, "labels": l} for i, l in zip(inputs, labels)]


def collator(pad_id: int):
    def collate(rows: list[dict]) -> dict:
        width_in = max(len(r["input_ids"]) for r in rows)
        width_out = max(len(r["labels"]) for r in rows)
        input_ids = torch.full((len(rows), width_in), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width_out), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
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
    model.set_attn_implementation("sdpa" if torch.cuda.is_available() else "eager")
    return model


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


@torch.no_grad()
def decode(model, tokenizer, equations: list[str], batch_size: int, num_beams: int = 1, progress: bool = False) -> list[list[str]]:
    """Candidates for each equation: greedy (one) or the beams, best first. Batched, sorted by
    input length, with the key-value cache."""
    from tqdm import tqdm

    model.eval()
    device = next(model.parameters()).device
    encoded = tokenizer(equations)["input_ids"]
    order = sorted(range(len(equations)), key=lambda i: len(encoded[i]))
    out: list[list[str]] = [[] for _ in equations]
    per_row = max(1, num_beams)
    step = max(1, batch_size // per_row)
    for start in tqdm(range(0, len(order), step), desc="decode", unit="batch", disable=None if progress else True, leave=False):
        idx = order[start : start + step]
        width = max(len(encoded[i]) for i in idx)
        input_ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
        for row, i in enumerate(idx):
            input_ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
        input_ids = input_ids.to(device)
        generated = model.generate(
            input_ids=input_ids, attention_mask=(input_ids != tokenizer.pad_token_id).long(),
            do_sample=False, num_beams=per_row, num_return_sequences=per_row,
            cache_implementation="static" if per_row == 1 else None,
        )
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        for row, i in enumerate(idx):
            out[i] = texts[row * per_row : (row + 1) * per_row]
    return out


def rerank_with_grader(rows, candidates: list[list[str]]) -> list[str]:
    """The most likely beam that the grader fully accepts, else the most likely beam."""
    from gen.grader import grade

    chosen = []
    for (a, b, c), beams in zip(rows, candidates):
        chosen.append(next((text for text in beams if grade(a, b, c, text).ok), beams[0]))
    return chosen


def evaluate_rows(model, tokenizer, dataset, batch_size: int, num_beams: int = 0, progress: bool = False) -> tuple[dict, list[dict]]:
    """Metrics and one record per row; with num_beams > 1 also the grader-reranked beams."""
    start = time.perf_counter()
    columns = dataset.to_dict()
    greedy = [c[0] for c in decode(model, tokenizer, columns["equation"], batch_size, 1, progress)]
    coefficients = list(zip(columns["a"], columns["b"], columns["c"]))
    records = []
    for (a, b, c), eq, target, pred, k in zip(coefficients, columns["equation"], columns["solution"], greedy, columns["num_roots"]):
        records.append({"equation": eq, "a": a, "b": b, "c": c, "target": target, "prediction": pred, "num_roots": k,
                        **judge(a, b, c, target, pred)})
    metrics = {"greedy": quadratic_metrics(records, columns["num_roots"]), "greedy_seconds": round(time.perf_counter() - start, 2),
               "diagnosis": diagnosis(records)}
    if num_beams > 1:
        start = time.perf_counter()
        reranked = rerank_with_grader(coefficients, decode(model, tokenizer, columns["equation"], batch_size, num_beams, progress))
        judged = []
        for record, (a, b, c), text in zip(records, coefficients, reranked):
            record["prediction_beam_reranked"] = text
            judged.append(judge(a, b, c, record["target"], text))
        metrics[f"beam{num_beams}_grader_reranked"] = quadratic_metrics(judged, columns["num_roots"])
        metrics["beam_seconds"] = round(time.perf_counter() - start, 2)
    return metrics, records


# ---------------------------------------------------------------------------------------------
# Runs


def train_run(config: TrainConfig, resume: bool = False, overwrite: bool = False, stop_after_steps: int | None = None, progress: bool = True,
              deadline: float | None = None) -> dict | None:
    """Train, keep the best model in the run directory, evaluate it on the test split; the metrics
    (None on the processes other than the main one of a multi-process run). `stop_after_steps`
    and `deadline` stop training with a checkpoint (engine.train)."""
    from train import engine

    splits = load_splits(config)  # before the run directory: a missing dataset leaves nothing behind
    run_dir = engine.prepare_run_dir(config, resume, overwrite)
    if resume:
        tokenizer = runs.load_tokenizer(run_dir)
    else:
        columns = splits["train"].select_columns(["equation", "solution"]).to_dict()
        tokenizer = build_tokenizer(columns["equation"] + columns["solution"])
        engine.on_main(lambda: tokenizer.save_pretrained(str(run_dir)))  # every process built the same one

    train_rows = encode(tokenizer, splits["train"])
    model = build_model(config, tokenizer)
    model.generation_config = generation_config(tokenizer, max(len(r["labels"]) for r in train_rows))

    def evaluate(model_to_evaluate) -> dict:
        metrics, _ = evaluate_rows(model_to_evaluate, tokenizer, splits["validation"], config.eval_batch_size)
        # the per-statement accuracies give each step its learning curve in diagnosis.png
        statements = {name: m["accuracy"] for name, m in metrics["diagnosis"]["statement_accuracy"].items()}
        return {**{k: v for k, v in metrics["greedy"].items() if k != "by_num_roots"}, "statements": statements}

    summary = engine.train(
        model, train_rows, [len(r["input_ids"]) + len(r["labels"]) for r in train_rows], collator(tokenizer.pad_token_id),
        evaluate, config, run_dir, resume=resume, stop_after_steps=stop_after_steps, progress=progress, deadline=deadline,
    )
    if summary is None:  # not the main process of a multi-process run: that one alone evaluates and writes
        return None
    for name in MODEL_FILES:  # the best model becomes the run's model
        shutil.copyfile(run_dir / engine.BEST / name, run_dir / name)
    engine.plot_curve(run_dir, config.metric_for_best)
    _, evals = engine.read_log(run_dir)
    best = next((e["eval"] for e in evals if e["step"] == summary["best_step"]), None)
    engine.write_json(run_dir / "metrics.json", {"training": summary, "validation_best": best})
    return evaluate_run(run_dir, limit=config.eval_limit, batch_size=config.eval_batch_size, num_beams=config.num_beams, progress=progress)


def plot_diagnosis(run_dir: Path, diagnosed: dict, name: str = "diagnosis.png") -> Path:
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
    path = Path(run_dir) / name
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def load_run(run_dir: Path, command: str = "eval"):
    """(model, tokenizer, config) of a finished quadratic run, or a one-line error (train/runs.py)."""
    return runs.load_run(run_dir, command, task="quadratic")


def evaluate_run(run_dir: Path, split: str = "test", limit: int = 0, batch_size: int | None = None, num_beams: int = 0, progress: bool = True) -> dict:
    """Decode a split with the run's model; write metrics.json and predictions.jsonl."""
    from train import engine

    run_dir = Path(run_dir)
    model, tokenizer, config = load_run(run_dir)
    if torch.cuda.is_available():
        model = model.to("cuda")
    dataset = load_splits(config)[split]
    if limit:
        dataset = dataset.select(range(min(limit, len(dataset))))
    metrics, records = evaluate_rows(model, tokenizer, dataset, batch_size or config.eval_batch_size, num_beams, progress)
    metrics_path = run_dir / "metrics.json"
    everything = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    everything[split] = {"rows": len(dataset), "decoding": "greedy, batched, sorted by input length, key-value cache", **metrics}
    engine.write_json(metrics_path, everything)
    engine.write_jsonl(run_dir / ("predictions.jsonl" if split == "test" else f"predictions-{split}.jsonl"), records)
    if records:
        plot_diagnosis(run_dir, metrics["diagnosis"], "diagnosis.png" if split == "test" else f"diagnosis-{split}.png")
    return everything
