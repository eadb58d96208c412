import json
import re
import shlex
import shutil
from dataclasses import replace

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gen import QuadlabError
from gen.dataset import GenOptions, generate
from gen.equations import FORMATS, Ranges
from conftest import quadlab
from train.config import PRESETS, load_yaml, resolve
from train.engine import Interrupted, LengthGroupedBatches, extend, learning_rate_schedule, read_log, steady_step_seconds, steps_in_budget
from train.metrics import character_accuracy, judge, quadratic_metrics
from train.quadratic import build_tokenizer, collator, encode, evaluate_run, load_run, load_splits, train_run

SMALL_RANGES = Ranges(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "quadratic"
    generate(GenOptions(rows=250, seed=5, ranges=SMALL_RANGES), out)
    return out


def test_character_accuracy_on_hand_made_predictions():
    assert character_accuracy("x=1;", "x=1;") == 1.0
    assert character_accuracy("x=2;", "x=1;") == 0.75
    assert character_accuracy("x=1", "x=1;") == 0.75  # shorter: divided by the longer length
    assert character_accuracy("x=1;;;;;", "x=1;") == 0.5
    assert character_accuracy("", "x=1;") == 0.0
    assert character_accuracy("", "") == 1.0


def test_quadratic_metrics_overall_and_by_root_count():
    target = "D=(3556^2-4*7*451612)=0;x=(-3556-0)/(2*7)=-254;x=(-3556+0)/(2*7)=-254;x=-254;x=-254;"
    wrong_steps = target.replace(")=0;", ")=1;")
    judged = [
        judge(7, 3556, 451612, target, target),  # one root, all right
        judge(7, 3556, 451612, target, wrong_steps),  # one root, a false step, right answer
        judge(1, 0, 1, "D=(0^2-4*1*1)=-4;x=none;", "D=(0^2-4*1*1)=-4;x=1;"),  # none, wrong answer
        judge(1, -3, 2, "D=((-3)^2-4*1*2)=1;x=(-(-3)-1)/(2*1)=1;x=(-(-3)+1)/(2*1)=2;x=1;x=2;", "x=2;x=1;"),
    ]
    m = quadratic_metrics(judged, [1, 1, 0, 2])
    assert m["n"] == 4
    assert m["full_solution_accuracy"] == 0.25
    assert m["roots_accuracy"] == 0.75  # the reordered answer counts, the steps do not matter
    assert m["valid_steps_rate"] == 0.5
    assert m["by_num_roots"]["one"]["full_solution_accuracy"] == 0.5
    assert m["by_num_roots"]["none"] == {"n": 1, "full_solution_accuracy": 0.0, "character_accuracy": pytest.approx(19 / 24),
                                         "roots_accuracy": 0.0, "valid_steps_rate": 0.0}
    assert m["by_num_roots"]["two"]["roots_accuracy"] == 1.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_tokenizer_is_per_character_and_round_trips_every_string(tmp_path, fmt):
    import datasets
    from transformers import AutoTokenizer

    out = tmp_path / "q"
    generate(GenOptions(rows=400, seed=1, format=fmt), out)
    dd = datasets.load_from_disk(str(out))
    texts = list(dd["train"]["equation"]) + list(dd["train"]["solution"])
    build_tokenizer(texts).save_pretrained(str(tmp_path / "tok"))
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    everything = texts + list(dd["test"]["equation"]) + list(dd["test"]["solution"])
    ids = tokenizer(everything)["input_ids"]
    for text, row in zip(everything, ids):
        assert len(row) == len(text) + 1 and row[-1] == tokenizer.eos_token_id  # one token per character
        assert tokenizer.unk_token_id not in row
        assert tokenizer.decode(row, skip_special_tokens=True) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer("1640")["input_ids"])[:4] == ["1", "6", "4", "0"]


def test_encode_keeps_every_row_in_order_across_chunks_one_byte_a_token(data_dir):
    import datasets

    train = datasets.load_from_disk(str(data_dir))["train"]
    tokenizer = build_tokenizer(list(train["equation"]) + list(train["solution"]))
    rows = encode(tokenizer, train, chunk=7)  # 7 does not divide the row count: a short last chunk
    assert len(rows) == len(train) and len(train) % 7
    for row, equation, solution in zip(rows, train["equation"], train["solution"]):
        assert row["input_ids"].dtype == row["labels"].dtype == np.uint8
        assert tokenizer.decode(row["input_ids"], skip_special_tokens=True) == equation
        assert tokenizer.decode(row["labels"], skip_special_tokens=True) == solution
        assert row["labels"][-1] == tokenizer.eos_token_id
    batch = collator(tokenizer.pad_token_id)(rows[:3])  # arrays collate as lists do
    assert batch["labels"].dtype == torch.long and batch["labels"][0, : len(rows[0]["labels"])].tolist() == rows[0]["labels"].tolist()


def test_collator_pads_inputs_and_masks_labels():
    batch = collator(0)([{"input_ids": [5, 6, 1], "labels": [7, 1]}, {"input_ids": [5, 1], "labels": [7, 8, 9, 1]}])
    assert batch["input_ids"].tolist() == [[5, 6, 1], [5, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[7, 1, -100, -100], [7, 8, 9, 1]]


def test_length_grouped_batches_cover_each_row_once_in_a_fixed_order():
    lengths = [(i * 37) % 101 for i in range(1000)]
    sampler = LengthGroupedBatches(lengths, batch_size=16, seed=3, window_batches=8)
    first = list(sampler)
    assert sorted(i for batch in first for i in batch) == list(range(1000))
    assert first == list(LengthGroupedBatches(lengths, batch_size=16, seed=3, window_batches=8))
    sampler.set_epoch(1)
    assert list(sampler) != first
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first) / len(first)
    assert spread < 15  # random batches of 16 would spread over most of 0..100


