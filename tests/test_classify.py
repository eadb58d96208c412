"""`cli.py train --task classify`: on the quadratic dataset (an equation's number of real roots), on
CSV and JSONL files (texts and text pairs, string and integer labels), with BERT and DeBERTa-v2
built from the config or a local encoder; metrics, predictions, eval, resume and bad input.
(The analyses on classification runs are in the parametrised task tests, tests/test_tasks.py.)"""

import csv
import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

import cli
from gen import QuadlabError
from gen.dataset import GenOptions, generate
from gen.equations import Ranges
from train.classify import build_model, character_tokenizer, load_data, train_run
from train.config import resolve
from train.engine import Interrupted

from test_bad_inputs import quadlab, refused

TINY = {"d_model": 32, "d_ff": 64, "num_layers": 2, "num_heads": 2, "max_length": 64, "stride": 16, "batch_size": 16,
        "max_steps": 12, "eval_every": 6, "val_size": 20, "eval_batch_size": 64}
WORDS = {"pos": ["good", "great", "fine work", "lovely!"], "neg": ["bad", "awful", "poor work", "dreadful."], "meh": ["so-so", "okay"]}


def _config(run_dir, **keys):
    return resolve("tiny", None, {"task": "classify", "run_dir": str(run_dir), **TINY, **keys})


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A small quadratic dataset, a classification run trained on it through the command line, a
    CSV of short reviews and a JSONL of text pairs with integer labels."""
    root = tmp_path_factory.mktemp("classify")
    generate(GenOptions(rows=300, seed=5, ranges=Ranges(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)), root / "data", workers=1)
    args = ["train", "--task", "classify", "--data", root / "data", "--run-dir", root / "run", "--max-steps", 12, "--eval-every", 6,
            "--batch-size", 16, *[a for k, v in TINY.items() if k not in ("max_steps", "eval_every", "batch_size") for a in ("--set", f"{k}={v}")]]
    try:
        cli.main([str(a) for a in args])
    except SystemExit as stop:
        assert stop.code == 0
    with open(root / "reviews.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "review", "stars"])
        for i in range(48):
            label = ("pos", "neg", "meh")[i % 3]
            writer.writerow([i, f"{WORDS[label][i % len(WORDS[label])]}, said reader {i}", label])
    for name, n in (("pairs-train.jsonl", 40), ("pairs-eval.jsonl", 9)):
        with open(root / name, "w") as f:
            for i in range(n):
                f.write(json.dumps({"premise": f"it is {i}", "hypothesis": f"it is {i + i % 3}", "label": (0, 1, 10)[i % 3]}) + "\n")
    return root


def test_train_on_the_quadratic_dataset_end_to_end(lab):
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = lab / "run"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["preset"], config["task"], config["metric_for_best"], config["encoder"]) == ("classify", "classify", "accuracy", "bert")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["labels"] == ["none", "one", "two"] and metrics["training"]["steps"] == 12
    assert set(metrics["validation_best"]) == {"accuracy", "macro_f1"}
    test = metrics["test"]
    assert {"n", "accuracy", "macro_f1", "majority_class", "majority_baseline", "by_label"} <= set(test)
    assert test["n"] == 60 and 0 <= test["accuracy"] <= 1 and 0 <= test["macro_f1"] <= 1
    # the generator's mix is 50% two, 30% one, 20% none in every split
    assert test["majority_class"] == "two" and test["majority_baseline"] == pytest.approx(0.5)
    assert {k: v["n"] for k, v in test["by_label"].items()} == {"none": 12, "one": 18, "two": 30}
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    gold = datasets.load_from_disk(str(lab / "data"))["test"]
    assert [r["text"] for r in records] == list(gold["equation"])
    assert [r["label"] for r in records] == [("none", "one", "two")[k] for k in gold["num_roots"]]
    for r in records:
        assert set(r["probabilities"]) == {"none", "one", "two"} and sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert r["predicted"] == max(r["probabilities"], key=r["probabilities"].get)
    assert test["accuracy"] == pytest.approx(sum(r["predicted"] == r["label"] for r in records) / 60)
    model = AutoModelForSequenceClassification.from_pretrained(str(run))
    assert model.config.model_type == "bert" and model.config.id2label == {0: "none", 1: "one", 2: "two"}
    tokenizer = AutoTokenizer.from_pretrained(str(run))
    assert tokenizer.convert_ids_to_tokens(tokenizer("-7x^2+1=0")["input_ids"]) == ["[CLS]", *"-7x^2+1=0", "[SEP]"]
    assert (run / "training_curve.png").exists() and not list(run.glob("*.tmp*"))


def test_eval_command_on_a_classification_run(lab, tmp_path, capsys, monkeypatch):
    run = shutil.copytree(lab / "run", tmp_path / "run")
    tested = json.loads((run / "metrics.json").read_text())["test"]["n"]
    status, out, err = quadlab(capsys, monkeypatch, "eval", run, "--limit", 10)  # would replace the test of all rows
    assert status == 2 and f"of {tested:,} rows" in err and "--out" in err
    status, out, err = quadlab(capsys, monkeypatch, "eval", run, "--limit", 10, "--out", tmp_path / "check")
    assert status == 0, err
    assert "test (10 rows): accuracy" in out and "majority class two" in out
    assert len((tmp_path / "check" / "predictions.jsonl").read_text().splitlines()) == 10
    status, out, err = quadlab(capsys, monkeypatch, "eval", run, "--split", "validation", "--limit", 5)
    assert status == 0, err
    assert len((run / "predictions-validation.jsonl").read_text().splitlines()) == 5
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["validation"]["n"] == 5 and metrics["test"]["n"] == tested and "training" in metrics


@pytest.mark.parametrize("equation, gold", [("x^2 - 5x + 6 = 0", "two"), ("x^2-4x+4=0", "one"), ("x^2+1=0", "none")])
def test_explain_on_an_equation_run_says_the_true_label(lab, tmp_path, equation, gold):
    """The given equation's true label is its number of real roots, as the dataset labels it."""
    from analyze.maps import explain

    result = explain(lab / "run", {"text": equation}, tmp_path / "explain")
    answer = result["answer"]
    assert answer["gold"] == gold and answer["label"] in answer["probabilities"]
    assert result["lines"][0].startswith(f"label: {answer['label']} (true: {gold}; probabilities: none ")


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(lab, tmp_path):
    keys = {"data": str(lab / "data"), "max_steps": 12, "eval_every": 6, "dropout_rate": 0.1, "eval_limit": 8}
    train_run(_config(tmp_path / "whole", **keys), progress=False)
    with pytest.raises(Interrupted):
        train_run(_config(tmp_path / "broken", **keys), stop_after_steps=8, progress=False)  # between checkpoints
    train_run(_config(tmp_path / "broken", **keys), resume=True, progress=False)
    a = load_file(tmp_path / "whole" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "broken" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = lambda p: [json.loads(line)["loss"] for line in (p / "log.jsonl").read_text().splitlines() if "loss" in line]
    assert losses(tmp_path / "whole") == losses(tmp_path / "broken") and len(losses(tmp_path / "whole")) == 12


def test_a_csv_with_string_labels_and_a_held_out_test_split(lab, tmp_path):
    from transformers import AutoModelForSequenceClassification

    run = tmp_path / "run"
    metrics = train_run(_config(run, train_file=str(lab / "reviews.csv"), text_column="review", label_column="stars", val_size=6,
                                eval_fraction=0.25), progress=False)
    assert metrics["labels"] == ["meh", "neg", "pos"] and metrics["test"]["n"] == 12
    assert 0 <= metrics["test"]["macro_f1"] <= 1 and metrics["test"]["majority_class"] in ("meh", "neg", "pos")
    records = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    with open(lab / "reviews.csv", newline="") as f:
        rows = {r["review"]: r["stars"] for r in csv.DictReader(f)}
    assert len(records) == 12 and all(rows[r["text"]] == r["label"] for r in records)
    data = load_data(resolve("classify", None, {"train_file": str(lab / "reviews.csv"), "text_column": "review", "label_column": "stars",
                                                "val_size": 6, "eval_fraction": 0.25}))
    assert {r["text"] for r in data["test"]} == set(r["text"] for r in records)  # the same split, by the seed
    assert not {r["text"] for r in data["test"]} & {r["text"] for r in data["train"] + data["validation"]}
    assert AutoModelForSequenceClassification.from_pretrained(str(run)).config.label2id == {"meh": 0, "neg": 1, "pos": 2}


def test_jsonl_text_pairs_with_integer_labels_and_an_eval_file(lab, tmp_path):
    run = tmp_path / "run"
    metrics = train_run(_config(run, train_file=str(lab / "pairs-train.jsonl"), eval_file=str(lab / "pairs-eval.jsonl"),
                                text_column="premise", text_pair_column="hypothesis", val_size=5), progress=False)
    assert metrics["labels"] == ["0", "1", "10"] and metrics["test"]["n"] == 9  # integers in numeric order
    record = json.loads((run / "predictions.jsonl").read_text().splitlines()[0])
    assert (record["text"], record["text_pair"], record["label"]) == ("it is 0", "it is 0", "0")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(run))
    encoded = tokenizer("ab", "c")
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == ["[CLS]", "[UNK]", "[UNK]", "[SEP]", "[UNK]", "[SEP]"]
    assert encoded["token_type_ids"] == [0, 0, 0, 0, 1, 1]


