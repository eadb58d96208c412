"""figures/results/padded-cpu-finetune/make_range_mix.py: the training rows of a polish on two
ranges are as many drawn rows of each dataset, none of the other's an equation of an excluded test
split, and the test rows are the first dataset's; bad input is one line and writes nothing."""

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from gen.dataset import GenOptions, generate
from gen.equations import Ranges

from conftest import script_module

SCRIPT = Path(__file__).resolve().parents[1] / "figures/results/padded-cpu-finetune/make_range_mix.py"


def mix(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("range-mix")
    small = Ranges(a_lo=-2, a_hi=2, root_lo=-8, root_hi=8)
    generate(GenOptions(rows=200, seed=5, format="reversed", ranges=Ranges(a_lo=-5, a_hi=5, root_lo=-40, root_hi=40)), root / "wide", workers=1)
    generate(GenOptions(rows=40, seed=0, format="reversed", ranges=small, extra_train_rows=120, extra_mix=(0.6, 0.0, 0.4)),
             root / "narrow", workers=1)
    generate(GenOptions(rows=60, seed=1, format="reversed", ranges=small, test_fraction=0.5), root / "narrow-test", workers=1)
    return root


def test_as_many_rows_of_each_and_no_excluded_test_equation(data, tmp_path):
    done = mix(data / "wide", data / "narrow", tmp_path / "mix", "--rows", 50, "--exclude", data / "narrow-test")
    assert done.returncode == 0, done.stderr
    wide, narrow, held = (datasets.load_from_disk(str(data / name)) for name in ("wide", "narrow", "narrow-test"))
    out = datasets.load_from_disk(str(tmp_path / "mix"))
    first, second = out["train"]["equation"][:50], out["train"]["equation"][50:]
    assert len(second) == 50
    assert set(first) <= set(wide["train"]["equation"]) and set(second) <= set(narrow["train"]["equation"])
    assert len(set(first)) == len(set(second)) == 50
    excluded = set(held["test"]["equation"])
    overlap = sum(e in excluded for e in narrow["train"]["equation"])
    assert overlap  # the check has something to leave out
    assert not excluded & set(second)
    assert json.loads((tmp_path / "mix" / "mix.json").read_text())["left_out_of_other"] == overlap
    assert out["test"]["equation"] == wide["test"]["equation"]
    script_module(SCRIPT).main([str(data / "wide"), str(data / "narrow"), str(tmp_path / "again"), "--rows", "50", "--exclude", str(data / "narrow-test")])
    assert datasets.load_from_disk(str(tmp_path / "again"))["train"]["equation"] == out["train"]["equation"]


def test_bad_input_gives_one_line_and_writes_nothing(data, tmp_path):
    """Every refusal is a SystemExit with a one-line message, checked in this process (a process
    each takes seconds to import datasets); one command checks what a shell sees."""
    wide, narrow, out = data / "wide", data / "narrow", tmp_path / "mix"
    main = script_module(SCRIPT).main
    for args in ((wide, narrow, out), (wide, narrow, out, "--rows"), (wide, narrow, out, "--rows", "ten"), (wide, narrow, out, "--rows", 0),
                 (wide, narrow, out, "--rows", 5, "--exclude", tmp_path / "none"), (wide, tmp_path / "none", out, "--rows", 5),
                 (wide, narrow, out, "--rows", 5, "--seed", 1), (wide, narrow, out, "--rows", 100000)):
        with pytest.raises(SystemExit) as refused:
            main(list(map(str, args)))
        message = refused.value.code
        assert isinstance(message, str) and len(message.strip().splitlines()) == 1, (args, message)
    done = mix(wide, narrow, out, "--rows", "ten")
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []
