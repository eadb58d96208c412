import json

import pytest

from gen import QuadlabError
from train.config import resolve
from train.squad import train_run
from train.squad_data import read_squad

from conftest import SQUAD_SAMPLE, SQUAD_SAMPLE_V2, quadlab, tiny_squad_encoder


@pytest.fixture(scope="module")
def small_squad(tmp_path_factory):
    """The fixture's six articles (four paragraphs each) and a tiny BERT built here, untrained."""
    root = tmp_path_factory.mktemp("squad")
    _, small = read_squad(SQUAD_SAMPLE)
    tiny_squad_encoder(small, root, vocab_size=1500, hidden_size=32, max_positions=256)
    return root


def test_squad_end_to_end_on_a_tiny_encoder(small_squad):
    run = small_squad / "run"
    config = resolve("squad", None, {"model_name": str(small_squad / "encoder"), "train_file": str(SQUAD_SAMPLE),
                                     "eval_articles": 1, "run_dir": str(run), "max_steps": 12, "eval_every": 6, "batch_size": 8,
                                     "max_length": 96, "stride": 32, "learning_rate": 1e-3})
    result = train_run(config, progress=False)
    predictions = json.loads((run / "predictions.json").read_text())
    _, articles = read_squad(SQUAD_SAMPLE)
    eval_ids = {q["id"] for p in articles[-1]["paragraphs"] for q in p["qas"]}
    assert set(predictions) == eval_ids and all(isinstance(v, str) for v in predictions.values())  # the official format
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["exact_match"] <= metrics["f1"] <= 100 and metrics["total"] == len(eval_ids)
    assert metrics["data"]["eval_articles"] == [articles[-1]["title"]] and len(metrics["data"]["train_articles"]) == 5
    assert result["training"]["steps"] == 12 and (run / "training_curve.png").exists()
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    assert AutoModelForQuestionAnswering.from_pretrained(str(run)) and AutoTokenizer.from_pretrained(str(run))


def test_prior_study_yaml_keys_configure_a_squad_run(small_squad, tmp_path):
    yaml_file = tmp_path / "prior.yaml"
    yaml_file.write_text(f"task: squad\nmodel_name: {small_squad / 'encoder'}\nepochs: 1\nlearning_rate: 0.00003\nbatch_size: 16\n"
                         f"max_length: 384\nstride: 128\npadding: max_length\npatience: 2\nbest_model_path: {tmp_path / 'best'}\n")
    config = resolve("tiny", str(yaml_file))
    assert (config.preset, config.task, config.metric_for_best, config.padding, config.max_length) == ("squad", "squad", "f1", "max_length", 384)


def test_squad_bad_inputs(small_squad, tmp_path):
    with pytest.raises(QuadlabError, match="does not exist"):
        train_run(resolve("squad", None, {"model_name": str(small_squad / "encoder"), "train_file": str(tmp_path / "none.json"),
                                          "run_dir": str(tmp_path / "r")}), progress=False)
    with pytest.raises(QuadlabError, match="cannot load model"):
        train_run(resolve("squad", None, {"model_name": str(tmp_path / "no-model"), "train_file": str(SQUAD_SAMPLE),
                                          "eval_articles": 1, "run_dir": str(tmp_path / "r")}), progress=False)
    assert not (tmp_path / "r").exists()


@pytest.fixture
def offline(monkeypatch):
    """No hub: every connection fails as on a machine without DNS; the tries are recorded. Without
    HF_HUB_OFFLINE (the suite sets it) and proxies, as for a user who has not set them."""
    tried = []

    def refuse(address, timeout=None, *args, **kwargs):
        tried.append((address, timeout))
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("socket.create_connection", refuse)
    return tried