def test_deberta_v2_builds_and_trains(lab, tmp_path):
    from transformers import AutoModelForSequenceClassification

    run = tmp_path / "run"
    metrics = train_run(_config(run, data=str(lab / "data"), encoder="deberta-v2", max_steps=3, eval_every=3, eval_limit=8), progress=False)
    assert metrics["training"]["steps"] == 3 and metrics["test"]["n"] == 8
    assert AutoModelForSequenceClassification.from_pretrained(str(run)).config.model_type == "deberta-v2"


def test_a_local_encoder_gets_a_new_head_for_the_labels(lab, tmp_path):
    """--model DIR: an encoder saved with its tokenizer, here with three labels, fine-tuned for two."""
    from transformers import AutoModelForSequenceClassification

    csv_file = tmp_path / "two.csv"
    csv_file.write_text("text,label\n" + "".join(f"row {i},{'yes' if i % 2 else 'no'}\n" for i in range(30)))
    config = _config(tmp_path / "unused", train_file=str(csv_file), val_size=4)
    data = load_data(config)
    tokenizer = character_tokenizer(data)
    build_model(config, tokenizer, ["a", "b", "c"]).save_pretrained(str(tmp_path / "encoder"))
    tokenizer.save_pretrained(str(tmp_path / "encoder"))
    metrics = train_run(_config(tmp_path / "run", train_file=str(csv_file), val_size=4, model_name=str(tmp_path / "encoder"), max_steps=2,
                                eval_every=2), progress=False)
    assert metrics["labels"] == ["no", "yes"]
    assert AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "run")).config.num_labels == 2


