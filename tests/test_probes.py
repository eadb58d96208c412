"""`cli.py probe`: the probes find a planted signal and nothing in noise, the control task is a
fixed function of the token type, and the command runs end to end on tiny quadratic, SQuAD and
classification runs; bad input is one line and exit 2."""

import csv
import json

import numpy as np
import pytest
import torch

from analyze.probes import control_labels, decoder_statements, fit_all, rows_needed, type_of
from gen import QuadlabError
from gen.dataset import GenOptions, generate
from gen.equations import Ranges
from train import tasks
from train.config import resolve
from train.squad_data import read_squad

from conftest import SQUAD_SAMPLE, tiny_squad_encoder
from test_bad_inputs import quadlab, refused

STEPS = {"max_steps": 8, "eval_every": 8, "batch_size": 16}


# ---------------------------------------------------------------------------------------------
# The probes on synthetic features


def _synthetic(n: int = 1200, d: int = 8, seed: int = 0):
    """Pooled features (n, layers 2, roles 2, d): layer 1 of role 0 encodes a 3-class label, the rest
    is noise; 300 token types spread over the rows, independent of the label."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    features = rng.normal(size=(n, 2, 2, d)).astype(np.float32)
    features[:, 1, 0, :3] += 4 * np.eye(3)[labels]
    types = np.repeat(rng.integers(0, 300, size=n)[:, None], 2, axis=1)
    data = {"features": features, "present": np.ones((n, 2), bool), "types": types}
    shares = np.bincount(labels) / n
    test = np.zeros(n, bool)
    test[rng.permutation(n)[: n // 3]] = True
    return [("encoder", ["planted", "noise"], data, [("label", labels, shares)])], test


def test_probes_find_a_planted_signal_and_nothing_in_noise():
    groups, test = _synthetic()
    cells = {(c["layer"], c["role"]): c for c in fit_all(groups, test, seed=0, progress=False)}
    assert set(cells) == {(l, r) for l in (0, 1) for r in ("planted", "noise")}
    planted = cells[(1, "planted")]
    assert planted["accuracy"] > 0.95 and planted["selectivity"] > 0.4, planted
    assert planted["n_test"] == test.sum() and planted["n_train"] == (~test).sum()
    for key in ((0, "planted"), (0, "noise"), (1, "noise")):
        c = cells[key]
        assert abs(c["accuracy"] - c["majority"]) < 0.08 and abs(c["selectivity"]) < 0.1, c
        assert c["selectivity"] == pytest.approx(c["accuracy"] - c["control_accuracy"])
    assert 0.45 < planted["majority"] < 0.56  # the most common label's share of the scoring part


def test_a_probe_that_memorises_token_types_is_caught_by_the_control():
    """Features that hold only the token type: the control task is learnt as well as the target,
    which here is itself a function of the type, so selectivity is near 0."""
    rng = np.random.default_rng(1)
    n, n_types = 1500, 6
    types = rng.integers(0, n_types, size=n)
    features = (np.eye(n_types)[types] * 3 + rng.normal(size=(n, n_types)) * 0.1).astype(np.float32)[:, None, None, :]
    labels = (types % 2).astype(int)
    test = np.zeros(n, bool)
    test[: n // 3] = True
    data = {"features": features, "present": np.ones((n, 1), bool), "types": types[:, None]}
    (cell,) = fit_all([("encoder", ["digits"], data, [("parity", labels, np.array([0.5, 0.5]))])], test, seed=0, progress=False)
    assert cell["accuracy"] > 0.95 and cell["control_accuracy"] > 0.95 and abs(cell["selectivity"]) < 0.05, cell


def test_a_role_with_one_token_type_gets_no_control():
    groups, test = _synthetic()
    groups[0][2]["types"][:] = 7
    cells = fit_all(groups, test, seed=0, progress=False)
    assert all(c["control_accuracy"] is None and c["selectivity"] is None and c["control_types"] == 1 for c in cells)


def test_control_labels_are_a_fixed_function_of_the_token_type():
    distribution = np.array([0.6, 0.3, 0.1])
    types = np.random.default_rng(0).integers(-10**12, 10**12, size=4000)
    labels = control_labels(types, distribution, seed=3, name="t")
    by_type = {}
    for t, label in zip(types.tolist(), labels.tolist()):
        assert by_type.setdefault(t, label) == label  # every occurrence of a type has one label
    again = control_labels(types[::-7], distribution, seed=3, name="t")  # other types around change nothing
    np.testing.assert_array_equal(again, labels[::-7])
    shares = np.bincount(labels, minlength=3) / len(labels)
    np.testing.assert_allclose(shares, distribution, atol=0.04)  # drawn from the target's distribution
    assert (control_labels(types, distribution, seed=4, name="t") != labels).mean() > 0.3  # another seed, other labels
    assert type_of([5, 6]) == type_of(np.array([5, 6])) != type_of([6, 5])


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_every_task_names_its_probe_targets(name):
    assert callable(getattr(tasks.module(name).Analysis, "probe_targets", None))


def test_rows_needed_leaves_enough_on_each_side():
    for fraction in (0.1, 0.3, 0.5, 0.9):
        n = rows_needed(fraction)
        assert min(round(n * fraction), n - round(n * fraction)) >= 10
        assert min(round((n - 1) * fraction), n - 1 - round((n - 1) * fraction)) < 10


# ---------------------------------------------------------------------------------------------
# The command on tiny runs of each task


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs of the three tasks (as tests/test_tasks.py builds them): the quadratic dataset's
    test split has 60 rows; the SQuAD run evaluates on 2 articles (35 questions)."""
    root = tmp_path_factory.mktemp("probes")
    generate(GenOptions(rows=300, seed=5, ranges=Ranges(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)), root / "data", workers=1)
    configs = {
        "quadratic": resolve("tiny", None, {"data": str(root / "data"), "run_dir": str(root / "quadratic"), "val_size": 10, "eval_limit": 10, **STEPS}),
        "classify": resolve("classify", None, {"data": str(root / "data"), "run_dir": str(root / "classify"), "d_model": 32, "d_ff": 64,
                                               "num_layers": 2, "num_heads": 2, "max_length": 64, "val_size": 10, **STEPS}),
    }
    _, articles = read_squad(SQUAD_SAMPLE)
    encoder = tiny_squad_encoder(articles, root / "squad-model", vocab_size=1500, hidden_size=32, max_positions=256)
    configs["squad"] = resolve("squad", None, {"model_name": str(encoder), "train_file": str(SQUAD_SAMPLE), "eval_articles": 2,
                                               "run_dir": str(root / "squad"), "max_length": 96, "stride": 32, **STEPS})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only waits on the first when the machine is busy
    try:
        for name, config in configs.items():
            tasks.module(name).train_run(config, progress=False)
    finally:
        torch.set_num_threads(threads)
    return root


