import hashlib
import json
import random
import shlex
import sys
from pathlib import Path

import datasets
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gen.dataset as dataset_module
from gen import QuadlabError, ascii_float, ascii_int
from gen.dataset import GenerationBug, GenOptions, build_splits, generate
from gen.equations import CLASSES, NoRealRootIndex, Ranges, capacity, outside_generator, sample_coefficients
from gen.grader import real_root_count

SMALL = Ranges(a_lo=-3, a_hi=3, root_lo=-6, root_hi=6)


def _tree_digest(path: Path) -> dict:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_sampling_enumerates_each_class_exactly():
    """Index decoding covers every equation of a class once, against a brute-force enumeration."""
    leading, roots = SMALL.leading, range(SMALL.root_lo, SMALL.root_hi + 1)
    p_max = max(SMALL.root_lo**2, SMALL.root_hi**2)
    expected = {
        "two": {(a, -a * (r1 + r2), a * r1 * r2) for a in leading for r1 in roots for r2 in roots if r1 < r2},
        "one": {(a, -2 * a * r, a * r * r) for a in leading for r in roots},
        "none": {
            (a, -a * s, a * p)
            for a in leading
            for s in range(2 * SMALL.root_lo, 2 * SMALL.root_hi + 1)
            for p in range(-p_max, p_max + 1)
            if s * s < 4 * p
        },
    }
    room = capacity(SMALL)
    assert room == {cls: len(expected[cls]) for cls in CLASSES}
    everything = sample_coefficients(SMALL, room, random.Random(0))
    for cls in CLASSES:
        assert len(everything[cls]) == room[cls]
        assert set(everything[cls]) == expected[cls]
        assert all(real_root_count(*abc) == {"two": 2, "one": 1, "none": 0}[cls] for abc in everything[cls])
    assert len(NoRealRootIndex(SMALL)) * len(SMALL.leading) == room["none"]


def test_default_ranges_can_produce_the_published_example():
    r = Ranges()
    assert 7 in r.leading and r.root_lo <= -254 <= r.root_hi
    assert 7 * 254 * 254 == 451612 and -7 * 2 * (-254) == 3556


@pytest.mark.parametrize("rows, mix", [(1000, (0.5, 0.3, 0.2)), (997, (0.5, 0.3, 0.2)), (10, (1.0, 0.0, 0.0))])
def test_class_counts_follow_the_mix_and_sum_to_rows(rows, mix):
    counts = GenOptions(rows=rows, mix=mix).class_counts()
    assert sum(counts.values()) == rows
    for share, cls in zip(mix, CLASSES):
        assert abs(counts[cls] - share * rows) < 1


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "quadratic"
    card = generate(GenOptions(rows=2000, seed=7), out, workers=1)
    return out, card


def test_dataset_loads_with_datasets_and_has_the_documented_columns(small_dataset):
    out, card = small_dataset
    dd = datasets.load_from_disk(str(out))
    assert set(dd) == {"train", "test"}
    assert dd["train"].column_names == ["equation", "solution", "a", "b", "c", "num_roots"]
    assert dd["train"].features["num_roots"].names == ["none", "one", "two"]
    assert len(dd["train"]) == 1600 and len(dd["test"]) == 400
    row = dd["test"][0]
    assert row["equation"] == f"{row['a']}x^2{row['b']:+d}x{row['c']:+d}=0"
    on_disk = json.loads((out / "card.json").read_text())
    assert on_disk["counts"] == card["counts"]
    assert "| train | 800 | 480 | 320 | 1600 |" in (out / "README.md").read_text()


def test_class_mix_split_and_labels(small_dataset):
    out, card = small_dataset
    assert card["counts"]["train"] == {"two": 800, "one": 480, "none": 320, "total": 1600}
    assert card["counts"]["test"] == {"two": 200, "one": 120, "none": 80, "total": 400}
    dd = datasets.load_from_disk(str(out))
    for split in dd.values():
        for a, b, c, label in zip(split["a"], split["b"], split["c"], split["num_roots"]):
            assert label == (2 if b * b - 4 * a * c > 0 else 1 if b * b == 4 * a * c else 0)