@pytest.mark.parametrize("content, keys, message", [
    (None, {}, "does not exist"),
    ("", {}, "is empty"),
    ("text,label\n", {}, "has no rows"),
    ("text,stars\nhello,1\nbye,2\n", {}, "has no column 'label'"),
    ("text,label\nhello,a\nbye,a\nagain,a\nmore,a\n", {}, "at least 2"),
    ("text,label\nhello,a\nbye,\nagain,b\nmore,b\n", {}, "row 3 has an empty 'label'"),
    ("text,label\nhello,a\nbye,b\nagain,a\nmore,b\n", {"text_pair_column": "second"}, "has no column 'second'"),
    (b"text,label\n\xff\xfe,a\n", {}, "cannot be read as UTF-8"),
    ('{"text": "a", "label": 1}\nnot json\n', {}, "line 2 is not JSON"),
    ('{"text": "a", "label": 1}\n[1, 2]\n', {}, "line 2 is not a JSON object"),
    ('{"text": "a", "label": [1]}\n', {}, "line 1 has a list as its 'label'"),
    ("text,label\nhello,a\n", {}, r"holding out 1 of 1 row for the test split leaves none to train on; give more rows, or an --eval-file"),
    ("text,label\nhello,a\nbye,b\n", {"val_size": 5}, r"holding out 5 of the 1 training row for validation .* lower --set val_size=N"),
])
def test_bad_data_is_refused_before_anything_is_written(tmp_path, content, keys, message):
    path = tmp_path / ("data.jsonl" if isinstance(content, str) and content.startswith("{") else "data.csv")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(QuadlabError, match=message):
        train_run(_config(tmp_path / "run", train_file=str(path), **{"val_size": 1, **keys}), progress=False)
    assert not (tmp_path / "run").exists()


def test_bad_input_on_the_command_line_is_one_line_and_exit_2(lab, tmp_path, capsys, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    run = tmp_path / "run"
    line = refused(capsys, monkeypatch, tmp_path / "cwd", "train", "--task", "classify", "--train-file", lab / "reviews.csv",
                   "--run-dir", run, absent=(run,))
    assert "has no column 'text' or 'label'" in line and "text_column" in line
    (tmp_path / "no-tokenizer").mkdir()
    shutil.copy(lab / "run" / "config.json", tmp_path / "no-tokenizer")
    shutil.copy(lab / "run" / "model.safetensors", tmp_path / "no-tokenizer")
    line = refused(capsys, monkeypatch, tmp_path / "cwd", "train", "--task", "classify", "--data", lab / "data", "--set", "val_size=20", "--model",
                   tmp_path / "no-tokenizer", "--run-dir", run, absent=(run,))
    assert "holds no tokenizer" in line
    line = refused(capsys, monkeypatch, tmp_path / "cwd", "train", "--task", "classify", "--set", "hub_dataset=glue/sst2", "--run-dir", run,
                   absent=(run,))
    assert "cannot load glue/sst2 from the hub" in line and "--train-file" in line
    line = refused(capsys, monkeypatch, tmp_path / "cwd", "train", "--task", "classify", "--data", lab / "data", "--set", "encoder=gpt",
                   "--run-dir", run, absent=(run,))
    assert "encoder must be bert or deberta-v2" in line
