"""The square-root error classes of figures/results/format-comparison-5k/sqrt_steps.py, on
hand-made outputs of x^2-317x-8184=0 (D = 133225, sqrt(D) = 365) in the reversed format."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gen.equations import REVERSED_MARK, reverse_digits, write_solution

from conftest import script_module

SCRIPT = Path(__file__).resolve().parents[1] / "figures/results/format-comparison-5k/sqrt_steps.py"
sqrt_steps = script_module(SCRIPT)

TARGET = write_solution(1, -317, -8184, "reversed")
STEPS = "3*3=9;13-9=4;(20*3+6)*6=396;432-396=36;(20*36+5)*5=3625;3625-3625=0;sqrt(D)=365;"


def corrupted(old: str, new: str) -> str:
    """The reference with one read-back piece replaced, written reversed again."""
    text = reverse_digits(TARGET[1:])
    assert text.count(old) == 1
    return REVERSED_MARK + reverse_digits(text.replace(old, new))


def test_reference_steps_read_back():
    d_statement, steps, s_statement = sqrt_steps.sqrt_steps(TARGET)
    assert d_statement == "D=100489-(-32736)=133225"
    assert ";".join(steps + [s_statement]) + ";" == STEPS


@pytest.mark.parametrize("old, new, expected", [
    ("(20*3+6)*6=396;432-396=36", "(20*3+7)*7=469;432-469=37", "trial digit too large"),
    ("(20*3+6)*6=396", "(20*3+5)*5=325", "trial digit too small"),
    ("3*3=9;13-9=4", "2*2=4;13-4=9", "trial digit too small"),
    ("(20*3+6)*6=396", "(20*3+6)*6=386", "trial product wrong"),
    ("(20*36+5)*5", "(20*63+5)*5", "root so far copied wrong"),
    ("(20*3+6)*6=396", "(20*3+6)*5=396", "trial malformed"),
    ("432-396=36", "431-396=35", "remainder (brought-down pair) wrong"),
    ("432-396=36", "432-386=46", "trial product copied wrong"),
    ("432-396=36", "432-396=37", "difference wrong"),
    (";(20*36+5)*5=3625;3625-3625=0;sqrt(D)=365", ";sqrt(D)=36", "steps end too soon"),
    ("3625-3625=0;", "3625-3625=0;(20*365+0)*0=0;", "steps go on past D's last pair"),
    ("sqrt(D)=365", "sqrt(D)=366", "sqrt(D) statement wrong"),
])
def test_first_difference_classes(old, new, expected):
    reference = sqrt_steps.sqrt_steps(TARGET)
    ours = sqrt_steps.sqrt_steps(corrupted(old, new))
    assert ours[0] == reference[0]
    assert sqrt_steps.first_difference(ours[1], reference[1]) == expected


def test_report_counts_only_outputs_with_d_right(tmp_path, capsys):
    rows = [
        {"target": TARGET, "prediction": TARGET},
        {"target": TARGET, "prediction": corrupted("(20*3+6)*6=396", "(20*3+5)*5=325")},
        {"target": TARGET, "prediction": corrupted("(20*3+6)*6=396", "(20*3+5)*5=325")},
        {"target": TARGET, "prediction": corrupted("(20*3+6)*6=396", "(20*3+6)*6=386")},
        {"target": TARGET, "prediction": corrupted("sqrt(D)=365", "sqrt(D)=366")},  # every step right, S wrong
        {"target": TARGET, "prediction": corrupted("=133225;", "=133226;")},  # D wrong: left out
        {"target": TARGET, "prediction": "~4*a=4;"},  # no D: left out
        {"target": write_solution(1, 2, 5, "reversed"), "prediction": "~x=none;"},  # D < 0: left out
    ]
    with gzip.open(tmp_path / "predictions.jsonl.gz", "wt") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)
    summary = sqrt_steps.report(str(tmp_path))
    assert summary == {"considered": 5, "right": 1, "root_right": 4,  # one wrong step, S still right: 3
                       "first_difference": {"trial digit too small": 2, "trial product wrong": 1,
                                            "sqrt(D) statement wrong": 1}}
    printed = capsys.readouterr().out
    assert "3 digits:     5, wrong at [0, 3, 0, 1]" in printed


def test_a_folder_without_predictions_is_one_line_and_a_non_zero_exit(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"sqrt_steps.py: {tmp_path} has no predictions.jsonl.gz; "
                                                "give a results folder (a path, or a name beside this script)"]