def test_no_equation_twice_and_none_in_both_splits(small_dataset):
    out, _ = small_dataset
    dd = datasets.load_from_disk(str(out))
    train, test = set(dd["train"]["equation"]), set(dd["test"]["equation"])
    assert len(train) == len(dd["train"]) and len(test) == len(dd["test"])
    assert not train & test


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    options = GenOptions(rows=3000, seed=11, format="steps")
    generate(options, tmp_path / "one", workers=1)
    generate(options, tmp_path / "two", workers=2)
    generate(GenOptions(rows=3000, seed=12, format="steps"), tmp_path / "other", workers=1)
    assert _tree_digest(tmp_path / "one") == _tree_digest(tmp_path / "two")
    assert _tree_digest(tmp_path / "one") != _tree_digest(tmp_path / "other")


@pytest.mark.parametrize("options", [
    GenOptions(rows=300, seed=4, ranges=Ranges(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)),
    GenOptions(rows=301, seed=2, mix=(1 / 3, 1 / 3, 1 / 3), test_fraction=0.25, format="padded-d-plain",
               ranges=Ranges(a_lo=-4, a_hi=6, root_lo=-15, root_hi=10)),
    GenOptions(rows=200, seed=1, format="reversed", ranges=Ranges(a_lo=1, a_hi=3, root_lo=-20, root_hi=20),
               extra_train_rows=90, extra_mix=(0.6, 0.1, 0.3)),
], ids=["ranges", "shares-and-format", "extra-rows"])
def test_the_command_a_card_records_writes_the_same_bytes(options, run_cli, tmp_path):
    """What a run whose dataset is gone tells its user to type (train/quadratic.py) makes that dataset again."""
    generate(options, tmp_path / "first", workers=1)
    recorded = GenOptions.from_dict(json.loads((tmp_path / "first" / "card.json").read_text())["options"])
    assert recorded == options
    command = shlex.split(recorded.command(tmp_path / "made again"))
    assert command[:3] == ["python", "cli.py", "gen"], command
    result = run_cli(*command[2:], "--workers", 1)
    assert result.returncode == 0, result.stderr
    assert _tree_digest(tmp_path / "made again") == _tree_digest(tmp_path / "first")


def test_the_default_options_need_no_option_but_the_output():
    assert GenOptions().command("data/q") == "python cli.py gen --out data/q"
    assert GenOptions(extra_mix=(0.5, 0.3, 0.2)).command("d") == "python cli.py gen --out d"  # the shares of --mix, said once
    with pytest.raises(QuadlabError):  # a card edited into nonsense is no recipe
        GenOptions.from_dict({**GenOptions().as_dict(), "rows": -1})


def test_every_row_is_verified_a_wrong_solution_stops_generation(monkeypatch):
    real = dataset_module.write_solution
    monkeypatch.setattr(dataset_module, "write_solution", lambda a, b, c, fmt: real(a, b, c, fmt).replace("=0;", "=1;"))
    with pytest.raises(GenerationBug):
        build_splits(GenOptions(rows=300, seed=1), workers=1)


