"""Full-solution accuracy of test predictions, and the statement that goes wrong first, on the row groups of the CPU fine-tune comparisons:
the first 1,000 test rows, the 1,754 rows of "The padded formats" (`sub-indices.json` of
`make_subsets.py`), the first 500 test rows with a 5-digit square root and the 2,165 rows of
`sub-hard` (`sub-hard-indices.json` of `../hard-rows-cpu-finetune/make_subsets.py`). Rows are
matched by equation, so any run's predictions that hold a group's rows count (the tracked 20,000,
or those of `cli.py eval` on `sub-hard`). The first wrong statement (D, the square root or a root,
with its work) is judged again from the output, which the tracked compact predictions keep for the
wrong rows, against the dataset's solution: give predictions in the dataset's format (the 0.891
model's, in `reversed`, would all seem to go wrong at D).

    python figures/results/padded-cpu-finetune/row_groups.py cmp/data-default-extra400k-pdp cmp \
        figures/results/padded-d-plain-cpu/run/predictions.jsonl.gz cmp/soup-p1-p2h/predictions.jsonl
"""

import collections
import gzip
import json
import sys
from pathlib import Path

import datasets

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from train.metrics import judge  # noqa: E402  (after the path: run as a script)


def main(dataset: str, index_dir: str, *prediction_files: str) -> None:
    test = datasets.load_from_disk(dataset)["test"]
    equations = test["equation"]
    by_equation = {e: (a, b, c, t) for e, a, b, c, t in zip(equations, test["a"], test["b"], test["c"], test["solution"])}
    hard = json.loads((Path(index_dir) / "sub-hard-indices.json").read_text())
    groups = {"first 1,000": range(1000), "the 1,754": json.loads((Path(index_dir) / "sub-indices.json").read_text()),
              "5-digit roots (500)": hard["hard_test"], "sub-hard (2,165)": hard["test"]}
    for path in prediction_files:
        with (gzip.open if path.endswith(".gz") else open)(path, "rt") as f:
            rows = {r["equation"]: r for r in map(json.loads, f)}
        first_wrong = {}
        for e, r in rows.items():
            if not r["exact"] and e in by_equation:
                step = (judge(*by_equation[e], r["prediction"])["diagnosis"]["first_wrong"] or "none").split(" work")[0].split(":")[0]
                first_wrong[e] = "roots" if step in ("x1", "x2") else step
        cells = []
        for name, group in groups.items():
            held = [equations[i] for i in group if equations[i] in rows]
            if len(held) < len(group):
                cells.append(f"{name}: {len(group) - len(held)} rows missing")
                continue
            kinds = collections.Counter(first_wrong[e] for e in held if e in first_wrong)
            cells.append(f"{name} {sum(rows[e]['exact'] for e in held) / len(held):.4f} (first wrong D {kinds['D']}, "
                         f"sqrt(D) {kinds['sqrt(D)']}, roots {kinds['roots']}, other {sum(kinds.values()) - kinds['D'] - kinds['sqrt(D)'] - kinds['roots']})")
        print(f"{path}: " + "; ".join(cells))


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit("usage: row_groups.py DATASET_DIR INDEX_DIR PREDICTIONS [PREDICTIONS ...]")
    missing = [p for p in (f"{sys.argv[2]}/sub-indices.json", f"{sys.argv[2]}/sub-hard-indices.json", *sys.argv[3:]) if not Path(p).is_file()]
    if missing or not Path(sys.argv[1]).is_dir():
        sys.exit(f"error: {missing[0] if missing else sys.argv[1]}: not found; give the pdp dataset, the folder of make_subsets.py's "
                 "index files and prediction files (.jsonl or .jsonl.gz)")
    main(*sys.argv[1:])