def test_config_precedence_preset_then_yaml_then_command_line(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("preset: small\nlearning_rate: 0.01\nbatch_size: 32\n")
    config = resolve("tiny", str(yaml_file), {"batch_size": "16", "seed": None})
    assert config.preset == "small" and config.d_model == PRESETS["small"]["d_model"]
    assert config.learning_rate == 0.01 and config.batch_size == 16 and config.seed == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (("nope", None, {}), "unknown preset"),
        (("tiny", None, {"lerning_rate": "1"}), "unknown config key 'lerning_rate'"),
        (("tiny", None, {"batch_size": "many"}), "takes a whole number"),
        (("tiny", None, {"scheduler": "exotic"}), "scheduler"),
        (("tiny", None, {"scheduler": "warmup_stable_decay", "decay_ratio": "0"}), "decay_ratio"),
        (("tiny", None, {"scheduler": "warmup_stable_decay", "warmup_ratio": "0.1", "decay_ratio": "0.95"}), "decay_ratio"),
        (("tiny", None, {"warmup_steps": "1000"}), "warmup_steps must lie in"),  # max_steps 1000
        (("tiny", None, {"scheduler": "warmup_stable_decay", "warmup_steps": "900"}), "decay .* must fit in max_steps"),
        (("tiny", None, {"train_seconds": "60"}), "train_seconds needs warmup_steps > 0"),
        (("tiny", None, {"train_seconds": "-1", "warmup_steps": "5"}), "train_seconds must be a number of seconds"),
        (("tiny", None, {"train_seconds": "60", "warmup_steps": "5", "rewarm_after": "500"}), "do not go together"),
    ],
)
def test_bad_configuration_is_refused(args, message):
    with pytest.raises(QuadlabError, match=message):
        resolve(*args)


def test_decay_ratio_matters_only_to_warmup_stable_decay():
    assert resolve("tiny", None, {"warmup_ratio": "0.9"}).scheduler == "linear"  # the default decay_ratio 0.2 is unused


def test_bad_yaml_key_is_refused(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("learning_rat: 0.1\n")
    with pytest.raises(QuadlabError, match="unknown config key 'learning_rat'"):
        resolve("tiny", str(yaml_file))
    yaml_file.write_text("a: [\n")
    with pytest.raises(QuadlabError, match="not valid YAML"):
        resolve("tiny", str(yaml_file))


def test_missing_dataset_says_to_run_gen(tmp_path):
    config = resolve("tiny", None, {"data": str(tmp_path / "nothing"), "run_dir": str(tmp_path / "run")})
    with pytest.raises(QuadlabError, match="cli.py gen"):
        train_run(config, progress=False)
    assert not (tmp_path / "run").exists()  # nothing half-written


def _config(data_dir, run_dir, **extra):
    return resolve("tiny", None, {
        "data": str(data_dir), "run_dir": str(run_dir), "batch_size": 16, "max_steps": 30, "eval_every": 10,
        "val_size": 20, "eval_batch_size": 64, "eval_limit": 10, **extra,
    })


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(data_dir, tmp_path, grad_accum):
    whole = _config(data_dir, tmp_path / "whole", grad_accum=grad_accum, dropout_rate=0.1)
    train_run(whole, progress=False)
    broken = _config(data_dir, tmp_path / "broken", grad_accum=grad_accum, dropout_rate=0.1)
    with pytest.raises(Interrupted):
        train_run(broken, stop_after_steps=17, progress=False)  # mid-epoch, between checkpoints
    train_run(_config(data_dir, tmp_path / "broken", grad_accum=grad_accum, dropout_rate=0.1), resume=True, progress=False)
    a = load_file(tmp_path / "whole" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "broken" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = lambda p: [json.loads(line)["loss"] for line in (p / "log.jsonl").read_text().splitlines() if "loss" in line]
    assert steps(tmp_path / "whole") == steps(tmp_path / "broken")


def test_a_run_directory_that_another_process_trains_is_refused_in_one_line(data_dir, tmp_path, capsys, monkeypatch):
    """A second `train --resume` of a run that another process trains would write its checkpoints
    and log lines among the other's, and --overwrite would delete them under it."""
    import subprocess
    import sys

    from conftest import ROOT, snapshot

    run = tmp_path / "run"
    with pytest.raises(Interrupted):  # and lets go of it: the other process below takes it
        train_run(_config(data_dir, run, max_steps=4, eval_every=2), stop_after_steps=2, progress=False)
    other = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; from train.engine import hold_run_dir; "
                              "hold_run_dir(Path(sys.argv[1])); print('holding', flush=True); sys.stdin.read()", str(run)],
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "holding\n"
        before = snapshot(tmp_path)
        for args in (["--resume"], ["--overwrite", "--data", data_dir, "--max-steps", 4, "--set", "val_size=20"]):
            status, out, err = quadlab(capsys, monkeypatch, "train", "--run-dir", run, *args)
            assert status == 2 and out == "" and err.count("\n") == 1, err
            assert f"{run} is being trained by another process (pid {other.pid}); wait for it to end or stop it" in err
        assert snapshot(tmp_path) == before
    finally:
        other.communicate("", timeout=60)  # its end lets the lock go
    status, _, err = quadlab(capsys, monkeypatch, "train", "--run-dir", run, "--resume")
    assert status == 0, err
    assert [r["step"] for r in read_log(run)[0]] == [1, 2, 3, 4]


def test_warmup_stable_decay_holds_the_rate_then_decays_linearly_to_zero(data_dir, tmp_path):
    config = _config(data_dir, tmp_path / "run", scheduler="warmup_stable_decay", warmup_ratio=0.1, decay_ratio=0.4)
    train_run(config, progress=False)
    rate = {step["step"]: step["lr"] for step in read_log(tmp_path / "run")[0]}
    top = config.learning_rate
    assert len(rate) == 30
    assert rate[1] == pytest.approx(top / 3) and rate[2] == pytest.approx(2 * top / 3)  # warmup: 3 steps
    assert all(rate[k] == pytest.approx(top) for k in range(3, 19))  # stable until the last 40% (12 steps)
    assert all(rate[k] == pytest.approx(top * (30 - k) / 12) for k in range(18, 31))  # linear to 0


def test_rewarm_restarts_the_schedule_as_for_a_run_ending_at_each_cycle_end():
    config = resolve("tiny", None, {"scheduler": "warmup_stable_decay", "warmup_ratio": "0", "decay_ratio": "0.2",
                                    "max_steps": "20", "rewarm_after": "10"})
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0)
    schedule = learning_rate_schedule(config, optimizer, config.max_steps)
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(19):
        optimizer.step()
        schedule.step()
        rates.append(optimizer.param_groups[0]["lr"])
    # steps 1-10 as a 10-step run (decay over its last 2), 11-20 as a 20-step run (decay over its last 4)
    expected = [1, 1, 1, 1, 1, 1, 1, 1, 1, 0.5] + [1, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]
    assert rates == pytest.approx([2.0 * m for m in expected])


