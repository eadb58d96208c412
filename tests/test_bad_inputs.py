"""Every command of cli.py, given a run of the other task, a damaged run, a dataset of the wrong kind
or an empty file, prints one line that says what is wrong and how to fix it, exits 2, and leaves
nothing half-written (issue 11). This module is the complete walk.

cli.main runs in-process (a subprocess costs ~4 s of imports): it ends in SystemExit, so any other
exception (a traceback) escapes and fails the test. Two subprocess calls check that the real entry
point behaves the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cli
from conftest import SQUAD_SAMPLE, quadlab, snapshot, tiny_squad_encoder
from gen.dataset import GenOptions, generate
from gen.equations import Ranges
from train.config import resolve

FEW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Built once, never damaged (cases damage copies): a tiny dataset, a quadratic run trained 5 steps
    on it, a cut of the SQuAD fixture, an untrained tiny BERT, and a SQuAD run trained 2 steps."""
    import datasets

    from train.quadratic import train_run as train_quadratic
    from train.squad import train_run as train_squad

    root = tmp_path_factory.mktemp("lab")
    generate(GenOptions(rows=60, seed=0, ranges=Ranges(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)), root / "data", workers=1)
    train_quadratic(resolve("tiny", None, {"data": str(root / "data"), "run_dir": str(root / "quadratic"), "max_steps": 5, "eval_every": 5,
                                           "val_size": 4, "batch_size": 8, "eval_batch_size": 16, "eval_limit": 4}), progress=False)

    articles = [{"title": a["title"], "paragraphs": a["paragraphs"][:2]} for a in json.loads(SQUAD_SAMPLE.read_text())["data"][:3]]
    (root / "squad.json").write_text(json.dumps({"version": "1.1", "data": articles}))
    tiny_squad_encoder(articles, root, vocab_size=600, hidden_size=16, max_positions=128)
    train_squad(resolve("squad", None, {"model_name": str(root / "encoder"), "train_file": str(root / "squad.json"), "eval_articles": 1,
                                        "run_dir": str(root / "squad"), "max_steps": 2, "eval_every": 2, "batch_size": 8,
                                        "max_length": 64, "stride": 16}), progress=False)

    # datasets of the wrong kind, for `train --data` and for a run whose config.yaml names them
    good = datasets.load_from_disk(str(root / "data"))
    bad = root / "bad-data"
    (bad / "a directory of other files").mkdir(parents=True)
    (bad / "a directory of other files" / "notes.txt").write_text("not a dataset\n")
    (bad / "an empty directory").mkdir()
    other = datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]})
    datasets.DatasetDict({"train": other, "test": other}).save_to_disk(str(bad / "other columns"))
    good["train"].save_to_disk(str(bad / "one split saved alone"))
    datasets.DatasetDict({"train": good["train"]}).save_to_disk(str(bad / "no test split"))
    datasets.DatasetDict({"train": good["train"].select([]), "test": good["test"]}).save_to_disk(str(bad / "an empty train split"))
    shutil.copytree(root / "data", bad / "a truncated arrow file")
    for arrow in (bad / "a truncated arrow file" / "train").glob("*.arrow"):
        arrow.write_bytes(arrow.read_bytes()[:100])
    return root


