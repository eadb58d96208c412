"""figures/results/format-comparison-5k/work_or_equation.py: which statement it cuts where, the
pairs it makes, and that its teacher-forced verdicts are what greedy decoding writes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gen.equations import reverse_digits, write_equation, write_solution

from conftest import script_module

SCRIPT = Path(__file__).resolve().parents[1] / "figures/results/format-comparison-5k/work_or_equation.py"
woe = script_module(SCRIPT)

TWO, NONE = (1, -317, -8184), (1, 2, 5)  # D = 133225 = 365^2, roots 341 and -24; D = -16


@pytest.mark.parametrize("fmt", ["published", "steps-reversed", "reversed"])
def test_statement_values_are_the_values_written(fmt):
    solution = write_solution(*TWO, fmt)
    read = (lambda v: reverse_digits(v)) if solution.startswith("~") else (lambda v: v)
    expected = {"D": "133225", "sqrt(D)": "365", "first root's formula": "-24", "first answer": "-24"}
    for kind, value in expected.items():
        found = woe.statement_value(solution, kind)
        if kind == "sqrt(D)" and fmt == "published":
            assert found is None  # the published format writes the root inside the roots' formulas
            continue
        prefix, written = found
        assert solution.startswith(prefix + written + ";") and prefix.endswith("=")
        assert read(written) == value
    assert woe.statement_value(write_solution(*NONE, fmt), "first root's formula") is None
    assert woe.statement_value(write_solution(*NONE, fmt), "first answer") is None  # `x=none` has no value to follow
    assert read(woe.statement_value(write_solution(*NONE, fmt), "D")[1]) == "-16"


def test_the_long_formats_steps_are_found():
    solution = write_solution(*TWO, "reversed")
    expected = {"4*a (only in the equation)": "4", "first partial product": str(8184 * 4), "first square-root remainder": "4",
                "first square-root trial": str((20 * 3 + 6) * 6), "2*a": "2", "first long-division step": "0"}
    for kind, value in expected.items():
        prefix, written = woe.statement_value(solution, kind)
        assert reverse_digits(written) == value and solution.startswith(prefix + written + ";")
    assert woe.statement_value(solution, "4*a (only in the equation)")[0] == "~4*a="  # the first statement: nothing written before it
    for kind in expected:
        assert woe.statement_value(write_solution(*TWO, "published"), kind) is None


def test_pairs_put_one_equations_work_under_another():
    coefficients = [TWO, (2, -10, 12), (1, -6, 9), (3, 3, -90), (1, 2, 5), (-1, 1, 12)]
    equations = [write_equation(*c) for c in coefficients]
    solutions = [write_solution(*c, "reversed") for c in coefficients]
    pairs = woe.make_pairs(equations, solutions, "D", 10, seed=3)
    assert 0 < len(pairs) <= len(coefficients) - 1
    assert pairs == woe.make_pairs(equations, solutions, "D", 10, seed=3)  # seeded
    assert len(woe.make_pairs(equations, solutions, "D", 2, seed=3)) == 2
    by_equation = dict(zip(equations, solutions))
    for pair in pairs:
        assert pair["equation"] != pair["work_of"] and pair["value"] != pair["work"]
        assert by_equation[pair["work_of"]].startswith(pair["prefix"] + pair["work"] + ";")
        assert woe.statement_value(by_equation[pair["equation"]], "D")[1] == pair["value"]


def test_d_written_twice_is_cut_before_its_plain_value():
    """padded-d-plain writes D=X-Y=P=Q, then the square root's first step d*d=v (D = 133225: its
    leading pair 13, d = 3); a format that writes D once, D < 0 and D = 0 have none."""
    for fmt in ("padded-d-plain", "padded-root"):
        solution = write_solution(*TWO, fmt)
        prefix, plain, step = woe.d_written_twice(solution)
        assert solution.startswith(prefix + plain + ";" + step + ";") and prefix.endswith("=")
        assert reverse_digits(plain) == "133225" and prefix[prefix.rindex("D=") :].count("=") == 3  # D=X-Y=P=
        assert step == "3*3=9"
    for fmt, coefficients in (("reversed", TWO), ("padded-d", TWO), ("padded-d-plain", NONE), ("padded-d-plain", (1, -6, 9))):
        assert woe.d_written_twice(write_solution(*coefficients, fmt)) is None, fmt


# x^2 - (2 + d) x + (1 + d) = 0, roots 1 and 1 + d: D = d^2 has three digits, and its first
# square-root step d*d= is 1*1 for 121 and 225, 2*2 for 484 and 625, 3*3 for 900 and 961
THREE_DIGIT_D = [(1, -(2 + d), 1 + d) for d in (11, 22, 30, 15, 25, 31)]


def test_triples_put_three_sources_of_d_in_conflict():
    equations = [write_equation(*c) for c in THREE_DIGIT_D]
    solutions = [write_solution(*c, "padded-d-plain") for c in THREE_DIGIT_D]
    triples = woe.make_triples(equations, solutions, 10, seed=1)
    assert triples and triples == woe.make_triples(equations, solutions, 10, seed=1)  # seeded
    assert len(woe.make_triples(equations, solutions, 1, seed=1)) == 1
    by_equation = dict(zip(equations, solutions))
    for t in triples:
        assert len({t["equation"], t["padded_of"], t["plain_of"]}) == 3 and len(set(t["steps"].values())) == 3
        assert by_equation[t["padded_of"]].startswith(t["prefix"] + t["own_plain"] + ";" + t["steps"]["padded"] + ";")
        for source, equation in (("equation", t["equation"]), ("plain", t["plain_of"])):
            _, plain, step = woe.d_written_twice(by_equation[equation])
            assert step == t["steps"][source]
        assert t["plain"] == woe.d_written_twice(by_equation[t["plain_of"]])[1] and len(t["plain"]) == len(t["own_plain"])
    assert woe.make_triples(equations, [write_solution(*c, "reversed") for c in THREE_DIGIT_D], 10, seed=1) == []


def test_greedy_verdicts_on_hand_made_logits():
    labels = torch.tensor([[5, 6, 7, 8], [5, 6, 7, -100]])
    logits = torch.full((2, 4, 10), -1.0)
    logits[0, torch.arange(4), torch.tensor([5, 6, 7, 8])] = 1.0  # row 0: argmax = labels everywhere
    logits[1, torch.arange(4), torch.tensor([1, 6, 2, 0])] = 1.0  # row 1: right only at position 1
    start, length = torch.tensor([1, 1]), torch.tensor([3, 1])
    assert woe.matched(logits, labels, start, length).tolist() == [3, 1]  # all of both: greedy writes them
    assert woe.matched(logits, labels, torch.tensor([1, 1]), torch.tensor([3, 2])).tolist() == [3, 1]  # row 1: 1 of 2
    assert woe.matched(logits, labels, torch.tensor([0, 0]), torch.tensor([4, 3])).tolist() == [4, 1]
    assert woe.first_tokens(logits, torch.tensor([0, 2])).tolist() == [5, 2]
    log_p = woe.value_log_probs(logits, labels, start, length)
    row0 = torch.log_softmax(logits[0].double(), -1)
    assert log_p[0].item() == pytest.approx(sum(row0[j, labels[0, j]].item() for j in (1, 2, 3)))
    assert log_p[1].item() == pytest.approx(torch.log_softmax(logits[1, 1].double(), -1)[6].item())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import six_step_run

    return six_step_run(tmp_path_factory.mktemp("work-or-equation"))


def test_verdicts_match_generate(run):
    """A continuation is 'written' exactly when model.generate, given the same prefix, writes it:
    the model's own first greedy characters are, and those with the last one changed are not."""
    from train.quadratic import load_run, load_splits

    model, tokenizer, config = load_run(run, "test")
    model.double().eval()  # float64: generate's cached steps and one full pass must not split a near tie
    test = load_splits(config)["test"]
    pairs = woe.make_pairs(list(test["equation"]), list(test["solution"]), "D", 6, seed=0)
    assert len(pairs) == 6
    continued = []
    for pair in pairs:
        prefix = [model.config.decoder_start_token_id] + tokenizer(pair["prefix"], add_special_tokens=False)["input_ids"]
        out = model.generate(**tokenizer([pair["equation"]], return_tensors="pt"), decoder_input_ids=torch.tensor([prefix]),
                             max_new_tokens=4, min_new_tokens=4, do_sample=False, num_beams=1)
        continued.append(tokenizer.decode(out[0][len(prefix):]))
    assert all(len(c) == 4 for c in continued), continued  # one character a token, no special token
    equations, prefixes = [p["equation"] for p in pairs], [p["prefix"] for p in pairs]
    writes, log_p, first, share = woe.score(model, tokenizer, equations, prefixes, continued, batch_size=4)
    assert writes.all() and (share == 1).all()
    assert tokenizer.convert_ids_to_tokens(first.tolist()) == [c[0] for c in continued]
    assert (log_p <= 0).all()
    changed = [c[:-1] + ("1" if c[-1] != "1" else "2") for c in continued]
    changed_writes, changed_log_p, _, changed_share = woe.score(model, tokenizer, equations, prefixes, changed, batch_size=4)
    assert not changed_writes.any() and (changed_log_p < log_p).all()
    assert torch.allclose(changed_share, torch.full_like(changed_share, 0.75))  # the first three of four still follow


def test_the_script_writes_counts_that_add_up(run, tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), str(run), str(tmp_path / "out"), "--pairs", "20", "--rows", "200"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "out" / "work-or-equation.json").read_text())["results"]
    assert set(result) == set(woe.KINDS)
    for r in result.values():
        assert r["work"] + r["equation"] + r["other"] == r["pairs"] > 0
        assert 0 <= r["control_writes_work"] <= r["pairs"]
        assert 0 <= r["characters_followed"]["work"] <= 1 and 0 <= r["characters_followed"]["equation"] <= 1
        first = r["first_character"]
        assert first["work"] + first["equation"] <= first["pairs"] <= r["pairs"]
    assert "D " in out.stdout
    assert "which_d_the_square_root_reads" not in json.loads((tmp_path / "out" / "work-or-equation.json").read_text())  # reversed: D once


def test_which_d_counts_add_up(run):
    """Each triple's first step is counted for one source at most, in both conflicts."""
    from train.quadratic import load_run

    model, tokenizer, _ = load_run(run, "test")
    equations = [write_equation(*c) for c in THREE_DIGIT_D]
    triples = woe.make_triples(equations, [write_solution(*c, "padded-d-plain") for c in THREE_DIGIT_D], 10, seed=1)
    result = woe.which_d_test(model.eval(), tokenizer, triples)
    assert result["triples"] == len(triples) > 0 and 0 <= result["control_writes_padded"] <= len(triples)
    assert set(result["three sources"]) == {"plain", "padded", "equation", "other"} and sum(result["three sources"].values()) == len(triples)
    assert set(result["plain value alone"]) == {"plain", "padded", "other"} and sum(result["plain value alone"].values()) == len(triples)
    assert all(count >= 0 for name in ("three sources", "plain value alone") for count in result[name].values())