def test_an_unreachable_hub_is_one_line_at_once(offline, tmp_path, capsys, monkeypatch):
    """Offline, the hub libraries retry for about half a minute, printing each retry: one connection
    to the hub tells at once, and the error says what to give instead."""
    from train.squad import HUB_TIMEOUT, check_hub

    commands = {
        "model 'microsoft/deberta-v3-base'": ("--task", "squad", "--train-file", SQUAD_SAMPLE, "--set", "eval_articles=1"),
        "squad;": ("--task", "squad"),
        "glue/sst2;": ("--task", "classify", "--set", "hub_dataset=glue/sst2"),
    }
    for what, argv in commands.items():
        status, out, err = quadlab(capsys, monkeypatch, "train", *argv, "--run-dir", tmp_path / "r")
        assert status == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert f"cannot reach the hub (huggingface.co: Name or service not known) to load {what}" in err and "HF_HUB_OFFLINE=1" in err
        assert offline.pop() == (("huggingface.co", 443), HUB_TIMEOUT) and not offline
    assert not (tmp_path / "r").exists()
    status, _, err = quadlab(capsys, monkeypatch, "train", "--task", "squad", "--model", "./no-model", "--train-file", SQUAD_SAMPLE,
                             "--set", "eval_articles=1", "--run-dir", tmp_path / "r")
    assert status == 2 and "cannot load model './no-model'" in err and not offline  # a path, not a hub name: no hub asked
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    check_hub("squad", "")  # through a proxy the hub may be reachable: the libraries find out
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    check_hub("squad", "")  # the libraries read their cache alone
    assert not offline


@pytest.fixture(scope="module")
def squad_run(small_squad):
    run = small_squad / "run-maps"
    config = resolve("squad", None, {"model_name": str(small_squad / "encoder"), "train_file": str(SQUAD_SAMPLE),
                                     "eval_articles": 1, "run_dir": str(run), "max_steps": 4, "eval_every": 4, "batch_size": 8,
                                     "max_length": 96, "stride": 32})
    train_run(config, progress=False)
    return run


def test_ask_prints_answer_and_the_question_tokens_the_answer_attends_to(squad_run, tmp_path, capsys, monkeypatch):
    status, out, err = quadlab(capsys, monkeypatch, "ask", "--run", squad_run, "--question", "Which team won Super Bowl 50?",
                               "--context", "The Denver Broncos defeated the Carolina Panthers to win Super Bowl 50.", "--out", tmp_path / "a")
    assert status == 0, err
    assert out.startswith("answer: ") and (tmp_path / "a" / "example-ask" / "encoder-heads.png").exists()
    status, _, err = quadlab(capsys, monkeypatch, "ask", "--run", squad_run, "--question", "Who?", "--context", "  ")
    assert status == 2 and "context is empty" in err and len(err.strip().splitlines()) == 1
    status, _, err = quadlab(capsys, monkeypatch, "ask", "--run", squad_run, "--question", "why " * 200, "--context", "Because.")
    assert status == 2 and "longer than max_length" in err


def test_eval_command_on_a_squad_run(squad_run, tmp_path, capsys, monkeypatch):
    status, out, err = quadlab(capsys, monkeypatch, "eval", squad_run, "--limit", "10", "--out", tmp_path / "check")
    assert status == 0, err
    assert "exact match" in out and "on 10 questions" in out
    assert len(json.loads((tmp_path / "check" / "predictions.json").read_text())) == 10


def test_squad_v2_with_unanswerable_questions_end_to_end(small_squad, tmp_path):
    config = resolve("squad", None, {"model_name": str(small_squad / "encoder"), "train_file": str(SQUAD_SAMPLE_V2),
                                     "eval_articles": 1, "run_dir": str(tmp_path / "run"), "max_steps": 4, "eval_every": 4,
                                     "batch_size": 8, "max_length": 96, "stride": 32, "null_threshold": 0.0})
    metrics = train_run(config, progress=False)
    assert metrics["squad_version"] == "2.0"
    assert metrics["HasAns_total"] + metrics["NoAns_total"] == metrics["total"] and metrics["NoAns_total"] > 0
