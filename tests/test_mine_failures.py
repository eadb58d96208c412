"""figures/results/padded-cpu-finetune/mine_failures.py: a row is mined as failed exactly when greedy
decoding does not write its solution, and the position it gives is where greedy decoding leaves it.
Checked against `model.generate` on a tiny trained run: its own greedy outputs, taken as solutions,
are never failed; the dataset's solutions, which a six-step model does not write, fail where its
output first differs."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from conftest import script_module


SCRIPT = Path(__file__).resolve().parents[1] / "figures/results/padded-cpu-finetune/mine_failures.py"
SUBSET = SCRIPT.with_name("make_mined_subset.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import six_step_run

    return six_step_run(tmp_path_factory.mktemp("mine-failures"))


def test_failed_exactly_where_greedy_decoding_leaves_the_solution(run):
    from train.quadratic import decode, load_run, load_splits

    model, tokenizer, config = load_run(run, "test")
    model.double().eval()  # float64: generate's cached steps and one full pass must not split a near tie
    test = load_splits(config)["test"].select(range(24))[:]
    greedy = [c[0] for c in decode(model, tokenizer, test["equation"], batch_size=8)]
    mine = script_module(SCRIPT)
    # its own outputs as solutions: nothing is wrong before their end; an output cut at the length
    # limit has no </s>, which the pass puts last, so there the last position may be wrong
    own = mine.first_wrong_positions(model, tokenizer, test["equation"], greedy)
    longest = model.generation_config.max_new_tokens
    for text, position in zip(greedy, own):
        wrote = tokenizer(text)["input_ids"]  # with </s> last
        assert position == -1 if len(wrote) <= longest else position in (-1, len(wrote) - 1), text
    assert sum(g != s for g, s in zip(greedy, test["solution"])) == 24  # six steps solve nothing
    positions = mine.first_wrong_positions(model, tokenizer, test["equation"], test["solution"])
    for text, solution, position in zip(greedy, test["solution"], positions):
        wrote, wanted = tokenizer(text)["input_ids"], tokenizer(solution)["input_ids"]
        differ = next(j for j, (w, t) in enumerate(zip(wrote, wanted)) if w != t)
        assert position == differ, (text, solution)
    assert set(positions) == {0}  # the six-step model's first token is not the solution's
    # so that the position is tested past 0: its own outputs with one token changed, at a place that
    # moves from row to row, leave it exactly there
    changed, expected = [], []
    for i, text in enumerate(greedy):
        ids = tokenizer(text)["input_ids"]
        j = (7 * i) % (len(ids) - 1)  # not the final </s>
        ids[j] = tokenizer.convert_tokens_to_ids("1" if tokenizer.convert_ids_to_tokens(ids[j]) != "1" else "2")
        changed.append(tokenizer.decode(ids, skip_special_tokens=True))
        assert tokenizer(changed[-1])["input_ids"] == ids
        expected.append(j)
    assert len(set(expected)) > 5
    assert mine.first_wrong_positions(model, tokenizer, test["equation"], changed) == expected


def mine(*args, script=SCRIPT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True)


def test_command_reads_the_classes_asked_for_and_writes_json(run, tmp_path):
    data = run.parent / "data"
    done = mine(run, data, tmp_path / "out.json", "--split", "test", "--start", "2", "--rows", "20", "--num-roots", "0,2", "--batch", "7")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out.json").read_text())
    classes = datasets.load_from_disk(str(data))["test"]["num_roots"]
    wanted = [i for i in range(2, 22) if classes[i] in (0, 2)]
    assert 0 < result["read"] == len(wanted) < 20
    assert result["failed"] == wanted  # six steps solve none of them
    assert len(result["first_wrong_token"]) == len(wanted)
    assert f"{len(wanted)} of {len(wanted)} rows failed" in done.stdout


def test_bad_input_gives_one_line_and_writes_nothing(run, tmp_path):
    """Every refusal is a SystemExit with a one-line message, checked in this process (a process
    each took 3 s to import torch); one command per script checks what a shell sees."""
    data, out = run.parent / "data", tmp_path / "o.json"
    (tmp_path / "not-mined.json").write_text("{}")
    modules = {script: script_module(script) for script in (SCRIPT, SUBSET)}
    for script, args in ((SCRIPT, (run, data, out, "--rowz", "3")), (SCRIPT, (run, data)), (SCRIPT, (run, data, out, "--rows")),
                         (SCRIPT, (tmp_path / "no-run", data, out)), (SCRIPT, (run, tmp_path / "no-data", out)),
                         (SCRIPT, (run, data, out, "--split", "val")), (SCRIPT, (run, data, out, "--rows", "ten")),
                         (SCRIPT, (run, data, out, "--check", tmp_path / "none.jsonl")), (SCRIPT, (run, data, tmp_path / "no-folder" / "o.json")),
                         (SUBSET, (data, tmp_path / "sub")), (SUBSET, (data, tmp_path / "sub", tmp_path / "none.json")),
                         (SUBSET, (data, tmp_path / "sub", tmp_path / "not-mined.json")), (SUBSET, (tmp_path / "no-data", tmp_path / "sub", out))):
        with pytest.raises(SystemExit) as refused:
            modules[script].main(list(map(str, args)))
        message = str(refused.value.code)
        assert isinstance(refused.value.code, str) and len(message.strip().splitlines()) == 1, (args, message)
    for script, args in ((SCRIPT, (tmp_path / "no-run", data, out)), (SUBSET, (data, tmp_path / "sub", tmp_path / "not-mined.json"))):
        done = mine(*args, script=script)
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["not-mined.json"]


def test_subset_is_the_failed_rows_and_as_many_others(run, tmp_path):
    data = run.parent / "data"
    mine_failures, make_subset = script_module(SCRIPT).main, script_module(SUBSET).main  # in this process: the commands are tested above
    mine_failures([str(run), str(data), str(tmp_path / "a.json"), "--rows", "12"])
    mine_failures([str(run), str(data), str(tmp_path / "b.json"), "--start", "40", "--rows", "8"])
    make_subset([str(data), str(tmp_path / "sub"), str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    train = datasets.load_from_disk(str(data))["train"]
    subset = datasets.load_from_disk(str(tmp_path / "sub"))
    failed = set(json.loads((tmp_path / "a.json").read_text())["failed"] + json.loads((tmp_path / "b.json").read_text())["failed"])
    assert len(failed) == 20  # six steps solve none
    by_equation = {e: i for i, e in enumerate(train["equation"])}
    rows = [by_equation[e] for e in subset["train"]["equation"]]
    assert rows == sorted(rows) and len(set(rows)) == 40 and failed <= set(rows)
    assert set(rows) - failed != set(range(12, 40)) - failed  # the others are drawn, not the next rows
    (tmp_path / "a.json.gz").write_bytes(gzip.compress((tmp_path / "a.json").read_bytes()))  # as the records keep them
    make_subset(["--failed-only", str(data), str(tmp_path / "only"), str(tmp_path / "a.json.gz"), str(tmp_path / "b.json")])
    assert {by_equation[e] for e in datasets.load_from_disk(str(tmp_path / "only"))["train"]["equation"]} == failed
    # a mined test split is refused: a polish must not train on test rows
    mine_failures([str(run), str(data), str(tmp_path / "t.json"), "--split", "test", "--rows", "4"])
    with pytest.raises(SystemExit, match="test split"):
        make_subset([str(data), str(tmp_path / "sub2"), str(tmp_path / "t.json")])
    assert not (tmp_path / "sub2").exists()