@pytest.mark.parametrize("value, message", [("abc", "step numbers"), ("15,10", "must rise"), ("0", "must rise"),
                                            ("20", "must rise"), ("1e3", "step numbers"), ("1," * 600, "step numbers")])
def test_bad_rewarm_steps_are_refused(value, message):
    with pytest.raises(QuadlabError, match=message):
        resolve("tiny", None, {"max_steps": "20", "rewarm_after": value})


def test_extending_a_finished_run_equals_one_run_with_its_rewarm_recorded(data_dir, tmp_path, run_cli, capsys, monkeypatch):
    schedule = {"scheduler": "warmup_stable_decay", "warmup_ratio": 0.1, "decay_ratio": 0.2}
    train_run(_config(data_dir, tmp_path / "extended", max_steps=20, **schedule), progress=False)
    result = run_cli("train", "--resume", "--run-dir", tmp_path / "extended", "--max-steps", 30, timeout=300)
    assert result.returncode == 0, result.stderr
    extended = load_yaml(tmp_path / "extended" / "config.yaml")
    assert extended.max_steps == 30 and extended.rewarm_after == "20"
    # the configuration it recorded reproduces it in one run
    train_run(_config(data_dir, tmp_path / "whole", max_steps=30, rewarm_after="20", **schedule), progress=False)
    logs = [read_log(tmp_path / name)[0] for name in ("extended", "whole")]
    assert [r["step"] for r in logs[0]] == list(range(1, 31))
    # a step's logged rate is the next step's (as the Trainer logs it): at step 20 the first run logged its end, 0
    rates = [[r["lr"] for r in log] for log in logs]
    assert rates[0][19] == 0 and rates[0][:19] + rates[0][20:] == pytest.approx(rates[1][:19] + rates[1][20:])
    top = extended.learning_rate
    assert rates[1][18:21] == pytest.approx([top / 4, top, top])  # step 20 trains at a quarter of the peak, 21 at the peak
    assert [r["loss"] for r in logs[0]] == pytest.approx([r["loss"] for r in logs[1]], rel=1e-3)
    a = load_file(tmp_path / "extended" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "whole" / "checkpoint" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    # again (in this process: the command ran above): it finished at 30, which is no cycle end of its own yet
    status, _, err = quadlab(capsys, monkeypatch, "train", "--resume", "--run-dir", tmp_path / "extended", "--max-steps", 40)
    assert status == 0, err
    assert load_yaml(tmp_path / "extended" / "config.yaml").rewarm_after == "20,30"


def test_steps_in_budget_counts_the_time_left_at_the_end_of_the_warm_up():
    wsd = resolve("tiny", None, {"scheduler": "warmup_stable_decay", "decay_ratio": "0.2", "warmup_steps": "10",
                                 "train_seconds": "100", "max_steps": "1000"})
    assert steps_in_budget(wsd, 10, 20.0, 0.5, 1000) == 170  # 80 s left hold 160 steps of 0.5 s
    assert steps_in_budget(wsd, 10, 20.0, 0.5, 150) == 150  # max_steps is the ceiling
    # over the budget: the warm-up, and a decay that starts no earlier (12 - int(0.2 * 12) = 10)
    assert steps_in_budget(wsd, 10, 120.0, 0.5, 1000) == 12
    assert steps_in_budget(replace(wsd, scheduler="linear"), 10, 120.0, 0.5, 1000) == 11  # a step past the warm-up


def test_steady_step_seconds_is_the_mean_without_the_compiling_steps():
    # two batch widths: most steps narrow (0.05 s), a third wide (0.08 s), two steps compiling
    times = [56.2, 38.3] + [0.05, 0.05, 0.08] * 30
    assert abs(steady_step_seconds(times) - 0.06) < 1e-9  # the median, 0.05, would overrun the budget by a fifth
    assert steady_step_seconds([0.5] * 10) == 0.5


def test_train_seconds_fixes_the_length_once_and_config_yaml_repeats_the_run(data_dir, tmp_path, monkeypatch):
    from train import engine

    budget = {"warmup_steps": 5, "train_seconds": 1000, "scheduler": "warmup_stable_decay", "decay_ratio": 0.25}
    counted = []

    def count(config, step, spent, seconds_per_step, ceiling):  # a fixed answer: the clock is the machine's
        counted.append((step, ceiling, spent > 0, seconds_per_step > 0))
        return 17

    monkeypatch.setattr(engine, "steps_in_budget", count)
    with pytest.raises(Interrupted):
        train_run(_config(data_dir, tmp_path / "budget", **budget), stop_after_steps=10, progress=False)
    assert counted == [(5, 30, True, True)]  # at the end of the warm-up, under the ceiling max_steps: 30
    saved = load_yaml(tmp_path / "budget" / "config.yaml")
    assert (saved.max_steps, saved.train_seconds, saved.warmup_steps) == (17, 0, 5)
    # resumed with the budget's configuration, as every call of gpu-job does: the length holds, uncounted
    again = _config(data_dir, tmp_path / "budget", **budget)
    train_run(again, resume=True, progress=False)
    assert again.max_steps == 17 and len(counted) == 1
    training = json.loads((tmp_path / "budget" / "metrics.json").read_text())["training"]
    assert training["steps"] == 17
    assert {k: training["time_budget"][k] for k in ("train_seconds", "at_step", "max_steps")} == {"train_seconds": 1000, "at_step": 5, "max_steps": 17}
    # config.yaml as saved repeats it: every step's rate, the losses within float noise
    repeat = load_yaml(tmp_path / "budget" / "config.yaml")
    repeat.run_dir = str(tmp_path / "repeat")
    train_run(repeat, progress=False)
    logs = [read_log(tmp_path / name)[0] for name in ("budget", "repeat")]
    assert [r["step"] for r in logs[0]] == list(range(1, 18))
    rates = [r["lr"] for r in logs[0]]
    assert rates == pytest.approx([r["lr"] for r in logs[1]])
    top = repeat.learning_rate  # logged: the next step's rate. Warm-up 5 steps, the peak to 13 = 17 - int(0.25 * 17), then to 0
    assert rates == pytest.approx([top * k / 5 for k in range(1, 5)] + [top] * 9 + [top * (17 - k) / 4 for k in range(14, 18)])
    assert [r["loss"] for r in logs[0]] == pytest.approx([r["loss"] for r in logs[1]], rel=1e-3)


def test_a_spent_budget_ends_the_run_a_step_after_the_warm_up(data_dir, tmp_path):
    config = _config(data_dir, tmp_path / "run", warmup_steps=4, train_seconds=1e-6)
    train_run(config, progress=False)
    assert [r["step"] for r in read_log(tmp_path / "run")[0]] == [1, 2, 3, 4, 5]
    assert load_yaml(tmp_path / "run" / "config.yaml").max_steps == 5 and (tmp_path / "run" / "model.safetensors").is_file()


def test_only_a_run_that_trained_all_its_steps_is_extended(data_dir, tmp_path):
    config = _config(data_dir, tmp_path / "run", max_steps=20)
    with pytest.raises(Interrupted):
        train_run(config, stop_after_steps=10, progress=False)
    with pytest.raises(QuadlabError, match="stopped at step 10 of 20; finish it"):
        extend(config, tmp_path / "run", 30)
    assert extend(config, tmp_path / "run", 20) is config  # the same steps: a plain resume
    train_run(config, resume=True, progress=False)
    with pytest.raises(QuadlabError, match="fewer than the 20 steps"):
        extend(config, tmp_path / "run", 15)
    impatient = _config(data_dir, tmp_path / "impatient", max_steps=200, patience=1, learning_rate=1e-9)
    train_run(impatient, progress=False)
    with pytest.raises(QuadlabError, match="stopped by patience"):
        extend(impatient, tmp_path / "impatient", 300)


def test_init_from_starts_from_the_trained_weights_with_their_architecture_and_resumes(data_dir, tmp_path):
    from safetensors.torch import save_file

    trained = _config(data_dir, tmp_path / "trained", d_model=32, d_ff=64, num_heads=2, max_steps=20)
    train_run(trained, progress=False)
    # as a GPU job brings weights back: rounded to bfloat16
    source = tmp_path / "from-gpu"
    source.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (source / name).write_bytes((tmp_path / "trained" / name).read_bytes())
    weights = {k: v.to(torch.bfloat16) for k, v in load_file(tmp_path / "trained" / "model.safetensors").items()}
    save_file(weights, source / "model.safetensors", metadata={"format": "pt"})
    # a rate of 1e-9 barely moves the weights: what the run ends with is what it started from
    still = {"init_from": str(source), "learning_rate": 1e-9, "max_steps": 12}
    train_run(_config(data_dir, tmp_path / "whole", **still), progress=False)
    recorded = load_yaml(tmp_path / "whole" / "config.yaml")
    assert (recorded.d_model, recorded.d_ff, recorded.num_heads, recorded.init_from) == (32, 64, 2, str(source))
    ended = load_file(tmp_path / "whole" / "checkpoint" / "model.safetensors")
    assert ended.keys() == weights.keys() and all(ended[k].dtype == torch.float32 for k in ended)
    assert all(torch.allclose(ended[k], weights[k].float(), atol=1e-6) for k in ended)
    assert not torch.allclose(ended["shared.weight"], load_file(tmp_path / "trained" / "model.safetensors")["shared.weight"], atol=1e-6)
    # the starting weights are validated at step 0, for the curves and metrics.json, and are not a candidate for the best
    metrics = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    start, best = metrics["validation_start"], metrics["validation_best"]
    assert metrics["training"]["start_validation"] == start["full_solution_accuracy"] and metrics["training"]["best_step"] > 0
    assert abs(start["character_accuracy"] - best["character_accuracy"]) < 0.02  # at 1e-9 the weights barely moved
    evals = read_log(tmp_path / "whole")[1]
    assert evals[0]["step"] == 0 and evals[0]["best"] is False and [e["step"] for e in evals].count(0) == 1
    untrained = json.loads((tmp_path / "trained" / "metrics.json").read_text())
    assert "validation_start" not in untrained and "start_validation" not in untrained["training"]
    # interrupted and resumed from config.yaml alone (the source gone): the same run
    broken = _config(data_dir, tmp_path / "broken", **{**still, "learning_rate": 1e-3})
    with pytest.raises(Interrupted):
        train_run(broken, stop_after_steps=7, progress=False)
    train_run(_config(data_dir, tmp_path / "whole2", **{**still, "learning_rate": 1e-3}), progress=False)
    for name in list(source.iterdir()):
        name.unlink()
    train_run(load_yaml(tmp_path / "broken" / "config.yaml"), resume=True, progress=False)
    a = load_file(tmp_path / "whole2" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "broken" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e["step"] for e in read_log(tmp_path / "broken")[1]].count(0) == 1  # the resumed call validates no start again


class _OneWeight(torch.nn.Module):
    """A model of one weight w, pulled towards the rows' value 0: each evaluation can say which w it saw."""

    def __init__(self, w: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([w]))

    def forward(self, x):
        return type("Output", (), {"loss": ((self.w - x) ** 2).mean()})()

    def save_pretrained(self, path):
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path / "w.pt")


