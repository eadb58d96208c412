import json

import datasets
import pytest

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
        ["--format", "latex"],
        ["--workers", "0"],
        ["--no-such-option"],
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
}


@pytest.mark.parametrize("name", HOSTILE)
def test_verify_hostile_solution_exit_1_no_traceback(run_cli, tmp_path, name):
    # from standard input (`-`): one argument of 200,000 characters is more than Linux passes
    result = run_cli("verify", PUBLISHED[0], "-", input=HOSTILE[name], timeout=30, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert json.loads(result.stdout)["ok"] is False
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("equation", ["__import__('os')", "x^3=0", "1" * 300 + "x^2=0", "9^9^9^9=0"], ids=lambda e: e[:20])
def test_verify_unreadable_equation_exit_2(run_cli, equation):
    result = run_cli("verify", equation, "x=1;")
    assert result.returncode == 2 and _one_line_error(result)
