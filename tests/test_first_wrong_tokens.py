"""figures/results/padded-d-plain-cpu-iterated/first_wrong_tokens.py on a tiny run and hand-made
predictions: each failed row read at its first wrong token, the kinds of decision, the beams, and
the least-sure flagging."""

import gzip
import json
from pathlib import Path

import pytest

from gen.dataset import GenOptions, generate
from gen.equations import Ranges, write_equation, write_solution
from train.config import resolve
from train.quadratic import train_run

from conftest import script_module

SCRIPT = Path(__file__).resolve().parents[1] / "figures/results/padded-d-plain-cpu-iterated/first_wrong_tokens.py"
first_wrong_tokens = script_module(SCRIPT)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fwt")
    generate(GenOptions(rows=60, seed=0, ranges=Ranges(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)), root / "data", workers=1)
    train_run(resolve("tiny", None, {"data": str(root / "data"), "run_dir": str(root / "run"), "max_steps": 5, "eval_every": 5,
                                     "val_size": 4, "batch_size": 8, "eval_batch_size": 16, "eval_limit": 4}), progress=False)
    return root / "run"


def test_the_decision_at_the_first_wrong_token_is_named():
    kind = first_wrong_tokens.kind
    assert kind({"wrote": ";", "reference": "7"}) == "stopped early" and kind({"wrote": "</s>", "reference": "x"}) == "stopped early"
    assert kind({"wrote": "7", "reference": ";"}) == "went on" and kind({"wrote": "3", "reference": "4"}) == "digit for digit"
    assert kind({"wrote": "+", "reference": "-"}) == "other" and kind({"wrote": ";", "reference": "</s>"}) == "other"


def write_rows(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt") as out:
        out.write("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_each_failed_row_is_read_at_its_first_wrong_token(run, tmp_path):
    assert json.loads((run / "dataset-card.json").read_text())["format"] == "published"
    coefficients = [(1, -5, 6), (1, -21, 20), (2, -2, -4), (1, -3, 2)]
    eq = {c: write_equation(*c) for c in coefficients}
    ref = {c: write_solution(*c) for c in coefficients}
    digit = ref[(1, -5, 6)].index("=1;") + 1  # D's value 1 written 7
    plain = write_rows(tmp_path / "predictions.jsonl.gz", [
        {"equation": eq[(1, -3, 2)], "exact": True},  # compact: the output is the reference
        {"equation": eq[(1, -5, 6)], "prediction": ref[(1, -5, 6)][:digit] + "7" + ref[(1, -5, 6)][digit + 1:]},
        {"equation": eq[(1, -21, 20)], "prediction": ref[(1, -21, 20)].replace("=361;", "=36;", 1)},  # D ended a digit early
    ])
    wrong = ref[(2, -2, -4)].replace("=36;", "=361;", 1)  # D = 4 + 32 = 36, written on
    beams = write_rows(tmp_path / "predictions-beams.jsonl.gz", [{"equation": eq[(2, -2, -4)], "prediction": wrong, "beams": [ref[(2, -2, -4)], wrong]}])
    out = tmp_path / "out.json"
    first_wrong_tokens.main(str(run), str(out), str(plain), str(beams), "--least-sure", f"--rows-out={tmp_path / 'rows.jsonl.gz'}")
    result = json.loads(out.read_text())
    # every row read, as it was, with its least_sure: the failed rows' are those of the result
    written = [json.loads(line) for line in gzip.decompress((tmp_path / "rows.jsonl.gz").read_bytes()).decode().splitlines()]
    given = [json.loads(line) for path in (plain, beams) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]
    assert [{k: v for k, v in r.items() if k != "least_sure"} for r in written] == given
    assert all(0 < r["least_sure"] <= 1 for r in written)
    for r in result["rows"]:
        assert next(w["least_sure"] for w in written if w["equation"] == r["equation"]) == round(r["least_sure"], 5)
    assert result["rows_read"] == 4 and result["failed_rows"] == 3
    by_equation = {r["equation"]: r for r in result["rows"]}
    assert set(by_equation) == {eq[(1, -5, 6)], eq[(1, -21, 20)], eq[(2, -2, -4)]}
    expected = {eq[(1, -5, 6)]: (digit, "7", "1", "digit for digit"), eq[(1, -21, 20)]: (ref[(1, -21, 20)].index("=361;") + 3, ";", "1", "stopped early"),
                eq[(2, -2, -4)]: (ref[(2, -2, -4)].index("=36;") + 3, "1", ";", "went on")}
    for equation, (position, wrote, reference, kind) in expected.items():
        row = by_equation[equation]
        assert (row["position"], row["wrote"], row["reference"], row["kind"]) == (position, wrote, reference, kind), row
        assert 0 <= row["p_reference"] <= 1 and row["reference_rank"] >= 1
        assert row["least_sure"] <= row["p_wrote"] + 1e-6  # the least sure token is at most as sure as this one
        assert row["first_wrong"].startswith("D")
    assert by_equation[eq[(2, -2, -4)]]["most_likely_beam_solves"] is True and "most_likely_beam_solves" not in by_equation[eq[(1, -5, 6)]]
    assert result["with_beams"]["mended by the most likely beam"]["rows"] == 1 and result["with_beams"]["not mended"]["rows"] == 0
    assert result["all"]["kinds"] == {"digit for digit": 1, "stopped early": 1, "went on": 1}
    assert result["by_first_wrong_statement"] == {"D": result["all"]}
    flagging = result["least_sure"]["flagging"]
    assert flagging["rows"] == 4 and flagging["failed"] == 3
    counts = [flagging[f"least_sure < {t}"] for t in (0.5, 0.6, 0.7, 0.8, 0.9)]
    assert all(c["failed among them"] <= c["flagged"] <= 4 for c in counts)
    assert [c["flagged"] for c in counts] == sorted(c["flagged"] for c in counts)  # a higher threshold flags as many or more
    assert all(c["of all failed"] == round(c["failed among them"] / 3, 3) for c in counts)


def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path):
    """A refusal in this process (the errors the command turns into its one line), and one command
    run as a shell runs it (a process of its own takes seconds to import torch)."""
    import subprocess
    import sys

    from gen import QuadlabError

    with pytest.raises((QuadlabError, OSError)) as refused:  # what the command catches
        first_wrong_tokens.main(str(run), str(tmp_path / "out.json"), str(tmp_path / "missing.jsonl"))
    assert "missing.jsonl" in str(refused.value) and len(str(refused.value).splitlines()) == 1
    done = subprocess.run([sys.executable, SCRIPT, tmp_path, tmp_path / "out.json", tmp_path / "missing.jsonl"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("first_wrong_tokens.py: error: ") and not (tmp_path / "out.json").exists()
