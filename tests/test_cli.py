import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import datasets
import pytest
from conftest import ROOT

PUBLISHED = ("7x^2+3556x+451612=0", "D=(3556^2-4*7*451612)=0;x=(-3556-0)/(2*7)=-254;x=(-3556+0)/(2*7)=-254;x=-254;x=-254;")


def _one_line_error(result):
    lines = result.stderr.strip().splitlines()
    return len(lines) == 1 and "error" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [[], ["gen"], ["verify"]])
def test_every_command_has_help(run_cli, command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0 and "Usage:" in result.stdout


def test_gen_writes_a_loadable_dataset(run_cli, tmp_path):
    out = tmp_path / "q"
    result = run_cli("gen", "--rows", 500, "--seed", 3, "--a-range", "-5:5", "--root-range", "-20:20", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "train 400" in result.stdout
    dd = datasets.load_from_disk(str(out))
    assert len(dd["train"]) == 400 and all(-5 <= a <= 5 and a != 0 for a in dd["train"]["a"])
    again = run_cli("gen", "--rows", 500, "--out", out)
    assert again.returncode == 2 and _one_line_error(again) and "--overwrite" in again.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--rows", "-5"],
        ["--rows", "ten"],
        ["--mix", "0.5,0.5,0.5"],
        ["--mix", "half"],
        ["--a-range", "5:3"],
        ["--root-range", "1-2"],
        ["--a-range", "-1:1", "--root-range", "0:3"],
        ["--test-fraction", "0"],
        ["--rows", "3"],  # no test row
        ["--format", "latex"],
        ["--extra-train-rows", "-3"],
        ["--extra-train-rows", "10", "--extra-mix", "1,1,0"],
        ["--workers", "0"],
        ["--no-such-option"],
        # numbers are ASCII digits, nothing else (int() and float() would read every one of these)
        ["--rows", "١٠٠"],
        ["--rows", "1_000"],
        ["--seed", " 1"],
        ["--workers", "２"],
        ["--test-fraction", "nan"],
        ["--mix", "nan,0.5,0.5"],
        ["--mix", "0.5, 0.3, 0.2"],
        ["--a-range", "-５:5"],
        ["--root-range", "-20: 20"],
    ],
)
def test_gen_bad_options_one_line_exit_2(run_cli, tmp_path, args):
    result = run_cli("gen", *args, "--out", tmp_path / "q")
    assert result.returncode == 2 and _one_line_error(result), result.stderr
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("from_stdin", [False, True])
def test_verify_right_solution_exit_0(run_cli, from_stdin):
    result = run_cli("verify", PUBLISHED[0], "-", input=PUBLISHED[1]) if from_stdin else run_cli("verify", *PUBLISHED)
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert len(result.stdout.strip().splitlines()) == 1
    assert report["ok"] and report["true_roots"] == ["-254"] and report["stated_answer"] == ["-254", "-254"]


def test_verify_wrong_solution_exit_1(run_cli):
    result = run_cli("verify", PUBLISHED[0], PUBLISHED[1].replace(")=0;", ")=1;"))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["well_formed"] and not report["steps_valid"] and report["answer_correct"]


HOSTILE = {
    "tower": "D=9^9^9^9;x=1;",
    "200k digits": "x=" + "9" * 200_000 + ";",
    "50k parentheses": "x=" + "(" * 50_000 + "1" + ")" * 50_000 + ";",
    "python": "__import__('os').system('touch quadlab-pwned')",
    "full-width digit": PUBLISHED[1].replace("x=-254;x=-254;", "x=-254;x=-２54;"),  # int() reads `２54` as 254
}


@pytest.mark.parametrize("name", HOSTILE)
def test_verify_hostile_solution_exit_1_no_traceback(run_cli, tmp_path, name):
    # from standard input (`-`): one argument of 200,000 characters is more than Linux passes
    result = run_cli("verify", PUBLISHED[0], "-", input=HOSTILE[name], timeout=30, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert json.loads(result.stdout)["ok"] is False
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("equation", ["__import__('os')", "x^3=0", "1" * 300 + "x^2=0", "9^9^9^9=0", "١x^2+3x+2=0", "x^2+3x+２=0"],
                         ids=lambda e: e[:20])
def test_verify_unreadable_equation_exit_2(run_cli, equation):
    result = run_cli("verify", equation, "x=1;")
    assert result.returncode == 2 and _one_line_error(result)


@pytest.mark.parametrize(
    "args",
    [
        ["maps", "--head", "١:2"],
        ["maps", "--limit", "1_0"],
        ["eval", "runs/none", "--limit", "٣"],
        ["train", "--seed", "１"],
        ["train", "--lr", "inf"],
        ["train", "--set", "seed=٣"],
        ["train", "--set", "learning_rate=nan"],
    ],
    ids=" ".join,
)
def test_other_commands_read_ascii_numbers_only(run_cli, tmp_path, args):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2 and _one_line_error(result), result.stderr
    assert not list(tmp_path.iterdir())


def _stop_when(args, ready: str, cwd, signum=signal.SIGINT, timeout=300):
    """Run `cli.py ARGS` with stderr on a terminal, so that progress bars show as they do for a
    person, and once stderr matches `ready` stop it: SIGINT goes to its process group, as Ctrl-C
    does (every worker process gets it too), SIGTERM to the process alone, as `kill PID` does.
    Returns the exit code, stdout and the stderr lines (bar redraws, which end in a carriage
    return, count as lines)."""
    import fcntl
    import pty
    import struct
    import termios

    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm draws nothing on a 0x0 terminal
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal, start_new_session=True,
                            # a suite started in the background (`pytest &`) passes SIGINT on ignored, and
                            # Python then installs no Ctrl-C handler: give the child the terminal's default
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(terminal)
    chunks = []

    def read():
        while True:
            try:
                data = os.read(main, 4096)
            except OSError:  # Linux: EIO once no process holds the terminal any more
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not re.search(ready, b"".join(chunks).decode(errors="replace")):
            assert proc.poll() is None, f"ended before it showed progress: {b''.join(chunks)!r}"
            assert time.monotonic() < deadline, f"no progress in {timeout} s: {b''.join(chunks)!r}"
            time.sleep(0.05)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        stdout, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout)
    os.close(main)
    return proc.returncode, stdout.decode(), re.split(r"[\r\n]+", b"".join(chunks).decode(errors="replace"))


def _messages(lines: list[str], bar: str) -> list[str]:
    """What stderr says besides the progress bar `bar` and blank lines."""
    return [line for line in lines if line.strip() and not line.startswith(bar)]


needs_a_terminal = pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal and process groups are POSIX")


# SIGTERM reaches the parent alone: its workers, left to themselves, printed a broken pipe each
STOPS = pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
                                ids=["ctrl-c", "sigterm"])


@needs_a_terminal
@STOPS
def test_stopping_gen_prints_one_line_and_leaves_nothing(tmp_path, signum, code, said):
    returned, stdout, lines = _stop_when(["gen", "--rows", 20000, "--workers", 2, "--out", tmp_path / "q"],
                                         r"write\+verify: .*\b[1-9][0-9]*/20000", cwd=tmp_path, signum=signum)  # a chunk done: the pool works
    text = "\n".join(lines)
    assert returned == code and stdout == "", text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text and "ForkPoolWorker" not in text, text
    assert _messages(lines, "write+verify:") == [f"quadlab: {said}"], text
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its hidden .q.partial-PID sibling


@needs_a_terminal
@STOPS
def test_stopping_train_prints_one_line(tmp_path, signum, code, said):
    from gen.dataset import GenOptions, generate
    from gen.equations import Ranges

    data = tmp_path / "data"
    generate(GenOptions(rows=400, ranges=Ranges(a_lo=-5, a_hi=5, root_lo=-30, root_hi=30)), data)
    tiny = [f"--set={key}={value}" for key, value in
            {"d_model": 16, "d_ff": 32, "d_kv": 8, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2, "val_size": 20}.items()]
    # no evaluation (so no checkpoint write) before the interruption: Ctrl-C lands in a training step
    returned, stdout, lines = _stop_when(["train", "--data", data, "--run-dir", tmp_path / "run", "--max-steps", 100000, "--eval-every", 100000,
                                          "--batch-size", 8, *tiny], r"train: .*\b[1-9][0-9]*/100000", cwd=tmp_path, signum=signum)
    text = "\n".join(lines)
    assert returned == code and "Traceback" not in text and "KeyboardInterrupt" not in text, text
    [message] = _messages(lines, "train:")
    # not `--resume`, which would be refused: no checkpoint to resume from
    assert message == "quadlab train: interrupted before the first checkpoint, so there is nothing to resume; start it again with --overwrite", text
    assert not (tmp_path / "run" / "checkpoint").exists()
    assert not [p.name for p in (tmp_path / "run").rglob("*") if re.search(r"\.tmp|\.old|partial", p.name)]