def refusal(monkeypatch, capsys, *args) -> tuple[int | str, str]:
    """The script's refusal of ARGS in this process (a process of its own takes seconds to import
    torch; the command itself runs above): its exit code and what it printed to stderr."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, args)])
    with pytest.raises(SystemExit) as refused:
        woe.main()
    return refused.value.code, capsys.readouterr().err


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path, monkeypatch, capsys):
    code, _ = refusal(monkeypatch, capsys, tmp_path, tmp_path / "out")
    assert isinstance(code, str) and code.startswith("work_or_equation: ") and len(code.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, says", [(["--pairs", "0"], "at least 1"), (["--rows", "1"], "at least 2"), (["--seed", "-1"], "at least 0")])
def test_bad_counts_are_refused(tmp_path, monkeypatch, capsys, args, says):
    code, err = refusal(monkeypatch, capsys, tmp_path, tmp_path / "out", *args)
    assert code == 2 and says in err
    assert not (tmp_path / "out").exists()


def test_an_output_path_that_is_a_file_is_refused(run, tmp_path, monkeypatch, capsys):
    (tmp_path / "taken").write_text("x")
    code, _ = refusal(monkeypatch, capsys, run, tmp_path / "taken")
    assert isinstance(code, str) and "is a file" in code
    assert (tmp_path / "taken").read_text() == "x"
