"""`cli.py grade`: eval's predictions graded again with today's grader, compared with the grades
they record and with metrics.json beside them; and every predictions file tracked under
figures/results/ gives its recorded numbers again (RESULTS.md, "Grades that can be checked")."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from conftest import ROOT, quadlab, snapshot
from gen.equations import write_equation, write_solution
from train.quadratic import GRADES, beam_metrics, grade_file, graded_metrics, regrade

EQUATIONS = [(-3, -15, 18), (7, 3556, 451612), (5, 3, 7), (1, -3, 2), (2, 0, -8)]  # two roots, one, none, two, two


def eval_rows(fmt: str = "steps") -> list[dict]:
    """eval's predictions.jsonl rows for EQUATIONS: the reference, a wrong D, the reference, a
    reordered answer, nothing at all. Graded by the same code eval uses."""
    rows = []
    for i, (a, b, c) in enumerate(EQUATIONS):
        target = write_solution(a, b, c, fmt)
        prediction = [target, target.replace("D=", "D=1", 1), target, None, ""][i]
        if prediction is None:  # the same roots in the other order: not exact, the roots right
            *steps, x1, x2, _ = target.split(";")
            prediction = ";".join([*steps, x2, x1]) + ";"
        rows.append({"equation": write_equation(a, b, c), "a": a, "b": b, "c": c, "target": target, "prediction": prediction})
    for row, record in zip(rows, regrade(rows, None, "rows")):
        row.update({k: record[k] for k in GRADES})
    return rows


def write_run(folder: Path, rows: list[dict], name: str = "predictions.jsonl") -> Path:
    """A predictions file and the metrics.json that eval writes beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    entry = "test" if name.startswith("predictions.") else name.split(".")[0].removeprefix("predictions-")
    records = regrade(rows, None, "rows")
    beamed = any("beams" in r for r in rows)  # with eval --beams-below, some rows only
    beams = beam_metrics(records, [r.get("beams", [r["prediction"]]) for r in records])[0] if beamed else {}
    metrics = {"validation_best": {"full_solution_accuracy": 0.5},
               entry: {"rows": len(rows), "decoding": "greedy", "greedy_seconds": 1.0, **graded_metrics(records), **beams}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_eval_rows_grade_as_expected():
    rows = eval_rows()
    assert [r["exact"] for r in rows] == [True, False, True, False, False]
    assert [r["roots_correct"] for r in rows] == [True, False, True, True, False]
    assert [r["num_roots"] for r in rows] == [2, 1, 0, 2, 2]


def test_a_run_graded_again_agrees_and_says_so(tmp_path, capsys, monkeypatch):
    path = write_run(tmp_path / "run", eval_rows())
    before = snapshot(tmp_path)
    status, out, err = quadlab(capsys, monkeypatch, "grade", path)
    assert (status, err) == (0, "")
    assert "test (5 rows, greedy): full solution accuracy 0.4000, character accuracy" in out
    assert "roots accuracy 0.6000" in out and "first statement to go wrong" in out
    assert "every grade recorded in its 5 rows and in metrics.json 'test' is given again" in out
    assert snapshot(tmp_path) == before  # without --out nothing is written


def test_a_grade_the_grader_no_longer_gives_is_listed_and_exits_1(tmp_path, capsys, monkeypatch):
    rows = eval_rows()
    rows[1]["roots_correct"] = True  # as an older grader might have judged it
    path = write_run(tmp_path / "run", rows)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    metrics["test"]["greedy"]["by_num_roots"]["one"]["roots_accuracy"] = 1.0
    metrics["test"]["diagnosis"]["first_wrong"]["none wrong"] = 0.5
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    status, out, err = quadlab(capsys, monkeypatch, "grade", path)
    assert status == 1 and err == ""
    assert "disagrees with what it records in 3 places" in out
    assert f"line 2 ({write_equation(*EQUATIONS[1])}): roots_correct recorded true, graded false" in out
    assert "metrics.json test.greedy.by_num_roots.one.roots_accuracy: recorded 1.0, graded 0.0" in out
    assert "metrics.json test.diagnosis.first_wrong.none wrong: recorded 0.5, graded 0.6" in out  # the reordered answer is right


def test_out_rewrites_the_grades_and_keeps_the_rest(tmp_path, capsys, monkeypatch):
    rows = eval_rows()
    rows[1]["roots_correct"], rows[1]["steps_valid"] = True, True
    path = write_run(tmp_path / "run", rows)
    status, out, _ = quadlab(capsys, monkeypatch, "grade", path, "--out", tmp_path / "run")
    assert status == 0 and "with the new grades" in out
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert written == eval_rows()  # the grades given again, every other key as it was
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["validation_best"] == {"full_solution_accuracy": 0.5}  # other entries kept
    assert metrics["test"]["decoding"] == "greedy" and metrics["test"]["greedy_seconds"] == 1.0  # and the entry's other keys
    assert metrics["test"]["greedy"]["roots_accuracy"] == pytest.approx(0.6)
    assert "cli.py grade" in metrics["test"]["graded"]
    assert (tmp_path / "run" / "diagnosis.png").stat().st_size > 10_000
    assert quadlab(capsys, monkeypatch, "grade", path)[0] == 0


def test_compact_rows_keep_the_output_only_where_it_is_wrong(tmp_path, capsys, monkeypatch):
    path = write_run(tmp_path / "run", eval_rows(), "predictions-validation.jsonl")
    status, out, _ = quadlab(capsys, monkeypatch, "grade", path, "--out", tmp_path / "out", "--compact")
    assert status == 0
    packed = tmp_path / "out" / "predictions-validation.jsonl.gz"
    compact = [json.loads(line) for line in gzip.decompress(packed.read_bytes()).decode().splitlines()]
    assert ["prediction" in r for r in compact] == [False, True, False, True, True]
    assert all("target" not in r and set(GRADES) <= set(r) for r in compact)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["validation"]["rows"] == 5
    assert (tmp_path / "out" / "diagnosis-validation.png").exists()
    # the same bytes from the same rows (no time stamp in the gzip header)
    first = packed.read_bytes()
    quadlab(capsys, monkeypatch, "grade", path, "--out", tmp_path / "out", "--compact")
    assert packed.read_bytes() == first

    # compact rows have no target: the references come from the format
    status, _, err = quadlab(capsys, monkeypatch, "grade", packed)
    assert status == 2 and err.count("\n") == 1 and "line 1 has no `target`; give the format" in err and "--format NAME" in err
    status, out, _ = quadlab(capsys, monkeypatch, "grade", packed, "--format", "steps")
    assert status == 0 and "in metrics.json 'validation' is given again" in out
    (tmp_path / "out" / "dataset-card.json").write_text(json.dumps({"format": "steps"}))  # as a run keeps it
    assert quadlab(capsys, monkeypatch, "grade", packed)[0] == 0
    # the wrong format: the wrong rows' character accuracy is not given again
    status, out, _ = quadlab(capsys, monkeypatch, "grade", packed, "--format", "published")
    assert status == 1 and "char_accuracy recorded" in out


def beam_rows() -> list[dict]:
    """eval --num-beams 3 rows: the beams are the greedy output, the reference and `x=none;`, so
    the grader's choice is the greedy output where it accepts it, else the reference."""
    rows = eval_rows()
    for row in rows:
        row["beams"] = [row["prediction"], row["target"], "x=none;"]
    for row, record in zip(rows, regrade(rows, None, "rows")):
        row["prediction_beam_reranked"] = beam_metrics([record], [row["beams"]])[1][0]
    return rows


def test_beams_are_graded_again_most_likely_and_reranked(tmp_path, capsys, monkeypatch):
    rows = beam_rows()
    assert [r["prediction_beam_reranked"] == r["prediction"] for r in rows] == [True, False, True, True, False]
    path = write_run(tmp_path / "run", rows)
    status, out, err = quadlab(capsys, monkeypatch, "grade", path)
    assert (status, err) == (0, "")
    assert "(5 rows, beam3_most_likely): full solution accuracy 0.4000" in out  # the greedy outputs
    assert "(5 rows, beam3_grader_reranked): full solution accuracy 0.8000" in out  # the reordered answer is accepted, not exact
    assert "in metrics.json 'test' is given again" in out

    # a recorded beam metric or choice that the beams do not give again
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    metrics["test"]["beam3_grader_reranked"]["full_solution_accuracy"] = 0.9
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(metrics))
    rows[4]["prediction_beam_reranked"] = "x=none;"
    write_run(tmp_path / "tampered", rows)
    (tmp_path / "tampered" / "metrics.json").write_text(json.dumps(metrics))
    status, out, _ = quadlab(capsys, monkeypatch, "grade", tmp_path / "tampered" / "predictions.jsonl")
    assert status == 1 and "disagrees with what it records in 2 places" in out
    assert f"line 5 ({write_equation(*EQUATIONS[4])}): prediction_beam_reranked is not the beam the grader accepts first" in out
    assert "metrics.json test.beam3_grader_reranked.full_solution_accuracy: recorded 0.9, graded 0.8" in out

    # --out puts the grader's choice back; compact rows keep the beams, and are checked from them
    assert quadlab(capsys, monkeypatch, "grade", tmp_path / "tampered" / "predictions.jsonl", "--out", tmp_path / "tampered")[0] == 0
    assert [json.loads(line) for line in (tmp_path / "tampered" / "predictions.jsonl").read_text().splitlines()] == beam_rows()
    assert quadlab(capsys, monkeypatch, "grade", path, "--out", tmp_path / "out", "--compact")[0] == 0
    compact = [json.loads(line) for line in gzip.decompress((tmp_path / "out" / "predictions.jsonl.gz").read_bytes()).decode().splitlines()]
    assert [r["beams"] for r in compact] == [r["beams"] for r in rows] and all("prediction_beam_reranked" not in r for r in compact)
    status, out, _ = quadlab(capsys, monkeypatch, "grade", tmp_path / "out" / "predictions.jsonl.gz", "--format", "steps")
    assert status == 0 and "(5 rows, beam3_grader_reranked): full solution accuracy 0.8000" in out


def test_beams_on_some_rows_only_are_graded_again_with_the_greedy_output_elsewhere(tmp_path, capsys, monkeypatch):
    """eval --beams-below: rows the model was sure of keep their greedy output and have no beams;
    the beam metrics take that output for them, and compact rows keep each row's least_sure."""
    rows = beam_rows()
    for i, row in enumerate(rows):
        row["least_sure"] = [0.99, 0.91, 0.98, 0.97, 0.12][i]
        if row["least_sure"] >= 0.5:  # as --beams-below 0.5 leaves them
            del row["beams"], row["prediction_beam_reranked"]
    path = write_run(tmp_path / "run", rows)
    status, out, err = quadlab(capsys, monkeypatch, "grade", path)
    assert (status, err) == (0, "")
    # only row 5 has beams, and the grader takes the reference from them; row 2 keeps its wrong D,
    # which its beams would have mended (0.8 in the test above)
    assert "(5 rows, beam3_most_likely): full solution accuracy 0.4000" in out
    assert "(5 rows, beam3_grader_reranked): full solution accuracy 0.6000, character accuracy" in out
    assert "in metrics.json 'test' is given again" in out
    assert quadlab(capsys, monkeypatch, "grade", path, "--out", tmp_path / "out", "--compact")[0] == 0
    compact = [json.loads(line) for line in gzip.decompress((tmp_path / "out" / "predictions.jsonl.gz").read_bytes()).decode().splitlines()]
    assert [("beams" in r, r["least_sure"]) for r in compact] == [(False, 0.99), (False, 0.91), (False, 0.98), (False, 0.97), (True, 0.12)]
    status, out, _ = quadlab(capsys, monkeypatch, "grade", tmp_path / "out" / "predictions.jsonl.gz", "--format", "steps")
    assert status == 0 and "(5 rows, beam3_grader_reranked): full solution accuracy 0.6000" in out