def test_a_fine_tune_validates_its_start_but_chooses_the_best_among_its_trained_steps(tmp_path):
    from train import engine

    seen = []

    def evaluate(model):  # w itself as the metric: the start, w = 1, scores highest, and training lowers w
        seen.append(float(model.w.detach()))
        return {"full_solution_accuracy": seen[-1]}

    config = resolve("tiny", None, {"run_dir": str(tmp_path / "run"), "batch_size": 4, "max_steps": 6, "eval_every": 3, "learning_rate": 0.05,
                                    "warmup_steps": 0, "weight_decay": 0.0, "init_from": str(tmp_path / "start"), "compile": "false"})
    (tmp_path / "run").mkdir()

    def fit(config):
        return engine.train(_OneWeight(1.0), [0.0] * 16, [1] * 16, lambda rows: {"x": torch.tensor(rows)}, evaluate, config,
                            tmp_path / "run", progress=False)

    summary = fit(config)
    assert seen[0] == 1.0 and len(seen) == 3 and seen[1] > seen[2] and seen[1] < 0.9  # step 0, 3 and 6
    assert summary["start_validation"] == 1.0 and summary["best_validation"] == seen[1] and summary["best_step"] == 3
    assert [(e["step"], e["best"]) for e in read_log(tmp_path / "run")[1]] == [(0, False), (3, True), (6, False)]
    seen.clear()
    from_scratch = fit(replace(config, init_from=""))
    assert len(seen) == 2 and "start_validation" not in from_scratch and read_log(tmp_path / "run")[1][0]["step"] == 3