@pytest.mark.parametrize(
    "options, message",
    [
        (GenOptions(rows=-1), "--rows"),
        (GenOptions(rows=0), "--rows"),
        (GenOptions(mix=(0.5, 0.3, 0.3)), "--mix"),
        (GenOptions(mix=(1.2, -0.2, 0.0)), "--mix"),
        (GenOptions(mix=(float("nan"), 0.5, 0.5)), "--mix"),  # nan compares false with everything
        (GenOptions(test_fraction=1.0), "--test-fraction"),
        (GenOptions(rows=4), "--rows 4 with --test-fraction 0.2 leaves the test split empty; give --rows 5 or more"),
        (GenOptions(rows=6, test_fraction=0.95), "leaves the training split empty; give --rows"),
        (GenOptions(ranges=Ranges(a_lo=0, a_hi=0)), "--a-range"),
        (GenOptions(ranges=Ranges(root_lo=3, root_hi=1)), "--root-range"),
        (GenOptions(ranges=Ranges(a_lo=-10**7, a_hi=1)), "limited"),
        (GenOptions(rows=100_000, ranges=Ranges(a_lo=1, a_hi=2, root_lo=-10, root_hi=10)), "distinct"),
        (GenOptions(format="latex"), "--format"),
        (GenOptions(extra_train_rows=-1), "--extra-train-rows"),
        (GenOptions(extra_train_rows=10, extra_mix=(0.5, 0.6, 0.0)), "--extra-mix"),
        # SMALL holds 7 * 13 = 78 one-root equations: 30 in the split, 50 more asked for
        (GenOptions(rows=100, ranges=SMALL, extra_train_rows=100, extra_mix=(0.5, 0.5, 0.0)), "smaller share in --extra-mix"),
    ],
)
def test_bad_options_are_refused(options, message, tmp_path):
    with pytest.raises(QuadlabError, match=message):
        generate(options, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("test_fraction", [0.2, 0.95, 0.01])
def test_the_rows_that_a_too_small_dataset_is_told_to_have_make_both_splits(test_fraction, tmp_path):
    import re

    with pytest.raises(QuadlabError) as refused:
        generate(GenOptions(rows=2, test_fraction=test_fraction), tmp_path / "small")
    enough = int(re.search(r"give --rows (\d+) or more", str(refused.value))[1])
    generate(GenOptions(rows=enough, test_fraction=test_fraction), tmp_path / "out")
    counts = json.loads((tmp_path / "out" / "card.json").read_text())["counts"]
    assert counts["train"]["total"] >= 1 and counts["test"]["total"] >= 1 and counts["train"]["total"] + counts["test"]["total"] == enough
    with pytest.raises(QuadlabError, match="split empty"):
        generate(GenOptions(rows=enough - 1, test_fraction=test_fraction), tmp_path / "fewer")  # the fewest


def test_extra_training_rows_are_new_equations_and_leave_the_split_as_it_was(tmp_path):
    """The test split and the split's training rows are those of the same options without extra
    rows, row for row; the extra rows follow --extra-mix, are verified like the others and equal
    none of the split's equations (test included) nor each other."""
    ranges = Ranges(a_lo=-3, a_hi=3, root_lo=-20, root_hi=20)  # 246 one-root equations, 180 of them in the split
    base = build_splits(GenOptions(rows=600, seed=5, ranges=ranges, format="steps"), workers=1)
    more = build_splits(GenOptions(rows=600, seed=5, ranges=ranges, format="steps", extra_train_rows=400,
                                   extra_mix=(0.75, 0.0, 0.25)), workers=2)
    assert more["test"] == base["test"]
    assert {k: v[:480] for k, v in more["train"].items()} == base["train"]
    extra = {k: v[480:] for k, v in more["train"].items()}
    assert len(extra["equation"]) == 400
    assert [extra["num_roots"].count(n) for n in (2, 1, 0)] == [300, 0, 100]
    taken = set(base["train"]["equation"]) | set(base["test"]["equation"])
    assert len(set(extra["equation"])) == 400 and not set(extra["equation"]) & taken
    assert all(real_root_count(a, b, c) == n for a, b, c, n in zip(extra["a"], extra["b"], extra["c"], extra["num_roots"]))
    # reproducible: the same options give the same extra rows; by default they follow --mix
    assert build_splits(GenOptions(rows=600, seed=5, ranges=ranges, format="steps", extra_train_rows=400,
                                   extra_mix=(0.75, 0.0, 0.25)), workers=1) == more
    default_mix = build_splits(GenOptions(rows=600, seed=5, ranges=ranges, extra_train_rows=100), workers=1)
    assert [default_mix["train"]["num_roots"][480:].count(n) for n in (2, 1, 0)] == [50, 30, 20]


def test_card_records_the_extra_training_rows(tmp_path):
    card = generate(GenOptions(rows=200, seed=2, ranges=SMALL, extra_train_rows=50, extra_mix=(1.0, 0.0, 0.0)), tmp_path / "q")
    assert card["counts"]["train"] == {"two": 80 + 50, "one": 48, "none": 32, "total": 210}
    assert card["counts"]["test"]["total"] == 40
    assert card["options"]["extra_train_rows"] == 50 and card["options"]["extra_mix"] == {"two": 1.0, "one": 0.0, "none": 0.0}
    assert "50 extra equations" in (tmp_path / "q" / "README.md").read_text()


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "quadratic"
    generate(GenOptions(rows=200, seed=1), out)
    before = _tree_digest(out)
    with pytest.raises(QuadlabError, match="--overwrite"):
        generate(GenOptions(rows=300, seed=2), out)
    assert _tree_digest(out) == before
    generate(GenOptions(rows=300, seed=2), out, overwrite=True)
    assert json.loads((out / "card.json").read_text())["counts"]["train"]["total"] == 240
    assert [p.name for p in tmp_path.iterdir()] == ["quadratic"]  # no leftovers


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_interrupted_save_leaves_nothing_that_looks_complete(monkeypatch, tmp_path, failure):
    def broken(*args, **kwargs):
        raise failure

    monkeypatch.setattr(dataset_module, "card_markdown", broken)  # fails after the arrow files are written
    with pytest.raises(type(failure)):
        generate(GenOptions(rows=200), tmp_path / "quadratic")
    assert list(tmp_path.iterdir()) == []


def test_an_overwrite_stopped_between_its_two_renames_puts_the_old_dataset_back(monkeypatch, tmp_path):
    out = tmp_path / "quadratic"
    generate(GenOptions(rows=200, seed=1), out)
    before = _tree_digest(out)
    rename = Path.rename

    def stopped(self, target):
        if ".partial-" in self.name:  # the new dataset moving into place
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", stopped)
    with pytest.raises(KeyboardInterrupt):
        generate(GenOptions(rows=300, seed=2), out, overwrite=True)
    assert _tree_digest(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["quadratic"]


# Numbers are ASCII: int() and float() alone would read all of these.
LENIENT = ["١", "１", "٣.٥", "1١", " 1", "1 ", "\t1", "1\n", "1_000", "1_0.5", "nan", "NaN", "inf", "-inf", "Infinity", "1e999", "", "+", "-", "."]


@pytest.mark.parametrize("text", LENIENT)
def test_ascii_numbers_refuse_what_int_and_float_read_leniently(text):
    with pytest.raises(ValueError):
        ascii_int(text)
    with pytest.raises(ValueError):
        ascii_float(text)


@given(st.integers(-10**40, 10**40), st.floats(allow_nan=False, allow_infinity=False))
def test_ascii_numbers_read_what_python_writes(n, x):
    assert ascii_int(str(n)) == n and ascii_int(f"+{n}" if n >= 0 else str(n)) == n
    assert ascii_float(repr(x)) == x and ascii_float(str(n)) == float(n)


@given(st.text(alphabet="0123456789+-.e"), st.integers(0, 50), st.characters(min_codepoint=128))
def test_no_string_with_a_non_ascii_character_is_a_number(text, at, char):
    """Any character outside ASCII, a digit of another script (category Nd) included, makes the
    whole string not a number; what is accepted is exactly what int() / float() read."""
    hostile = text[:at] + char + text[at:]
    for parse in (ascii_int, ascii_float):
        with pytest.raises(ValueError):
            parse(hostile)
    for parse, python in ((ascii_int, int), (ascii_float, float)):
        try:
            value = parse(text)
        except ValueError:
            continue
        assert value == python(text)


@given(st.characters(categories=["Nd"]).filter(lambda c: not c.isascii()))
def test_no_digit_of_another_script_is_a_number(digit):
    assert 0 <= int(digit) <= 9  # Python reads it ...
    for parse in (ascii_int, ascii_float):
        with pytest.raises(ValueError):  # ... we do not
            parse(digit)


def test_the_widest_ranges_sample_distinct_equations():
    # the no-root class at +-10^6 holds more equations than random.sample can index
    wide = Ranges(a_lo=-10**6, a_hi=10**6, root_lo=-10**6, root_hi=10**6)
    assert capacity(wide)["none"] > sys.maxsize
    rows = sample_coefficients(wide, {"two": 20, "one": 20, "none": 20}, random.Random(0))
    for cls, expected in (("two", 2), ("one", 1), ("none", 0)):
        assert len(set(rows[cls])) == 20
        assert all(real_root_count(a, b, c) == expected for a, b, c in rows[cls])


def test_outside_generator_passes_every_drawn_equation_and_says_why_for_others():
    rows = sample_coefficients(SMALL, {"two": 40, "one": 13, "none": 40}, random.Random(5))
    assert all(outside_generator(*row, SMALL) is None for cls in CLASSES for row in rows[cls])
    narrower = Ranges(a_lo=-3, a_hi=3, root_lo=-5, root_hi=6)  # SMALL less its root -6
    assert outside_generator(1, 12, 36, SMALL) is None and outside_generator(1, 12, 36, narrower).startswith("a root is outside")
    assert outside_generator(3, -7, 2).startswith("b and c are not multiples of a")  # roots 1/3 and 2
    assert outside_generator(1, -1, -1).startswith("its roots are not whole numbers")  # D = 5
    assert outside_generator(1, -3, 2) is None and outside_generator(2, 0, 2) is None  # roots 1, 2; none (s = 0, p = 1)
    assert outside_generator(4, -4, 4, SMALL) == "a = 4 is outside the ranges it was drawn from (a in -3:3, roots in -6:6)"
    assert outside_generator(1, -7, 0, SMALL) == "a root is outside the ranges it was drawn from (a in -3:3, roots in -6:6)"  # 0 and 7
    assert outside_generator(1, 0, 37, SMALL).startswith("a(x^2 - s x + p) with s = 0, p = 37 is outside the ranges")  # p above 6^2
    assert outside_generator(1, 0, 36, SMALL) is None