def test_a_file_without_a_metrics_entry_is_compared_row_by_row(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "pieces"
    folder.mkdir()
    path = folder / "predictions-rows0-5.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in eval_rows()))
    status, out, _ = quadlab(capsys, monkeypatch, "grade", path)
    assert status == 0 and "no entry 'rows0-5' in a metrics.json beside it" in out and "its 5 rows is given again" in out


@pytest.mark.parametrize("content, says", [
    (b'{"equation": "x^2-1=0", "prediction": "x=1;x=-1;"}\nnot json\n', "line 2 is not JSON"),
    (b'[1, 2]\n', "line 1 is not a JSON object"),
    (b'{"prediction": "x=1;"}\n', "line 1: no equation that can be read"),
    (b'{"equation": "x^2+=0", "prediction": "x=1;"}\n', "line 1: no equation that can be read"),
    (b'{"equation": "x^2-1=0", "target": "x=1;x=-1;", "exact": false}\n', "`prediction` is not a solution of at most"),
    (b'{"equation": "x^2-1=0", "target": "x=1;x=-1;", "prediction": 5}\n', "`prediction` is not a solution of at most"),
    (b'{"equation": "x^2-1=0", "target": "x=1;x=-1;", "prediction": "' + b"1" * 3000 + b'"}\n', "is not a solution of at most 2000"),
    (b'{"equation": "x^2-1=0", "target": "x=1;x=-1;", "prediction": "x=1;x=-1;", "beams": "x=1;x=-1;"}\n', "`beams` is not a list of two or more solutions"),
    (b'{"equation": "x^2-1=0", "target": "x=1;x=-1;", "prediction": "x=1;x=-1;", "beams": ["x=1;x=-1;"]}\n', "`beams` is not a list of two or more"),
    (b'{"equation": "x^2-1=0", "prediction": "x=1;", "target": "x=1;", "beams": ["x=1;", 2]}\n', "`beams` is not a solution of at most"),
    (b'{"equation": "x^2-1=0", "prediction": "x=1;", "target": "x=1;", "beams": ["x=1;", "x=2;"]}\n'
     b'{"equation": "x^2-1=0", "prediction": "x=1;", "target": "x=1;"}\n'
     b'{"equation": "x^2-1=0", "prediction": "x=1;", "target": "x=1;", "beams": ["x=1;", "x=2;", "x=3;"]}\n',
     "line 3 has 3 beams, an earlier line 2; every row of one evaluation has the same number, or none"),
    (b"", "has no rows"),
    (b"\xff\xfe\n", "cannot be read (UnicodeDecodeError)"),
])
def test_unreadable_predictions_are_one_line_errors(tmp_path, capsys, monkeypatch, content, says):
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(content)
    before = snapshot(tmp_path)
    status, out, err = quadlab(capsys, monkeypatch, "grade", path, "--out", tmp_path / "out")
    assert status == 2 and out == "" and err.count("\n") == 1 and says in err, err
    assert snapshot(tmp_path) == before


def test_bad_paths_and_options_are_one_line_errors(tmp_path, capsys, monkeypatch):
    (tmp_path / "predictions.jsonl.gz").write_text("not gzip\n")
    (tmp_path / "a file").write_text("")
    path = write_run(tmp_path / "run", eval_rows())
    for argv, says in [
        ([tmp_path / "missing.jsonl"], "does not exist; give eval's predictions.jsonl"),
        ([tmp_path], "is a directory; give the predictions.jsonl in it"),
        ([tmp_path / "predictions.jsonl.gz"], "cannot be read (BadGzipFile)"),
        ([path, "--compact"], "--compact says how to write the rows; give --out DIR too"),
        ([path, "--out", tmp_path / "a file" / "out"], "cannot be made"),
        ([path, "--format", "nonsense"], "'nonsense' is not one of"),
    ]:
        before = snapshot(tmp_path)
        status, out, err = quadlab(capsys, monkeypatch, "grade", *argv)
        assert status == 2 and out == "" and err.count("\n") == 1 and says in err, (argv, err)
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize("damage, content, says", [
    ("metrics.json", '{"test": ', "metrics.json cannot be read as JSON (JSONDecodeError); repair it or move it aside"),
    ("metrics.json", '{"test": 5}', "metrics.json is not what eval and gen write (a JSON object of entries)"),
    ("dataset-card.json", '{"format": ', "dataset-card.json cannot be read as JSON"),
    ("dataset-card.json", '["steps"]', "dataset-card.json is not what eval and gen write (a JSON object)"),
    ("out/metrics.json", '{"test": ', "out/metrics.json cannot be read as JSON"),
])
def test_a_damaged_file_beside_is_a_one_line_error_and_nothing_is_written(tmp_path, capsys, monkeypatch, damage, content, says):
    path = write_run(tmp_path / "run", eval_rows())
    (tmp_path / "run" / "out").mkdir()
    (tmp_path / "run" / damage).write_text(content)
    before = snapshot(tmp_path)
    status, out, err = quadlab(capsys, monkeypatch, "grade", path, "--out", tmp_path / "run" / "out")
    assert status == 2 and out == "" and err.count("\n") == 1 and says in err, err
    assert snapshot(tmp_path) == before


def test_a_card_naming_an_unknown_format_is_refused(tmp_path, capsys, monkeypatch):
    path = write_run(tmp_path / "run", eval_rows())
    (tmp_path / "run" / "dataset-card.json").write_text(json.dumps({"format": "cursive"}))
    status, _, err = quadlab(capsys, monkeypatch, "grade", path)
    assert status == 2 and "names no format this lab writes ('cursive'); give --format NAME" in err


TRACKED = sorted((ROOT / "figures" / "results").rglob("predictions*.jsonl.gz"))
# pieces of the padded-d-plain polishes kept without the run's dataset-card.json
NO_CARD_FORMAT = "padded-d-plain"


@pytest.fixture(scope="module")
def judged_once():
    """The tracked files share most rows (the same 20,000 test equations in several, and a right
    output is the reference), so each (equation, reference, output) is judged once in this module:
    `judge` is a pure function of them, and the grades compared are the ones it gives. This file
    alone took 173 s, now 130 s (2026-12-08)."""
    import functools

    import train.quadratic

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train.quadratic, "judge", functools.lru_cache(maxsize=None)(train.quadratic.judge))
        yield


@pytest.mark.parametrize("path", TRACKED, ids=[str(p.relative_to(ROOT / "figures" / "results")) for p in TRACKED])
def test_every_tracked_result_gives_its_recorded_grades_again(path, judged_once):
    """The numbers in RESULTS.md come from these files: a change to the grader or to the metrics
    that moves any of them fails here (then `cli.py grade FILE --out DIR` regrades it; RESULTS.md
    says what moved)."""
    fmt = None if (path.parent / "dataset-card.json").exists() else NO_CARD_FORMAT
    lines, differences = grade_file(path, fmt)
    assert differences == [], "\n".join(lines)


def test_the_tracked_results_are_found():
    assert len(TRACKED) >= 40
    assert any(p.parent.name == "run" and p.parent.parent.name == "padded-d-plain-cpu-iterated" for p in TRACKED)


def test_the_square_root_table_comes_again_from_the_compact_predictions(tmp_path):
    """sqrt_errors.py ("After D, the square root" in RESULTS.md) reads the 0.891 model's compact
    predictions: each right row's output is written again from the format in the card beside it."""
    import subprocess
    import sys

    folder = ROOT / "figures" / "results" / "reversed-small-more"
    done = subprocess.run([sys.executable, folder / "sqrt_errors.py", folder / "run" / "predictions.jsonl.gz", tmp_path / "out.json"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out.json").read_text()) == json.loads((folder / "sqrt_errors.json").read_text())