def bad_datasets(lab: Path) -> dict[str, Path]:
    made = {p.name: p for p in (lab / "bad-data").iterdir()}
    return {**made, "missing": lab / "bad-data" / "missing", "a SQuAD JSON file": lab / "squad.json", "a run directory": lab / "quadratic"}


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """An empty working directory: whatever a command writes to a default path (figures/, runs/)
    lands here, where the test sees it."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path / "cwd"


def refused(capsys, monkeypatch, cwd: Path, *argv, untouched: tuple[Path, ...] = (), absent: tuple[Path, ...] = (), stdin: bytes = b"") -> str:
    """Run a command that must fail: exit 2, one line on stderr and no traceback; the paths in
    `untouched` keep every file as it was, those in `absent` are not created, nor is anything in
    the working directory. Returns the error line."""
    before = {p: snapshot(p) for p in untouched}
    status, _, err = quadlab(capsys, monkeypatch, *argv, stdin=stdin)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, (argv, status, err)
    assert lines[0].startswith("quadlab") and len(lines[0]) > len("quadlab: error: ") + 10, err
    assert {p: snapshot(p) for p in untouched} == before, "a failed command changed its input"
    assert not [p for p in absent if p.exists()], "a failed command left output behind"
    assert not list(cwd.iterdir()), "a failed command wrote into the working directory"
    return lines[0]


def copy_run(lab: Path, task: str, to: Path) -> Path:
    shutil.copytree(lab / task, to)
    return to


# ---------------------------------------------------------------------------------------------
# Damaged runs, for every command that reads a run


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _replace_with_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


DAMAGE = {
    "no model.safetensors": lambda run: (run / "model.safetensors").unlink(),
    "truncated model.safetensors": lambda run: _truncate(run / "model.safetensors"),
    "empty model.safetensors": lambda run: (run / "model.safetensors").write_bytes(b""),
    "no tokenizer.json": lambda run: (run / "tokenizer.json").unlink(),
    "garbage tokenizer.json": lambda run: (run / "tokenizer.json").write_text('{"model": 1'),
    "no config.yaml": lambda run: (run / "config.yaml").unlink(),
    "empty config.yaml": lambda run: (run / "config.yaml").write_bytes(b""),
    "config.yaml not UTF-8": lambda run: (run / "config.yaml").write_bytes(b"task: \xff\xfe\n"),
    "config.yaml not YAML": lambda run: (run / "config.yaml").write_text("task: [\n"),
    "config.yaml a list": lambda run: (run / "config.yaml").write_text("- task\n- squad\n"),
    "config.yaml without task": lambda run: (run / "config.yaml").write_text("seed: 1\n"),
    "config.yaml unknown key": lambda run: (run / "config.yaml").write_text((run / "config.yaml").read_text() + "colour: red\n"),
    "config.yaml a directory": lambda run: _replace_with_directory(run / "config.yaml"),
    "no config.json": lambda run: (run / "config.json").unlink(),
    "empty config.json": lambda run: (run / "config.json").write_bytes(b""),
    "config.json of an unknown model": lambda run: (run / "config.json").write_text('{"model_type": "no-such-model"}'),
}

RUN_COMMANDS = {
    "eval": lambda lab, run, out: ["eval", run, "--limit", 2],
    "maps": lambda lab, run, out: ["maps", "--run", run, "--limit", 2, "--out", out],
    "heads": lambda lab, run, out: ["heads", run, "--limit", 2, "--eval-limit", 1, "--no-importance", "--out", out],
    "heads --compare": lambda lab, run, out: ["heads", lab / _task(run), "--compare", run, "--limit", 2, "--no-importance", "--out", out],
    "patch": lambda lab, run, out: ["patch", run, "--pairs", 2, "--out", out],
    "explain": lambda lab, run, out: ["explain", "x^2-5x+6=0", "--run", run, "--out", out],
    "ask": lambda lab, run, out: ["ask", "--run", run, "--question", "Who won?", "--context", "The Broncos won.", "--out", out],
}


def _task(run: Path) -> str:
    return "squad" if run.name.startswith("squad") else "quadratic"  # copies are named <task>-<what>


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("task", ["quadratic", "squad"])
@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_a_damaged_run_is_one_line_and_exit_2(lab, tmp_path, cwd, capsys, monkeypatch, command, task, damage):
    run = tmp_path / f"{task}-run"
    shutil.copytree(lab / task, run, ignore=shutil.ignore_patterns("checkpoint", "best"))
    DAMAGE[damage](run)
    out = tmp_path / "figs"
    refused(capsys, monkeypatch, cwd, *RUN_COMMANDS[command](lab, run, out), untouched=(run, lab / task), absent=(out,))


RESUME_DAMAGE = ["no config.yaml", "empty config.yaml", "config.yaml not UTF-8", "config.yaml a list", "config.yaml unknown key",
                 "config.yaml a directory", "no checkpoint", "truncated checkpoint model", "truncated optimizer state"]


# a SQuAD run resumes with the tokenizer of its --model, so only a quadratic run's own tokenizer matters
@pytest.mark.parametrize("task, damage", [("quadratic", "no tokenizer.json"), ("quadratic", "garbage tokenizer.json")]
                         + [(task, damage) for task in ("quadratic", "squad") for damage in RESUME_DAMAGE])
def test_resuming_a_damaged_run_is_one_line_and_exit_2(lab, tmp_path, cwd, capsys, monkeypatch, task, damage):
    run = copy_run(lab, task, tmp_path / f"{task}-run")
    if damage == "no checkpoint":
        shutil.rmtree(run / "checkpoint")
    elif damage == "truncated checkpoint model":
        _truncate(run / "checkpoint" / "model.safetensors")
    elif damage == "truncated optimizer state":
        _truncate(run / "checkpoint" / "optimizer.bin")
    else:
        DAMAGE[damage](run)
    refused(capsys, monkeypatch, cwd, "train", "--resume", "--run-dir", run, untouched=(run, lab / task))


def test_extending_a_run_to_fewer_steps_is_one_line_and_exit_2(lab, tmp_path, cwd, capsys, monkeypatch):
    run = copy_run(lab, "quadratic", tmp_path / "quadratic-run")
    line = refused(capsys, monkeypatch, cwd, "train", "--resume", "--run-dir", run, "--max-steps", "1", untouched=(run, lab / "quadratic"))
    assert "--max-steps 1 is fewer than the" in line


# ---------------------------------------------------------------------------------------------
# A run of the other task, and no run at all


def test_a_run_of_the_other_task_says_which_task_it_needs(lab, tmp_path, cwd, capsys, monkeypatch):
    out = tmp_path / "figs"
    line = refused(capsys, monkeypatch, cwd, "ask", "--run", lab / "quadratic", "--question", "hi", "--context", "there", "--out", out,
                   untouched=(lab / "quadratic",), absent=(out,))
    assert "is a quadratic run; `ask` needs a SQuAD run (train one with `python cli.py train --task squad" in line
    line = refused(capsys, monkeypatch, cwd, "explain", "x^2-1=0", "--run", lab / "squad", "--out", out, untouched=(lab / "squad",), absent=(out,))
    assert "the context is empty; give the passage to answer from with --context" in line  # explain serves every task: TEXT is the question
    line = refused(capsys, monkeypatch, cwd, "heads", lab / "quadratic", "--compare", lab / "squad", "--out", out, absent=(out,))
    assert "--compare" in line and "is a SQuAD run; `heads --compare` needs a quadratic run" in line
    line = refused(capsys, monkeypatch, cwd, "maps", "--run", lab / "quadratic", "--question", "hi", "--context", "there", "--out", out, absent=(out,))
    assert "is a quadratic run; --question and --context do not apply to it (give its example with --equation)" in line
    line = refused(capsys, monkeypatch, cwd, "maps", "--run", lab / "squad", "--equation", "x^2-1=0", "--out", out, absent=(out,))
    assert "is a SQuAD run; --equation does not apply to it (give its example with --question and --context)" in line


def test_not_a_run_directory(lab, tmp_path, cwd, capsys, monkeypatch):
    out = tmp_path / "figs"
    (tmp_path / "empty").mkdir()
    for not_a_run, says in ((tmp_path / "missing", "does not exist"), (lab / "squad.json", "it is a file"),
                            (tmp_path / "empty", "missing config.yaml"), (lab / "data", "missing config.yaml")):
        for command in RUN_COMMANDS:
            line = refused(capsys, monkeypatch, cwd, *RUN_COMMANDS[command](lab, not_a_run, out), absent=(out,))
            assert says in line and "cli.py train" in line, line
        line = refused(capsys, monkeypatch, cwd, "train", "--resume", "--run-dir", not_a_run)
        assert says in line


def test_without_run_the_newest_finished_run_of_the_task_is_needed(lab, cwd, capsys, monkeypatch):
    line = refused(capsys, monkeypatch, cwd, "maps")
    assert "no finished run under runs/" in line and "python cli.py train" in line
    line = refused(capsys, monkeypatch, cwd, "explain", "x^2-1=0")
    assert "no finished quadratic run under runs/" in line
    shutil.copytree(lab / "squad", cwd / "runs" / "squad-run", ignore=shutil.ignore_patterns("checkpoint", "best"))
    status, _, err = quadlab(capsys, monkeypatch, "explain", "x^2-1=0", "--out", cwd.parent / "figs")
    assert status == 2 and "no finished quadratic run under runs/" in err and not (cwd.parent / "figs").exists()
    _truncate(cwd / "runs" / "squad-run" / "model.safetensors")  # the newest run is damaged: say so
    status, _, err = quadlab(capsys, monkeypatch, "maps", "--out", cwd.parent / "figs")
    assert status == 2 and "is damaged" in err and len(err.strip().splitlines()) == 1 and not (cwd.parent / "figs").exists()


# ---------------------------------------------------------------------------------------------
# Datasets of the wrong kind


@pytest.mark.parametrize("command", ["train", "eval", "maps", "heads"])
def test_a_dataset_of_the_wrong_kind_is_one_line_and_exit_2(lab, tmp_path, cwd, capsys, monkeypatch, command):
    for kind, data in bad_datasets(lab).items():
        out, new_run = tmp_path / "figs", tmp_path / "new-run"
        if command == "train":
            line = refused(capsys, monkeypatch, cwd, "train", "--data", data, "--run-dir", new_run, "--max-steps", 1,
                           untouched=(data,), absent=(new_run,))
        else:
            run = tmp_path / f"quadratic-{kind}"
            shutil.copytree(lab / "quadratic", run, ignore=shutil.ignore_patterns("checkpoint", "best"))
            config = yaml.safe_load((run / "config.yaml").read_text())
            (run / "config.yaml").write_text(yaml.safe_dump({**config, "data": str(data)}, sort_keys=False))
            line = refused(capsys, monkeypatch, cwd, *RUN_COMMANDS[command](lab, run, out), untouched=(run, data), absent=(out,))
        assert str(data) in line and "cli.py gen" in line, (kind, line)


# ---------------------------------------------------------------------------------------------
# SQuAD files and models of the wrong kind


def bad_squad_files(lab: Path, where: Path) -> dict[str, Path]:
    one = lambda qa: {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "Ada won.", "qas": [qa]}]}] * 3}
    contents = {
        "empty": b"", "blank lines": b"\n\n", "not UTF-8": b'{"data": "\xff\xfe"}', "not JSON": b"{not json", "a JSON list": b"[1, 2]",
        "no data list": json.dumps({"version": "1.1"}).encode(),
        "paragraphs not a list": json.dumps({"data": [{"title": "t", "paragraphs": "p"}]}).encode(),
        "a question without answers": json.dumps(one({"id": "1", "question": "Who?"})).encode(),
        "an answer without answer_start": json.dumps(one({"id": "1", "question": "Who?", "answers": [{"text": "Ada"}]})).encode(),
        "no questions": json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": []}] * 3}).encode(),
    }
    where.mkdir()
    files = {}
    for name, content in contents.items():
        files[name] = where / f"{name}.json"
        files[name].write_bytes(content)
    (where / "a directory").mkdir()
    return {**files, "missing": where / "missing.json", "a directory": where / "a directory", "a quadratic dataset": lab / "data"}


@pytest.mark.parametrize("role", ["--train-file", "--eval-file", "a run's train_file"])
def test_a_squad_file_of_the_wrong_kind_is_one_line_and_exit_2(lab, tmp_path, cwd, capsys, monkeypatch, role):
    for kind, bad in bad_squad_files(lab, tmp_path / "files").items():
        new_run, out = tmp_path / "new-run", tmp_path / "figs"
        squad = ["train", "--task", "squad", "--model", lab / "encoder", "--run-dir", new_run, "--max-steps", 1, "--set", "eval_articles=1"]
        if role == "--train-file":
            lines = [refused(capsys, monkeypatch, cwd, *squad, "--train-file", bad, untouched=(bad,), absent=(new_run,))]
        elif role == "--eval-file":
            lines = [refused(capsys, monkeypatch, cwd, *squad, "--train-file", lab / "squad.json", "--eval-file", bad,
                             untouched=(bad,), absent=(new_run,))]
        else:
            run = tmp_path / f"squad-{kind}"
            shutil.copytree(lab / "squad", run, ignore=shutil.ignore_patterns("checkpoint", "best"))
            config = yaml.safe_load((run / "config.yaml").read_text())
            (run / "config.yaml").write_text(yaml.safe_dump({**config, "train_file": str(bad)}, sort_keys=False))
            lines = [refused(capsys, monkeypatch, cwd, *RUN_COMMANDS[command](lab, run, out), untouched=(run,), absent=(out,))
                     for command in ("eval", "maps", "heads")]
        assert all("SQuAD" in line for line in lines), (kind, lines)


def test_a_model_that_is_no_encoder_is_one_line_and_exit_2(lab, tmp_path, cwd, capsys, monkeypatch):
    broken = tmp_path / "encoders"
    shutil.copytree(lab / "encoder", broken / "truncated weights")
    _truncate(broken / "truncated weights" / "model.safetensors")
    shutil.copytree(lab / "encoder", broken / "no tokenizer", ignore=shutil.ignore_patterns("tokenizer*", "vocab.txt", "special_tokens_map.json"))
    (broken / "an empty directory").mkdir()
    models = {"missing": broken / "missing", "a file": lab / "squad.json", "a quadratic run": lab / "quadratic",
              "fewer positions than max_length 384": lab / "encoder", **{p.name: p for p in broken.iterdir()}}
    for kind, model in models.items():
        new_run = tmp_path / "new-run"
        line = refused(capsys, monkeypatch, cwd, "train", "--task", "squad", "--model", model, "--train-file", lab / "squad.json",
                       "--set", "eval_articles=1", "--run-dir", new_run, untouched=(model,), absent=(new_run,))
        assert str(model) in line, (kind, line)


# ---------------------------------------------------------------------------------------------
# Configuration files, run directories and output paths of `train` and `gen`


CONFIGS = {"empty": b"", "blank lines": b"\n\n", "not UTF-8": b"max_steps: \xff\n", "not YAML": b"max_steps: [\n", "a list": b"- 1\n",
           "unknown key": b"colour: red\n", "a number as text": b"max_steps: many\n", "a list as preset": b"preset: [tiny]\n",
           "an unknown compile mode": b"compile_mode: fastest\n"}


def test_a_bad_config_file_is_one_line_and_exit_2(lab, tmp_path, cwd, capsys, monkeypatch):
    (tmp_path / "a directory").mkdir()
    files = {"missing": tmp_path / "missing.yaml", "a directory": tmp_path / "a directory"}
    for name, content in CONFIGS.items():
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_bytes(content)
    new_run = tmp_path / "new-run"
    for kind, path in files.items():
        line = refused(capsys, monkeypatch, cwd, "train", "--config", path, "--data", lab / "data", "--run-dir", new_run, absent=(new_run,))
        assert "config" in line or "preset" in line, (kind, line)

# numbers outside what a command can use: a negative seed reached numpy (a traceback); a negative
# --max-steps trained for epochs instead; eval's --batch-size 0 was called negative
OUT_OF_RANGE = {
    "train --seed -1": lambda lab, new_run: ["train", "--data", lab / "data", "--run-dir", new_run, "--seed", -1],
    "train --set seed=-1": lambda lab, new_run: ["train", "--data", lab / "data", "--run-dir", new_run, "--set", "seed=-1"],
    "train --set seed=2**32": lambda lab, new_run: ["train", "--data", lab / "data", "--run-dir", new_run, "--set", f"seed={2**32}"],
    "train --max-steps -3": lambda lab, new_run: ["train", "--data", lab / "data", "--run-dir", new_run, "--max-steps", -3],
    "train --epochs -1": lambda lab, new_run: ["train", "--data", lab / "data", "--run-dir", new_run, "--epochs", -1],
    "train --num-beams -1": lambda lab, new_run: ["train", "--data", lab / "data", "--run-dir", new_run, "--num-beams", -1],
    "train --set eval_batch_size=0": lambda lab, new_run: ["train", "--data", lab / "data", "--run-dir", new_run, "--set", "eval_batch_size=0"],
    "train --set d_kv=0": lambda lab, new_run: ["train", "--data", lab / "data", "--run-dir", new_run, "--set", "d_kv=0"],
    "eval --batch-size 0": lambda lab, new_run: ["eval", lab / "quadratic", "--batch-size", 0, "--out", new_run],
    "eval --num-beams -1": lambda lab, new_run: ["eval", lab / "quadratic", "--num-beams", -1, "--out", new_run],
    "eval --beams-below 0": lambda lab, new_run: ["eval", lab / "quadratic", "--num-beams", 2, "--beams-below", 0, "--out", new_run],
    "eval --beams-below 1.5": lambda lab, new_run: ["eval", lab / "quadratic", "--num-beams", 2, "--beams-below", 1.5, "--out", new_run],
    "probe --seed -1": lambda lab, new_run: ["probe", lab / "quadratic", "--seed", -1, "--out", new_run],
}


@pytest.mark.parametrize("case", OUT_OF_RANGE)
def test_a_number_out_of_range_is_one_line_and_exit_2(lab, tmp_path, cwd, capsys, monkeypatch, case):
    new_run = tmp_path / "out"
    line = refused(capsys, monkeypatch, cwd, *OUT_OF_RANGE[case](lab, new_run), absent=(new_run,), untouched=(lab / "quadratic",))
    words = case.split()
    option = words[2].split("=")[0] if words[1] == "--set" else words[1].removeprefix("--")  # the error names it
    assert option.replace("-", "_") in line.replace("-", "_"), line


def test_beams_below_without_beams_is_one_line_and_exit_2(lab, tmp_path, cwd, capsys, monkeypatch):
    line = refused(capsys, monkeypatch, cwd, "eval", lab / "quadratic", "--beams-below", 0.7, "--out", tmp_path / "out",
                   absent=(tmp_path / "out",), untouched=(lab / "quadratic",))
    assert "--beams-below" in line and "give --num-beams K" in line


def test_an_output_path_blocked_by_a_file_is_one_line_and_exit_2(lab, tmp_path, cwd, capsys, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("keep me\n")
    for out in (blocker, blocker / "sub"):
        for argv in (["gen", "--rows", 20, "--workers", 1, "--out", out], ["train", "--data", lab / "data", "--run-dir", out],
                     *[RUN_COMMANDS[c](lab, lab / task, out) for c, task in (("maps", "quadratic"), ("heads", "squad"),
                                                                             ("explain", "quadratic"), ("ask", "squad"))]):
            line = refused(capsys, monkeypatch, cwd, *argv, untouched=(blocker, lab / "quadratic", lab / "squad"))
            assert "is a file" in line, line
    refused(capsys, monkeypatch, cwd, "gen", "--rows", 20, "--workers", 1, "--out", lab / "data", untouched=(lab / "data",))
    assert not list(tmp_path.glob(".*partial*")) and not list((lab / "data").parent.glob(".*partial*"))


@pytest.mark.parametrize("refusal", ["a read-only file system", "permission denied"])
def test_an_output_path_that_cannot_be_written_is_one_line_and_exit_2(lab, tmp_path, cwd, capsys, monkeypatch, refusal):
    """A directory on a read-only mount, or one the user may not write in, is refused before any
    work (simulated: root ignores permission bits, and a test cannot mount)."""
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    real_statvfs, real_access = os.statvfs, os.access

    class ReadOnly:
        f_flag = os.ST_RDONLY

    if refusal == "a read-only file system":
        monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly() if Path(path) == locked else real_statvfs(path))
    else:
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and real_access(path, mode, **kw))
    for argv in (["gen", "--rows", 20, "--workers", 1, "--out", locked / "data"],
                 ["eval", lab / "quadratic", "--limit", 2, "--out", locked / "eval"],
                 RUN_COMMANDS["maps"](lab, lab / "quadratic", locked / "deeper" / "maps")):
        line = refused(capsys, monkeypatch, cwd, *argv, untouched=(locked, lab / "quadratic"))
        assert f"nothing can be written in {locked} ({refusal})" in line, line


def test_a_full_disk_while_writing_is_one_line_and_exit_1(tmp_path, cwd, capsys, monkeypatch):
    import errno

    import datasets

    def full(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", full)
    parent = tmp_path / "disk"
    parent.mkdir()
    status, out, err = quadlab(capsys, monkeypatch, "gen", "--rows", 20, "--workers", 1, "--out", parent / "data")
    lines = err.strip().splitlines()
    assert status == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("quadlab: error: No space left on device: ") and "free space on that disk" in lines[0], err
    assert not list(parent.iterdir()) and not list(cwd.iterdir()), "a failed gen left output behind"


# ---------------------------------------------------------------------------------------------
# `verify` and `ask` on empty or arbitrary text


def test_verify_with_empty_or_unreadable_standard_input(cwd, capsys, monkeypatch):
    for stdin, says in ((b"", "standard input is empty"), (b"\n  \n", "standard input is empty"), (b"x=1;\xff\n", "not UTF-8")):
        line = refused(capsys, monkeypatch, cwd, "verify", "x^2-1=0", "-", stdin=stdin)
        assert says in line
    status, out, _ = quadlab(capsys, monkeypatch, "verify", "x^2-1=0", "-", stdin=b"x=1;x=-1;\n")
    assert status == 0 and json.loads(out)["answer_correct"]  # a line from a pipe is read and graded
    status, out, _ = quadlab(capsys, monkeypatch, "verify", "x^2-1=0", "-", stdin="€".encode() * 5000)  # cut inside a character
    assert status == 1 and not json.loads(out)["well_formed"]  # too long and wrong, but UTF-8


def test_ask_with_empty_text(lab, tmp_path, cwd, capsys, monkeypatch):
    out = tmp_path / "figs"
    for question, context in (("Who won?", ""), ("Who won?", "  \n"), ("", "The Broncos won."), ("why " * 200, "Because.")):
        refused(capsys, monkeypatch, cwd, "ask", "--run", lab / "squad", "--question", question, "--context", context, "--out", out,
                untouched=(lab / "squad",), absent=(out,))


@FEW
@given(equation=st.text(max_size=40), solution=st.text(max_size=60))
def test_verify_never_shows_a_traceback(capsys, monkeypatch, equation, solution):
    status, out, err = quadlab(capsys, monkeypatch, "verify", "--", equation, solution, stdin=solution.encode())
    assert status in (0, 1, 2) and "Traceback" not in err
    if status == 2:
        assert len(err.strip().splitlines()) == 1 and not out
    else:
        assert set(json.loads(out)) >= {"ok", "answer_correct"}


def test_explain_an_unreadable_equation(lab, tmp_path, cwd, capsys, monkeypatch):
    out = tmp_path / "explain"
    for equation in ("", "=", "x^2+x=", "7y^2=0", "x^3=1", "x^2=0=0", "１x^2=0", "__import__('os')"):
        line = refused(capsys, monkeypatch, cwd, "explain", "--run", lab / "quadratic", "--out", out, "--", equation, absent=(out,))
        assert "equation" in line, line


def test_an_equation_that_starts_with_a_minus_sign_is_told_to_follow_a_double_dash(lab, tmp_path, cwd, capsys, monkeypatch):
    out = tmp_path / "explain"
    for argv in (("explain", "--run", lab / "quadratic", "--out", out, "-8x^2+3x-1=0"), ("verify", "-8x^2+3x-1=0", "x=none;")):
        line = refused(capsys, monkeypatch, cwd, *argv, absent=(out,))
        assert "No such option '-8'; an argument that starts with a minus sign goes after the options and `--`" in line, line
    line = refused(capsys, monkeypatch, cwd, "gen", "--nonsense")  # other unknown options: click's line as before
    assert "No such option" in line and "minus sign" not in line
    status, stdout, err = quadlab(capsys, monkeypatch, "verify", "--", "-8x^2+3x-1=0", "x=none;")  # as the line says: D = -23
    assert status == 0 and json.loads(stdout)["answer_correct"] is True, err


@FEW
@given(equation=st.text(max_size=30))
def test_explain_never_shows_a_traceback(lab, tmp_path, capsys, monkeypatch, equation):
    shutil.rmtree(tmp_path / "explain", ignore_errors=True)
    status, out, err = quadlab(capsys, monkeypatch, "explain", "--run", lab / "quadratic", "--out", tmp_path / "explain", "--", equation)
    assert status in (0, 2) and "Traceback" not in err  # 0 for the rare text that is an equation
    if status == 2:
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "explain").exists()
    else:
        assert out.startswith("equation: ") and (tmp_path / "explain" / "example-explain" / "maps.npz").exists()


def test_out_of_gpu_memory_is_one_line_that_says_to_use_smaller_batches(lab, tmp_path, cwd, capsys, monkeypatch):
    """torch's OutOfMemoryError (a GPU's; raised here by the step that would run out) ends a command
    with one line and exit 1, writing nothing; any other RuntimeError stays a traceback (a bug)."""
    import torch

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB")

    monkeypatch.setattr("analyze.maps.dataset_average", out_of_memory)
    monkeypatch.setattr("train.quadratic.evaluate_run", out_of_memory)
    for argv in (["maps", "--run", lab / "quadratic", "--out", tmp_path / "figs"], ["eval", lab / "quadratic", "--limit", 2]):
        status, out, err = quadlab(capsys, monkeypatch, *argv)
        assert status == 1 and out == "" and len(err.strip().splitlines()) == 1, (argv, err)
        assert err.startswith("quadlab: error: out of memory on the GPU (CUDA out of memory. Tried to allocate 20.00 GiB)") and "--batch-size" in err
    assert not (tmp_path / "figs").exists() and not list(cwd.iterdir())
    monkeypatch.setattr("train.quadratic.evaluate_run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["eval", str(lab / "quadratic"), "--limit", "2"])


@FEW
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_as_a_run_config_are_one_line_and_exit_2(lab, tmp_path_factory, cwd, capsys, monkeypatch, content):
    run = tmp_path_factory.mktemp("config") / "run"
    shutil.copytree(lab / "quadratic", run, ignore=shutil.ignore_patterns("checkpoint", "best", "*.json*", "*.png"))
    (run / "config.yaml").write_bytes(content)
    for argv in (["eval", run, "--limit", 1], ["train", "--config", run / "config.yaml", "--run-dir", run.parent / "new"]):
        status, _, err = quadlab(capsys, monkeypatch, *argv)
        assert status == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (content, err)
        assert not (run.parent / "new").exists()


# ---------------------------------------------------------------------------------------------
# The real entry point behaves the same


def test_the_entry_point_gives_the_same_one_line_errors(lab, tmp_path, run_cli):
    done = run_cli("ask", "--run", lab / "quadratic", "--question", "hi", "--context", "there", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "is a quadratic run; `ask` needs a SQuAD run" in done.stderr
    run = copy_run(lab, "squad", tmp_path / "squad-run")
    _truncate(run / "model.safetensors")
    done = run_cli("eval", run, cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "is damaged" in done.stderr, done.stderr