def test_init_from_refuses_what_it_cannot_start_from(data_dir, tmp_path, capsys, monkeypatch):
    with pytest.raises(QuadlabError, match="holds no trained model"):
        train_run(_config(data_dir, tmp_path / "r1", init_from=str(tmp_path / "none")), progress=False)
    bert = tmp_path / "bert"
    bert.mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        (bert / name).write_text("x")
    (bert / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(QuadlabError, match="holds a bert model, not the T5"):
        train_run(_config(data_dir, tmp_path / "r2", init_from=str(bert)), progress=False)
    train_run(_config(data_dir, tmp_path / "published", max_steps=2), progress=False)
    reversed_data = tmp_path / "reversed"
    generate(GenOptions(rows=250, seed=5, ranges=SMALL_RANGES, format="reversed"), reversed_data)
    with pytest.raises(QuadlabError, match="lacks characters of this data .*~"):
        train_run(_config(reversed_data, tmp_path / "r3", init_from=str(tmp_path / "published")), progress=False)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()
    with pytest.raises(QuadlabError, match="init_from is for --task quadratic"):
        resolve("squad", None, {"init_from": str(tmp_path / "published")})
    status, _, err = quadlab(capsys, monkeypatch, "train", "--data", data_dir, "--run-dir", tmp_path / "r4", "--set", "val_size=20",
                             "--init-from", tmp_path / "none")
    assert status == 2 and len(err.strip().splitlines()) == 1 and "init_from" in err
    status, _, err = quadlab(capsys, monkeypatch, "train", "--resume", "--run-dir", tmp_path / "published", "--init-from", tmp_path / "published")
    assert status == 2 and "drop the other options" in err


def test_a_reversed_run_goes_on_in_the_padded_d_formats(tmp_path):
    """The GPU list continues the reversed model in padded-d-plain (RESULTS.md, "Still to run on a
    GPU"; padded-d before it): the same characters, so init_from takes its tokenizer, and the run
    trains and tests on the padded targets."""
    for fmt in ("reversed", "padded-d", "padded-d-plain"):
        generate(GenOptions(rows=250, seed=5, ranges=SMALL_RANGES, format=fmt), tmp_path / fmt)
    train_run(_config(tmp_path / "reversed", tmp_path / "rev", max_steps=2), progress=False)
    for fmt in ("padded-d", "padded-d-plain"):
        train_run(_config(tmp_path / fmt, tmp_path / f"run-{fmt}", max_steps=2, init_from=str(tmp_path / "rev")), progress=False)
        assert (tmp_path / f"run-{fmt}" / "tokenizer.json").read_bytes() == (tmp_path / "rev" / "tokenizer.json").read_bytes()
        targets = [json.loads(line)["target"] for line in (tmp_path / f"run-{fmt}" / "predictions.jsonl").read_text().splitlines()]
        d_sides = [t.split(";D=")[1].split(";")[0].split("=") for t in targets if ";D=" in t]
        assert len(targets) == 10 and any("00" in sides[1] for sides in d_sides), targets
        assert all(len(sides) == (3 if fmt == "padded-d-plain" else 2) for sides in d_sides), targets


def test_tiny_model_learns_32_equations(tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    data = tmp_path / "q32"
    generate(GenOptions(rows=40, seed=0, ranges=SMALL_RANGES), data)  # 32 train, 8 test
    run = tmp_path / "run"
    config = resolve("tiny", None, {
        "data": str(data), "run_dir": str(run), "batch_size": 32, "max_steps": 300, "eval_every": 50,
        "val_size": 0, "patience": 0,
    })
    train_run(config, progress=False)
    metrics = evaluate_run(run, split="train", progress=False)["train"]["greedy"]
    assert metrics["n"] == 32
    # CPU float reductions differ between processors and thread counts, so the exact number learned
    # does too (31 of 32 was seen); a working loop learns nearly all, a broken one almost none
    assert metrics["full_solution_accuracy"] >= 28 / 32 and metrics["roots_accuracy"] >= 28 / 32
    losses = [step["loss"] for step in read_log(run)[0]]
    assert len(losses) == 300 and sum(losses[-10:]) / 10 < 0.05 * sum(losses[:10]) / 10
    for name in ("config.yaml", "environment.json", "log.jsonl", "training_curve.png", "metrics.json", "predictions.jsonl"):
        assert (run / name).exists(), name
    from train.engine import code_version

    assert json.loads((run / "environment.json").read_text())["code"]["sources_sha256"] == code_version()["sources_sha256"]
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 8  # every test equation
    # the run directory is a standard Hugging Face model + tokenizer: a row the run got right comes
    # out the same from the reloaded model
    tokenizer = AutoTokenizer.from_pretrained(str(run))
    model = AutoModelForSeq2SeqLM.from_pretrained(str(run))
    rows = [json.loads(line) for line in (run / "predictions-train.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["prediction"] == r["target"])
    out = model.generate(**tokenizer([row["equation"]], return_tensors="pt"))
    assert tokenizer.decode(out[0], skip_special_tokens=True) == row["target"]


def test_corrupt_run_directory_is_a_one_line_error(tmp_path, run_cli):
    with pytest.raises(QuadlabError, match="not a directory"):
        load_run(tmp_path / "missing")
    (tmp_path / "run").mkdir()
    with pytest.raises(QuadlabError, match="missing"):
        load_run(tmp_path / "run")
    for name in ("config.yaml", "tokenizer.json", "config.json", "model.safetensors", "generation_config.json"):
        (tmp_path / "run" / name).write_text("garbage")
    result = run_cli("eval", tmp_path / "run")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_train_cli_bad_inputs(tmp_path, capsys, monkeypatch):
    status, _, err = quadlab(capsys, monkeypatch, "train", "--data", tmp_path / "none", "--run-dir", tmp_path / "r")
    assert status == 2 and "cli.py gen" in err and len(err.strip().splitlines()) == 1
    status, _, err = quadlab(capsys, monkeypatch, "train", "--preset", "huge", "--run-dir", tmp_path / "r")
    assert status == 2 and "unknown preset" in err
    status, _, err = quadlab(capsys, monkeypatch, "train", "--set", "colour=red", "--run-dir", tmp_path / "r")
    assert status == 2 and "unknown config key 'colour'" in err
    status, _, err = quadlab(capsys, monkeypatch, "train", "--resume", "--run-dir", tmp_path / "r")
    assert status == 2 and "not a run directory" in err
    assert not (tmp_path / "r").exists()


def test_beam_search_reranked_by_the_grader_is_reported_separately(data_dir, tmp_path):
    import datasets

    from train.quadratic import evaluate_rows

    config = _config(data_dir, tmp_path / "run", max_steps=10)
    train_run(config, progress=False)
    model, tokenizer, _ = load_run(tmp_path / "run")
    rows = datasets.load_from_disk(str(data_dir))["test"].select(range(6))
    metrics, records = evaluate_rows(model, tokenizer, rows, batch_size=8, num_beams=3)
    assert metrics["greedy"]["n"] == metrics["beam3_most_likely"]["n"] == metrics["beam3_grader_reranked"]["n"] == 6
    assert all(len(r["beams"]) == 3 and r["prediction_beam_reranked"] in r["beams"] for r in records)
    # the grader's choice solves at least every row the most likely beam solves
    most_likely, reranked = metrics["beam3_most_likely"], metrics["beam3_grader_reranked"]
    assert reranked["roots_accuracy"] >= most_likely["roots_accuracy"] and reranked["valid_steps_rate"] >= most_likely["valid_steps_rate"]


def _random_model(max_new_tokens: int):
    """A random tiny model and 40 equations of small ranges; the end token's output row is made
    that of a digit, tripled, so that rows end at different lengths, some not at all."""
    from gen.dataset import build_splits
    from train.quadratic import build_model

    columns = build_splits(GenOptions(rows=40, seed=3, ranges=Ranges(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)), workers=1)["test"]
    tokenizer = build_tokenizer(columns["equation"] + columns["solution"])
    model = build_model(resolve("tiny", None, {"num_layers": 2, "num_decoder_layers": 2, "num_heads": 2, "d_kv": 8, "d_model": 16, "d_ff": 32}), tokenizer)
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head[tokenizer.eos_token_id] = 3 * head[tokenizer.convert_tokens_to_ids("7")]
    model.generation_config.max_new_tokens = max_new_tokens
    return model, tokenizer, columns


def test_least_sure_is_the_lowest_probability_of_a_token_the_model_wrote():
    """decode_greedy's outputs are decode's, and each row's least_sure is the minimum over the
    tokens it wrote (its </s> included, the padding after it not) of the probabilities of one
    unbatched teacher-forced pass over the generated tokens."""
    from train.quadratic import decode, decode_greedy

    model, tokenizer, columns = _random_model(max_new_tokens=30)
    texts, least_sure = decode_greedy(model, tokenizer, columns["equation"], batch_size=12)
    assert texts == [beams[0] for beams in decode(model, tokenizer, columns["equation"], batch_size=12)]
    lengths = []
    for equation, found in zip(columns["equation"], least_sure):
        input_ids = torch.tensor([tokenizer(equation)["input_ids"]])
        sequence = model.generate(input_ids=input_ids, do_sample=False, num_beams=1)[0].tolist()
        end = sequence.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in sequence else len(sequence)
        lengths.append(end - 1)
        with torch.no_grad():
            logits = model(input_ids=input_ids, decoder_input_ids=torch.tensor([sequence[: end - 1]])).logits[0]
        expected = float(logits.softmax(-1)[torch.arange(end - 1), torch.tensor(sequence[1:end])].min())
        assert abs(found - expected) < 1e-4, (equation, found, expected)
    # rows that ended early in a batch with longer ones, and rows the token budget cut off
    assert min(lengths) < 30 and max(lengths) == 30 and min(least_sure) < 0.5


def test_beams_below_decodes_with_beams_only_the_rows_the_model_is_unsure_of():
    from train.quadratic import decode, evaluate_rows

    model, tokenizer, columns = _random_model(max_new_tokens=30)
    rows = datasets.Dataset.from_dict(columns)
    _, everywhere = evaluate_rows(model, tokenizer, rows, batch_size=12, num_beams=3)
    threshold = float(np.median([r["least_sure"] for r in everywhere]))
    metrics, records = evaluate_rows(model, tokenizer, rows, batch_size=12, num_beams=3, beams_below=threshold)
    unsure = [i for i, r in enumerate(everywhere) if r["least_sure"] < threshold]
    assert 0 < len(unsure) < len(records) and metrics["beams_on"] == {"rows": len(unsure), "least_sure_below": threshold}
    assert [i for i, r in enumerate(records) if "beams" in r] == unsure
    beams = decode(model, tokenizer, [columns["equation"][i] for i in unsure], batch_size=12, num_beams=3)
    assert [records[i]["beams"] for i in unsure] == beams == [everywhere[i]["beams"] for i in unsure]
    # every row is measured: the beams where they ran, the greedy output elsewhere
    assert metrics["beam3_most_likely"]["n"] == len(records) == metrics["greedy"]["n"]
    mixed = [records[i]["beams"][0] if i in unsure else records[i]["prediction"] for i in range(len(records))]
    expected = np.mean([judge(r["a"], r["b"], r["c"], r["target"], text)["char_accuracy"] for r, text in zip(records, mixed)])
    assert metrics["beam3_most_likely"]["character_accuracy"] == pytest.approx(expected)
    assert all(("prediction_beam_reranked" in r) == ("beams" in r) for r in records)


def test_grader_reranking_picks_the_most_likely_beam_the_grader_accepts():
    from train.quadratic import rerank_with_grader

    right = "D=(3556^2-4*7*451612)=0;x=(-3556-0)/(2*7)=-254;x=(-3556+0)/(2*7)=-254;x=-254;x=-254;"
    wrong = right.replace("=-254;x=-254;", "=-254;x=-253;")
    assert rerank_with_grader([(7, 3556, 451612)], [[wrong, right, "x=none;"]]) == [right]
    assert rerank_with_grader([(7, 3556, 451612)], [[wrong, "x=none;"]]) == [wrong]  # none accepted: the top beam


@pytest.mark.parametrize("key, text", [("seed", "١"), ("seed", " 1"), ("seed", "1_000"), ("seed", "1.5"), ("batch_size", "１６"),
                                       ("learning_rate", "nan"), ("learning_rate", "inf"), ("learning_rate", "1e999"), ("learning_rate", "٠.١")])
def test_set_numbers_are_ascii_and_finite(key, text):
    """--set values are text: int() and float() alone would read each of these."""
    with pytest.raises(QuadlabError, match=f"config key '{key}' takes a (whole )?number \\(written with the digits 0-9\\), not "):
        resolve("tiny", None, {key: text})


@pytest.mark.parametrize("line", ["seed: true", "seed: 1.5", "seed: '٣'", "seed: 2024-01-01", "learning_rate: .nan", "max_grad_norm: .inf",
                                  "learning_rate: '1_0'", "data: null", "data: [1]"])
def test_yaml_values_of_the_wrong_type_are_refused(tmp_path, line):
    """YAML values come typed: a bool or a fraction is no int (int(True) == 1, int(1.5) == 1), .nan is no learning rate."""
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(QuadlabError, match=f"config key '{line.split(':')[0]}' takes (a whole number|a number|text)\\b"):
        resolve("tiny", str(yaml_file))


def test_config_reads_plain_numbers():
    config = resolve("tiny", None, {"seed": "7", "batch_size": "+16", "learning_rate": "3e-4", "epochs": "2", "max_steps": 5.0})
    assert (config.seed, config.batch_size, config.learning_rate, config.epochs, config.max_steps) == (7, 16, 3e-4, 2.0, 5)


def test_a_run_records_its_dataset_says_how_to_make_it_again_and_refuses_another_format(tmp_path, data_dir):
    from cli import main
    from conftest import tiny_run
    from train.runs import read_config

    data = tmp_path / "reversed-data"
    options = GenOptions(rows=60, seed=3, format="reversed", ranges=SMALL_RANGES)
    generate(options, data, workers=1)
    run = tiny_run("quadratic", data, tmp_path, max_steps=1, eval_every=1)
    assert GenOptions.from_dict(json.loads((run / "dataset-card.json").read_text())["options"]) == options

    first = {name: split.to_dict() for name, split in datasets.load_from_disk(str(data)).items()}
    shutil.move(data, tmp_path / "moved away")
    with pytest.raises(QuadlabError, match="does not exist") as gone:  # what eval, maps, heads, probe and patch say
        load_splits(read_config(run), run)
    command = re.search(r"make it with `([^`]*)`", str(gone.value)).group(1)
    assert "--format reversed" in command and "--rows 60" in command and str(data) in command, command
    main(shlex.split(command)[2:] + ["--workers", "1"])
    assert {name: split.to_dict() for name, split in datasets.load_from_disk(str(data)).items()} == first
    assert len(load_splits(read_config(run), run)["test"]) == 12

    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace(f"data: {data}", f"data: {data_dir}"))  # the published format
    with pytest.raises(QuadlabError) as other:
        load_splits(read_config(run), run)
    assert "published format" in str(other.value) and "trained on reversed" in str(other.value), other.value
    assert "--format reversed" in str(other.value) and "--rows 250" in str(other.value)  # that dataset's equations, in the run's format
    assert len(load_splits(read_config(run))["test"]) == 50  # training a new run on it is not refused


def test_a_gzipped_log_is_read_and_a_run_in_name_run_is_titled_name(tmp_path, monkeypatch):
    """figures/results/ keeps logs as log.jsonl.gz and runs as NAME/run: the curve reads the one and
    is titled by the other (it said "run")."""
    import gzip

    import matplotlib.axes

    from train.engine import plot_curve

    run = tmp_path / "padded-best" / "run"
    run.mkdir(parents=True)
    records = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}, {"step": 2, "eval": {"full_solution_accuracy": 0.25}}]
    (run / "log.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    steps, evals = read_log(run)
    assert [r["loss"] for r in steps] == [2.0, 1.0] and evals[0]["eval"]["full_solution_accuracy"] == 0.25
    titles = []
    original = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda ax, text, *a, **k: titles.append(text) or original(ax, text, *a, **k))
    assert plot_curve(run, "full_solution_accuracy").stat().st_size > 5_000
    assert titles == ["padded-best: training curve"]
    assert read_log(tmp_path) == ([], [])  # a directory without a log has no records


def test_environment_names_the_device_accelerate_trains_on(monkeypatch):
    """On a Mac accelerate trains on Apple's GPU (mps), not on the CPU that environment.json said."""
    from train.engine import environment

    assert environment()["device"].startswith(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *args: torch.device("mps"))
    assert re.fullmatch(r"mps \(beside a cpu \(\d+ cores, \d+ threads\)\)", environment()["device"])


def test_a_run_records_which_code_made_it(tmp_path):
    """environment.json's `code`: a hash of the lab's Python sources (a copy of the tree without
    .git, as on the GPU machine, has only that), and under git the commit and whether tracked files
    differ from it."""
    import subprocess

    from train.engine import code_version

    for name in ("cli.py", "gen/a.py", "train/b.py", "analyze/deep/c.py", "tests/t.py", "train/recipe.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"# {name}\n")
    first = code_version(tmp_path)
    assert set(first) == {"sources_sha256"} and len(first["sources_sha256"]) == 64
    (tmp_path / "tests" / "t.py").write_text("# not the lab's code\n")
    assert code_version(tmp_path) == first
    (tmp_path / "analyze" / "deep" / "c.py").write_text("# changed\n")
    changed = code_version(tmp_path)["sources_sha256"]
    assert changed != first["sources_sha256"]
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert code_version(tmp_path) == {"sources_sha256": changed, "commit": head, "uncommitted_changes": False}
    (tmp_path / "gen" / "a.py").write_text("# edited\n")
    assert code_version(tmp_path)["uncommitted_changes"] is True
    installed = tmp_path / "venv" / "site-packages"  # a copy installed with `pip install .` in a .venv of the checkout
    shutil.copytree(tmp_path / "gen", installed / "gen")
    (installed / "cli.py").write_text("# cli.py\n")
    assert code_version(installed) == {"sources_sha256": code_version(installed)["sources_sha256"]}  # not the checkout's commit
