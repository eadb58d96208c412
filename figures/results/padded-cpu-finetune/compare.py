"""The table of "The padded format" in RESULTS.md: the 0.891 model's own test predictions on the
rows of make_subsets.py, against the fine-tuned runs', row for row; writes OUT/summary.json.

    python figures/results/padded-cpu-finetune/compare.py figures/results/reversed-small-more/run cmp/sub-indices.json \
        figures/results/padded-cpu-finetune cmp/ft-rev cmp/ft-pad ...
"""

import collections
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from train.metrics import judge  # noqa: E402  (after the path: run as a script)
from train.quadratic import read_predictions, regrade  # noqa: E402


def read(path: Path) -> list[dict]:
    """eval's rows, graded again; a compact row (the tracked 0.891 model's) made whole again in the
    format of the dataset-card.json beside it."""
    card = path.parent / "dataset-card.json"
    return regrade(read_predictions(path), json.loads(card.read_text())["format"] if card.exists() else None, str(path))


def summary(rows: list[dict]) -> dict:
    first = rows[:1000]  # the first 1,000 test rows: a random sample of the test split
    first_wrong, d_right, root_right, with_root = collections.Counter(), 0, 0, 0
    for r in first:
        statements = judge(r["a"], r["b"], r["c"], r["target"], r["prediction"])["diagnosis"]
        d_right += statements["statements"].get("D: value", False)
        if "sqrt(D): value" in statements["statements"]:
            with_root += 1
            root_right += statements["statements"]["sqrt(D): value"]
        if statements["first_wrong"]:
            first_wrong[statements["first_wrong"].split(" work")[0].split(":")[0]] += 1
    disc = [r["b"] ** 2 - 4 * r["a"] * r["c"] for r in rows]
    small = [r for r, d in zip(rows, disc) if 0 < abs(d) < 10**5]
    zero = [r for r, d in zip(first, disc) if d == 0]
    share = lambda rs: round(sum(r["exact"] for r in rs) / len(rs), 3)  # noqa: E731
    return {"full_solution_first_1000": share(first), "full_solution_d_zero": share(zero), "n_d_zero": len(zero),
            "full_solution_small_d": share(small), "n_small_d": len(small), "d_value_right": round(d_right / len(first), 3),
            "sqrt_right": round(root_right / with_root, 3),
            "first_wrong": {"D": first_wrong["D"], "sqrt(D)": first_wrong["sqrt(D)"], "roots": first_wrong["x1"] + first_wrong["x2"]}}


def main(base_run: str, indices: str, out: str, *runs: str) -> None:
    base = read(Path(base_run) / "predictions.jsonl.gz")
    base = [base[i] for i in json.loads(Path(indices).read_text())]
    results = {"none (the 0.891 model)": summary(base)}
    for run in runs:
        rows = read(Path(run) / "predictions.jsonl")
        assert [r["equation"] for r in rows] == [r["equation"] for r in base], f"{run} decoded other rows"
        results[Path(run).name] = summary(rows)
    Path(out, "summary.json").write_text(json.dumps(results, indent=1) + "\n")
    print("| fine-tune | full solution, 1,000 test rows | D = 0 | 0 < abs(D) < 10^5 | D's value right | sqrt(D) right | first wrong: D / sqrt(D) / roots |")
    print("|---|---|---|---|---|---|---|")
    for name, s in results.items():
        fw = s["first_wrong"]
        print(f"| {name} | {s['full_solution_first_1000']:.3f} | {s['full_solution_d_zero']:.3f} | {s['full_solution_small_d']:.3f} "
              f"| {s['d_value_right']:.3f} | {s['sqrt_right']:.3f} | {fw['D']} / {fw['sqrt(D)']} / {fw['roots']} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
