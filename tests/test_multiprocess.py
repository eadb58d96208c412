"""Training under `accelerate launch` with two processes on the CPU (gloo): the run, its files and
an interrupted run resumed under two processes. Each launch takes some 25 s on 2 cores."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from gen import QuadlabError
from gen.dataset import GenOptions, generate
from gen.equations import Ranges
from train.config import load_yaml
from train.engine import STOP_AFTER_STEPS
from train.quadratic import train_run

ROOT = Path(__file__).resolve().parents[1]
# 140 training rows in batches of 8 per process: 9 steps an epoch, so 20 steps cross two epochs
TRAIN = ["--max-steps", "20", "--eval-every", "10", "--batch-size", "8", "--set", "val_size=20", "--eval-limit", "30"]


def launch(home: Path, *args, stop_after: int | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch` two processes of `cli.py train ARGS`."""
    with socket.socket() as probe:  # a free port for the processes to meet, so that parallel runs do not clash
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "1",  # gloo on the CPU, also where there is a GPU
        "HF_HOME": str(home),  # and no accelerate config file of the user's
    }
    env.pop(STOP_AFTER_STEPS, None)
    if stop_after:
        env[STOP_AFTER_STEPS] = str(stop_after)
    # --multi_gpu is what makes accelerate start several processes; without a GPU they run on the CPU
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
               str(ROOT / "cli.py"), "train", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "quadratic"
    generate(GenOptions(rows=200, seed=5, ranges=Ranges(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)), out)  # 160 train, 40 test
    return out


@pytest.fixture(scope="module")
def whole_run(data_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("whole")
    result = launch(base, "--data", data_dir, "--run-dir", base / "run", *TRAIN)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return base / "run", result


def _log(run: Path) -> tuple[list[dict], list[dict]]:
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in records if "loss" in r], [r for r in records if "eval" in r]


def test_two_processes_evaluate_each_row_once_and_write_each_file_once(whole_run, data_dir):
    run, result = whole_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["training"]["devices"] == 2 and metrics["training"]["steps"] == 20
    # decoded once over the whole split: no row twice, none dropped at the end of a shard
    assert metrics["test"]["rows"] == 30 and metrics["test"]["greedy"]["n"] == 30
    equations = [json.loads(line)["equation"] for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(equations) == 30 and set(equations) == set(datasets.load_from_disk(str(data_dir))["test"]["equation"][:30])
    assert result.stdout.count("test (30 rows, greedy)") == 1  # only the main process reports
    steps, evals = _log(run)
    assert [r["step"] for r in steps] == list(range(1, 21)) and [r["step"] for r in evals] == [10, 20]
    assert steps[-1]["epoch"] == 2  # 9 steps an epoch: each process took every other batch, not all of them
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == ["best", "checkpoint"]  # no leftover .tmp or .old
    assert {p.name for p in (run / "checkpoint").glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    assert json.loads((run / "checkpoint" / "trainer_state.json").read_text())["processes"] == 2


def test_two_process_run_resumed_under_two_processes_matches_the_whole_run(whole_run, data_dir, tmp_path):
    run = tmp_path / "run"
    broken = launch(tmp_path, "--data", data_dir, "--run-dir", run, *TRAIN, stop_after=13)  # mid-epoch, between checkpoints
    assert broken.returncode != 0 and "interrupted at step 13" in broken.stderr
    assert json.loads((run / "checkpoint" / "trainer_state.json").read_text())["step"] == 13
    resumed = launch(tmp_path, "--resume", "--run-dir", run)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
    # Exact, as in a lone process: the same kernels on the same machine, each process's RNG state
    # restored, and a sum of two gradients does not depend on their order.
    steps, evals = _log(run)
    assert [r["step"] for r in steps] == list(range(1, 21)) and [r["step"] for r in evals] == [10, 20]
    assert [r["loss"] for r in steps] == [r["loss"] for r in _log(whole_run[0])[0]]
    a, b = (load_file(r / "checkpoint" / "model.safetensors") for r in (whole_run[0], run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_two_process_checkpoint_is_not_resumed_by_one_process(whole_run):
    run = whole_run[0]
    with pytest.raises(QuadlabError, match="trained by 2 process.*--num_processes 2"):
        train_run(load_yaml(run / "config.yaml"), resume=True, progress=False)


def test_a_time_budget_under_two_processes_settles_one_length(data_dir, tmp_path):
    """train_seconds: both processes count the steps from the same averaged timings (a spent budget:
    one step past the warm-up) and stop together."""
    result = launch(tmp_path, "--data", data_dir, "--run-dir", tmp_path / "run", *TRAIN, "--set", "warmup_steps=3",
                    "--set", "train_seconds=0.000001")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["training"]
    assert metrics["devices"] == 2 and metrics["steps"] == 4 and metrics["time_budget"]["max_steps"] == 4
    assert [r["step"] for r in _log(tmp_path / "run")[0]] == [1, 2, 3, 4]
    assert load_yaml(tmp_path / "run" / "config.yaml").max_steps == 4
