"""Formats side by side on the same test rows, by kind of step (RESULTS.md, "After D, the square root").

Each statement of a reference solution is given a kind that exists in every schoolbook format:
the coefficients' divisions (monic's b/a and c/a, with their long-division steps), the products
and running sums before the discriminant, the discriminant's value, the square root's trials and
remainders, sqrt's value, and the roots (the numerators, the divisions and x=N/M). A kind's rate
is the share of the rows having it whose output writes every statement of that kind exactly as the
reference does. Reads each run's predictions.jsonl(.gz) and metrics.json.

    python figures/results/monic-cpu/compare.py OUT.json NAME=RUN_DIR ...
"""

import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from train.metrics import statement_names  # noqa: E402

KINDS = {  # a statement name (its " work K" removed) -> kind
    "b/a": "coefficients divided by a", "c/a": "coefficients divided by a",
    "4*a": "4a", "2*a": "2a",
    "D": "discriminant's value", "D/a/a": "discriminant's value",
    "sqrt(D)": "square root's value", "sqrt(D/a/a)": "square root's value",
    "x1": "roots", "x2": "roots", "answer": "answer",
}


def kind(name: str) -> str:
    base, _, _ = name.partition(" work ")
    if " work " in name and base in ("D", "D/a/a"):
        return "discriminant's products and sums"
    if " work " in name and base in ("sqrt(D)", "sqrt(D/a/a)"):
        return "square root's trials and remainders"
    return KINDS[base]


def read(run: Path):
    path = run / "predictions.jsonl"
    opener = (lambda: open(path)) if path.exists() else (lambda: gzip.open(str(path) + ".gz", "rt"))
    with opener() as lines:
        return [json.loads(line) for line in lines]


def summary(run: Path) -> dict:
    rows = read(run)
    right, having = {}, {}
    for row in rows:
        names = statement_names(row["target"])
        target = row["target"].lstrip("~").split(";")
        prediction = row["prediction"].lstrip("~").split(";")
        ok = {}
        for i, name in enumerate(names):
            if name == "answer":
                ok.setdefault("answer", row["roots_correct"])
                continue
            k = kind(name)
            ok[k] = ok.get(k, True) and i < len(prediction) and prediction[i] == target[i]
        for k, v in ok.items():
            having[k] = having.get(k, 0) + 1
            right[k] = right.get(k, 0) + v
    metrics = json.loads((run / "metrics.json").read_text())["test"]["greedy"]
    return {
        "rows": len(rows),
        "full_solution_accuracy": metrics["full_solution_accuracy"],
        "character_accuracy": round(metrics["character_accuracy"], 4),
        "by_num_roots": {k: v["full_solution_accuracy"] for k, v in metrics["by_num_roots"].items()},
        "kinds": {k: {"n": having[k], "all right": round(right[k] / having[k], 4)} for k in having},
    }


def main(out: str, *runs: str) -> None:
    result = {}
    for spec in runs:
        name, _, path = spec.partition("=")
        result[name] = summary(Path(path))
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    kinds = list(dict.fromkeys(k for r in result.values() for k in r["kinds"]))
    print("| run | full solution | two / one / none | character acc. | " + " | ".join(kinds) + " |")
    print("|---" * (4 + len(kinds)) + "|")
    for name, r in result.items():
        classes = " / ".join(f"{r['by_num_roots'].get(c, 0):.3f}" for c in ("two", "one", "none"))
        cells = [f"{r['kinds'][k]['all right']:.3f}" if k in r["kinds"] else "-" for k in kinds]
        print(f"| {name} | {r['full_solution_accuracy']:.3f} | {classes} | {r['character_accuracy']:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
