"""The table of "Training on the long square roots" in RESULTS.md: the 0.891 model's own test
predictions, the earlier padded-d fine-tune's (natural mix) and the hard-rows fine-tunes', row for
row on the test rows of make_subsets.py; writes OUT/summary.json.

    python figures/results/hard-rows-cpu-finetune/compare.py figures/results/reversed-small-more/run cmp \
        figures/results/hard-rows-cpu-finetune cmp/ft-hard cmp/ft-hardall
"""

import collections
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from train.metrics import judge  # noqa: E402  (after the path: run as a script)

_spec = importlib.util.spec_from_file_location("padded_compare", HERE.parent / "padded-cpu-finetune" / "compare.py")
padded_compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(padded_compare)


def root_digits(row: dict) -> int:
    d = row["b"] ** 2 - 4 * row["a"] * row["c"]
    return len(str(round(d**0.5))) if d > 0 else 0


def summary(by_index: dict[int, dict], first: list[int], small_d: list[int], hard: list[int]) -> dict:
    share = lambda idx: round(sum(by_index[i]["exact"] for i in idx) / len(idx), 3)  # noqa: E731
    four = [i for i in first if root_digits(by_index[i]) == 4]
    zero = [i for i in first if by_index[i]["b"] ** 2 == 4 * by_index[i]["a"] * by_index[i]["c"]]
    kinds, root_right = collections.Counter(), 0
    for i in hard:
        r = by_index[i]
        diagnosis = judge(r["a"], r["b"], r["c"], r["target"], r["prediction"])["diagnosis"]
        root_right += diagnosis["statements"].get("sqrt(D): value", False)
        if diagnosis["first_wrong"]:
            kinds[diagnosis["first_wrong"].split(" work")[0].split(":")[0]] += 1
    return {"full_solution_first_1000": share(first), "full_solution_d_zero_of_first_1000": share(zero), "n_d_zero": len(zero),
            "full_solution_4_digit_roots_of_first_1000": share(four), "n_4_digit": len(four),
            "full_solution_small_d": share(small_d), "full_solution_hard": share(hard), "sqrt_right_hard": round(root_right / len(hard), 3),
            "first_wrong_hard": {"D": kinds["D"], "sqrt(D)": kinds["sqrt(D)"], "roots": kinds["x1"] + kinds["x2"]}}


def main(base_run: str, cmp_dir: str, out: str, *runs: str) -> None:
    cmp = Path(cmp_dir)
    earlier = json.loads((cmp / "sub-indices.json").read_text())  # the 1,754 rows of "The padded formats"
    indices = json.loads((cmp / "sub-hard-indices.json").read_text())
    first, hard = list(range(1000)), indices["hard_test"]
    base = padded_compare.read(Path(base_run) / "predictions.jsonl.gz")
    small_d = sorted({i for i in earlier if 0 < abs(base[i]["b"] ** 2 - 4 * base[i]["a"] * base[i]["c"]) < 10**5})
    runs_rows = {"none (the 0.891 model, reversed)": dict(enumerate(base)),
                 "padded-d, natural mix (ft2-padd)": {**dict(zip(earlier, padded_compare.read(cmp / "ft2-padd" / "predictions.jsonl"))),
                                                      **dict(zip(hard, padded_compare.read(cmp / "ft2-padd-hardtest" / "predictions.jsonl")))}}
    for run in runs:
        runs_rows[Path(run).name] = dict(zip(indices["test"], padded_compare.read(Path(run) / "predictions.jsonl")))
    for name, rows in runs_rows.items():
        assert all(rows[i]["equation"] == base[i]["equation"] for i in first + hard + small_d), f"{name} decoded other rows"
    results = {name: summary(rows, first, small_d, hard) for name, rows in runs_rows.items()}
    Path(out, "summary.json").write_text(json.dumps(results, indent=1) + "\n")
    counts = next(iter(results.values()))  # the same rows for every run
    print(f"| fine-tune | full solution, first 1,000 test rows | their D = 0 ({counts['n_d_zero']}) | their 4-digit roots ({counts['n_4_digit']}) "
          f"| 0 < abs(D) < 10^5 ({len(small_d)}) | 5-digit roots ({len(hard)}) | their sqrt(D) right | their first wrong: D / sqrt(D) / roots |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in results.items():
        fw = s["first_wrong_hard"]
        print(f"| {name} | {s['full_solution_first_1000']:.3f} | {s['full_solution_d_zero_of_first_1000']:.3f} | {s['full_solution_4_digit_roots_of_first_1000']:.3f} "
              f"| {s['full_solution_small_d']:.3f} | {s['full_solution_hard']:.3f} | {s['sqrt_right_hard']:.3f} "
              f"| {fw['D']} / {fw['sqrt(D)']} / {fw['roots']} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