def _check_table(out, cells: list[dict]) -> None:
    with open(out / "probes.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(cells) and rows[0]["target"] == cells[0]["target"]
    for c in cells:
        assert 0 <= c["accuracy"] <= 1 and 0 < c["majority"] <= 1 and c["n_train"] >= 10 and c["n_test"] >= 10
        if c["selectivity"] is not None:
            assert c["selectivity"] == pytest.approx(c["accuracy"] - c["control_accuracy"]) and c["control_types"] > 1


def test_quadratic_targets_are_computed_from_the_coefficients(runs):
    from train.runs import analysis

    task = analysis(runs / "quadratic", "probe")
    targets = task.probe_targets()
    assert list(targets) == ["root class", "sign of D", "last digit of |D|", "leading digit of |D|", "digits of |D|", "last digit of b^2",
                             "sign of a", "sign of b", "sign of ac"]
    assert all(len(labels) == task.n_rows == 60 for labels in targets.values())
    for i in range(task.n_rows):
        a, b, c = (task.rows[k][i] for k in "abc")
        d = b * b - 4 * a * c
        row = {name: labels[i] for name, labels in targets.items()}
        assert row["sign of D"] == {1: "+", 0: "0", -1: "-"}[(d > 0) - (d < 0)] and row["root class"] == {"+": "two", "0": "one", "-": "none"}[row["sign of D"]]
        assert (row["last digit of |D|"], row["leading digit of |D|"], row["digits of |D|"]) == (str(abs(d))[-1], str(abs(d))[0], len(str(abs(d))))
        assert row["last digit of b^2"] == str(b * b % 10) and row["sign of a"] == ("+" if a > 0 else "-")


def test_decoder_statements_are_matched_by_name_across_rows_of_different_lengths():
    """In the reversed format the number of steps follows the digits, so D is the 12th statement
    in one row and the 7th in another: each row's segment named D must be its D statement."""
    from gen.equations import write_equation, write_solution
    from train.quadratic import Analysis, build_tokenizer, teacher_forced_batch

    rows = [(a, -a * (r + q), a * r * q) for a, r, q in ((-6, 371, -1342), (7, -3, 12), (-1, 4, -3))] + [(1, -2, 1), (3, 0, 2)]  # 2 / 1 / 0 roots
    equations = [write_equation(*r) for r in rows]
    solutions = [write_solution(*r, "reversed") for r in rows]
    names = Analysis.statement_names(type("Rows", (), {"rows": {"solution": solutions}})())
    batch = teacher_forced_batch(build_tokenizer(equations + solutions + ["0123456789x^+-=()*/;Dnoe~sqrt"]), equations, solutions)
    d_index = []
    for b, row in enumerate(names):
        segments, tokens = batch["segments"]["decoder"][b], batch["tokens"]["decoder"][b]
        assert int(segments.max()) + 1 == solutions[b].count(";") and len(row) <= solutions[b].count(";")  # the answer: one name
        text = ["".join(t for t, s in zip(tokens, segments.tolist()) if s == k).removeprefix("<start>").removeprefix("~") for k in range(len(row))]
        assert text[row.index("D")].startswith("D=") and text[row.index("4*a")].startswith("4*a=")
        assert ("sqrt(D)" in row) == (rows[b][1] ** 2 - 4 * rows[b][0] * rows[b][2] >= 0)
        assert all(text[k].startswith(("x=", "sqrt(D)=")) == (name in ("x1", "x2", "sqrt(D)")) for k, name in enumerate(row) if name != "answer")
        d_index.append(row.index("D"))
    assert len(set(d_index)) > 1  # D's index differs: matching by index would mix statements

    chosen = decoder_statements(names)
    formulas = [n for n in dict.fromkeys(n for row in names for n in row) if " work " not in n]
    assert set(formulas) <= set(chosen) and len(chosen) == min(16, len({n for row in names for n in row}))
    assert chosen.index("4*a") < chosen.index("D") < chosen.index("sqrt(D)") < chosen.index("x1") < chosen.index("answer")  # as written
    short = decoder_statements(names, limit=len(formulas) + 2)
    assert set(short) - set(formulas) == {"D work 1", "x1 work 1"}  # each formula's first step before any second; the commoner first
    assert decoder_statements([["D", "D work 1", "D work 2", "D", "x1"]]) == ["D", "D work 1", "D work 2", "x1"]  # a name's first place


def test_probe_command_on_a_quadratic_run(runs, tmp_path, capsys, monkeypatch):
    out = tmp_path / "probes"
    targets = ["root class", "sign of D", "last digit of b^2"]
    status, printed, err = quadlab(capsys, monkeypatch, "probe", runs / "quadratic", "--out", out, "--held-out", "0.4", "--seed", "1",
                                   *[a for t in targets for a in ("--target", t)])
    assert status == 0, err
    assert f"and 3 heatmaps to {out}" in printed
    status, one, err = quadlab(capsys, monkeypatch, "probe", runs / "quadratic", "--out", tmp_path / "one", "--target", "root class")
    assert status == 0 and f"and 1 heatmap to {tmp_path / 'one'}" in one, err
    result = json.loads((out / "probes.json").read_text())
    assert list(result["targets"]) == targets and result["rows"] == 60
    assert result["settings"]["rows_scored"] == 24 and result["settings"]["rows_fit"] == 36
    cells = result["cells"]
    _check_table(out, cells)
    encoder = {(c["layer"], c["role"]) for c in cells if c["side"] == "encoder" and c["target"] == "sign of D"}
    assert {(l, r) for l in range(3) for r in ("a", "b", "c", "x", "^", "=", "</s>", "mean")} <= encoder  # embeddings + 2 layers
    statements = result["settings"]["decoder_roles"]
    assert statements[:2] == ["D", "x1"]  # the `=` before D's value, the `=` before the first root's
    assert {c["role"] for c in cells if c["side"] == "decoder"} <= set(statements) and any(c["side"] == "decoder" for c in cells)
    x_cells = [c for c in cells if c["role"] in ("x", "^", "=")]
    assert x_cells and all(c["selectivity"] is None for c in x_cells)  # one token type: no control
    assert any(c["selectivity"] is not None for c in cells if c["role"] == "mean")
    # the root class and the sign of D are one partition of the rows, so their probes agree
    by = {(c["target"], c["side"], c["layer"], c["role"]): c["accuracy"] for c in cells}
    assert all(by[("root class", *k[1:])] == pytest.approx(v, abs=0.05) for k, v in by.items() if k[0] == "sign of D")
    lines = printed.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == targets and "best at layer" in lines[0] and "majority" in lines[0]
    assert all((out / f"probe-{slug}.png").stat().st_size > 0 for slug in ("root-class", "sign-of-d", "last-digit-of-b-2"))
    assert not list(tmp_path.glob(".probes*"))  # no partial directory left


def test_probe_on_squad_and_classification_runs(runs, tmp_path):
    from analyze.probes import run_probes

    squad = run_probes(runs / "squad", tmp_path / "squad", progress=False)
    assert squad["targets"]["inside the answer span"]["level"] == "token"
    assert set(squad["targets"]["inside the answer span"]["labels"]) == {"inside", "outside"}
    assert [(c["layer"], c["role"]) for c in squad["cells"]] == [(0, "token"), (1, "token"), (2, "token")]  # embeddings + 2 layers
    _check_table(tmp_path / "squad", squad["cells"])
    assert all(c["control_types"] > 10 for c in squad["cells"])  # token ids of the context

    classify = run_probes(runs / "classify", tmp_path / "classify", limit=0, progress=False)
    assert list(classify["targets"]) == ["label"] and set(classify["targets"]["label"]["labels"]) == {"none", "one", "two"}
    _check_table(tmp_path / "classify", classify["cells"])
    assert {c["role"] for c in classify["cells"]} >= {"[CLS]", "mean", "x", "="} and {c["layer"] for c in classify["cells"]} == {0, 1, 2}
    assert (tmp_path / "classify" / "probe-label.svg").exists()


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path / "cwd"


@pytest.mark.parametrize("args, message", [
    (["--limit", "20"], "20 rows of the test split are too few to split for probing: --held-out 0.3 needs at least 32"),
    (["--target", "sign of D", "--target", "colour"], "unknown target 'colour' for this quadratic run; its targets are: 'root class', 'sign of D'"),
    (["--held-out", "1.5"], "--held-out 1.5 is not a share of the rows"),
])
def test_bad_probe_options_are_one_line_and_exit_2(runs, tmp_path, cwd, capsys, monkeypatch, args, message):
    out = tmp_path / "out"
    line = refused(capsys, monkeypatch, cwd, "probe", runs / "quadratic", "--out", out, *args, untouched=(runs / "quadratic",), absent=(out,))
    assert message in line


def test_probe_refuses_what_is_not_a_finished_run(runs, tmp_path, cwd, capsys, monkeypatch):
    out = tmp_path / "out"
    line = refused(capsys, monkeypatch, cwd, "probe", runs / "data", "--out", out, absent=(out,))
    assert "not a run directory" in line
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((runs / "quadratic" / "config.yaml").read_text())
    line = refused(capsys, monkeypatch, cwd, "probe", unfinished, "--out", out, absent=(out,))
    assert "not a finished run directory" in line
    with pytest.raises(QuadlabError, match="SQuAD run; its targets are: 'inside the answer span'"):
        from analyze.probes import run_probes

        run_probes(runs / "squad", out, targets=["root class"], progress=False)
