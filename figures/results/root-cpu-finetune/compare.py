"""The table of "The square root's steps" in RESULTS.md: the 0.891 model's own test predictions and
the padded-d and padded-d-plain fine-tunes' against the square-root formats' fine-tunes, row for
row on the test rows of the hard-rows comparison (first 1,000, 0 < |D| < 10^5, 500 with a
5-digit root); writes OUT/summary.json.

    python figures/results/root-cpu-finetune/compare.py figures/results/reversed-small-more/run cmp \
        figures/results/root-cpu-finetune cmp/ft2-padd cmp/ft2-pdp cmp/ft2-root cmp/ft2-rfirst cmp/ft3-pdp cmp/ft3-root cmp/ft3-rfirst

A run tested on the 1,754 rows of "The padded formats" (`cmp/ft2-pdp`) has been tested on the 500
hard rows apart, in `RUN-hardtest` beside it (the same weights, `cli.py eval` on
`make_subsets.py`'s `NAME:hard` dataset); the others on all 2,165 rows at once.
"""

import collections
import importlib.util
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from gen.equations import reverse_digits  # noqa: E402
from train.metrics import judge  # noqa: E402


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hard_compare = _load("hard_compare", HERE.parent / "hard-rows-cpu-finetune" / "compare.py")
read = hard_compare.padded_compare.read


def sqrt_right(by_index: dict[int, dict], rows: list[int]) -> float:
    """Share of the rows (with a square root) whose sqrt(D) statement has the right value."""
    found = [judge(r["a"], r["b"], r["c"], r["target"], r["prediction"])["diagnosis"]["statements"].get("sqrt(D): value")
             for r in (by_index[i] for i in rows)]
    found = [f for f in found if f is not None]
    return round(sum(found) / len(found), 3)


def _fields(statement: str) -> dict:
    """The numbers of a square-root step (read back), by what they are, in the order written:
    `(20*P+d)*d=T`, `R-T=X` (padded-d-plain), `R-T=pad(X)=X` (padded-root), `R-(20*P+d)*d=R-T=X`
    (root-r-first)."""
    sides, found = statement.split("="), {}
    if re.match(r"\d+-", sides[0]):
        found["R"] = sides[0].split("-")[0]
    if "*" in sides[0]:
        found["trial digit"] = sides[0][-1]
    for side in sides[:-1]:
        difference = re.fullmatch(r"(\d+)-(\d+)", side)
        if difference:
            found["R"], found["T"] = difference.groups()
    if "*" in sides[0] and "-" not in sides[0]:
        found["T"] = sides[-1]
    else:
        if len(sides) == 3 and "*" not in sides[0]:
            found["padded remainder"] = sides[1]
        found["remainder"] = sides[-1]
    return found


def square_root_errors(by_index: dict[int, dict], rows: list[int]) -> dict:
    """Of the rows right up to D's statement, the first thing the square root gets wrong."""
    kinds = collections.Counter()
    for r in (by_index[i] for i in rows):
        want, got = (reverse_digits(t.lstrip("~")).split(";") for t in (r["target"], r["prediction"]))
        d_at = next(i for i, s in enumerate(want) if s.startswith("D="))
        if got[: d_at + 1] != want[: d_at + 1]:
            kinds["wrong up to D"] += 1
            continue
        s_at = next(i for i, s in enumerate(want) if s.startswith("sqrt("))
        j = next((i for i in range(d_at + 1, s_at + 1) if i >= len(got) or got[i] != want[i]), None)
        if j is None:
            kinds["square root right"] += 1
        elif j == s_at or j >= len(got):
            kinds["other"] += 1
        else:
            w, g = _fields(want[j]), _fields(got[j])
            kind = next((k for k in w if g.get(k) != w[k]), "other")
            if kind == "trial digit" and g.get(kind):
                kind += " too big" if g[kind] > w[kind] else " too small"
            kinds[kind] += 1
    return dict(kinds)


def main(base_run: str, cmp_dir: str, out: str, *runs: str) -> None:
    cmp = Path(cmp_dir)
    earlier = json.loads((cmp / "sub-indices.json").read_text())  # the 1,754 rows of "The padded formats"
    indices = json.loads((cmp / "sub-hard-indices.json").read_text())
    first, hard = list(range(1000)), indices["hard_test"]
    base = read(Path(base_run) / "predictions.jsonl.gz")
    small_d = sorted({i for i in earlier if 0 < abs(base[i]["b"] ** 2 - 4 * base[i]["a"] * base[i]["c"]) < 10**5})
    runs_rows = {"none (the 0.891 model, reversed)": dict(enumerate(base))}
    for run in map(Path, runs):
        hard_apart = run.with_name(f"{run.name}-hardtest")
        if hard_apart.exists():
            runs_rows[run.name] = {**dict(zip(earlier, read(run / "predictions.jsonl"))), **dict(zip(hard, read(hard_apart / "predictions.jsonl")))}
        else:
            runs_rows[run.name] = dict(zip(indices["test"], read(run / "predictions.jsonl")))
    for name, rows in runs_rows.items():
        assert all(rows[i]["equation"] == base[i]["equation"] for i in first + hard + small_d), f"{name} decoded other rows"
    results = {}
    for name, rows in runs_rows.items():
        results[name] = {**hard_compare.summary(rows, first, small_d, hard), "sqrt_right_first_1000": sqrt_right(rows, first),
                         "square_root_first_wrong_hard": square_root_errors(rows, hard)}
    Path(out, "summary.json").write_text(json.dumps(results, indent=1) + "\n")
    counts = next(iter(results.values()))  # the same rows for every run
    print(f"| fine-tune | full solution, first 1,000 test rows | their D = 0 ({counts['n_d_zero']}) | their 4-digit roots ({counts['n_4_digit']}) "
          f"| their sqrt(D) right | 0 < abs(D) < 10^5 ({len(small_d)}) | 5-digit roots ({len(hard)}) | their sqrt(D) right "
          "| their first wrong: D / sqrt(D) / roots |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, s in results.items():
        fw = s["first_wrong_hard"]
        print(f"| {name} | {s['full_solution_first_1000']:.3f} | {s['full_solution_d_zero_of_first_1000']:.3f} "
              f"| {s['full_solution_4_digit_roots_of_first_1000']:.3f} | {s['sqrt_right_first_1000']:.3f} | {s['full_solution_small_d']:.3f} "
              f"| {s['full_solution_hard']:.3f} | {s['sqrt_right_hard']:.3f} | {fw['D']} / {fw['sqrt(D)']} / {fw['roots']} |")
    kinds = ("R", "trial digit too big", "trial digit too small", "T", "padded remainder", "remainder", "other")
    print(f"\n| fine-tune, 5-digit roots right up to D | square root right | first wrong: {' / '.join(kinds)} |\n|---|---|---|")
    for name, s in results.items():
        k = s["square_root_first_wrong_hard"]
        print(f"| {name} ({len(hard) - k.get('wrong up to D', 0)}) | {k.get('square root right', 0)} | {' / '.join(str(k.get(x, 0)) for x in kinds)} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
