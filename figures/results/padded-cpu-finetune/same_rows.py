"""Two runs' test predictions on the same equations, row for row (matched by the equation: the
formats write the same equations in the same order): full-solution and roots accuracy overall and
by root count, and the rows one solves and the other does not. For a run evaluated on the first N
test rows (`cli.py eval RUN --limit N`) against the 0.891 model's 20,000 GPU predictions.

    python figures/results/padded-cpu-finetune/same_rows.py figures/results/reversed-small-more/run/predictions.jsonl.gz \
        cmp/ft5-pdp-bf16/predictions.jsonl OUT.json
"""

import gzip
import json
import sys
from pathlib import Path


def rows(path: str) -> dict:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return {r["equation"]: r for r in map(json.loads, f)}


def main(first: str, second: str, out: str) -> None:
    a, b = rows(first), rows(second)
    shared = [e for e in b if e in a]
    summary = {"rows": len(shared), "first": first, "second": second}
    for name, subset in (("all", shared), *((f"{k} roots", [e for e in shared if b[e]["num_roots"] == k]) for k in (2, 1, 0))):
        n = len(subset)
        summary[name] = {
            "n": n,
            "full_solution": [round(sum(r[e]["exact"] for e in subset) / n, 4) for r in (a, b)],
            "roots": [round(sum(r[e]["roots_correct"] for e in subset) / n, 4) for r in (a, b)],
            "solved_by_first_only": sum(a[e]["exact"] and not b[e]["exact"] for e in subset),
            "solved_by_second_only": sum(b[e]["exact"] and not a[e]["exact"] for e in subset),
        }
    Path(out).write_text(json.dumps(summary, indent=1) + "\n")
    for name in ("all", "2 roots", "1 roots", "0 roots"):
        s = summary[name]
        print(f"{name} ({s['n']}): full solution {s['full_solution'][0]:.4f} -> {s['full_solution'][1]:.4f}, roots "
              f"{s['roots'][0]:.4f} -> {s['roots'][1]:.4f}; solved by the first only {s['solved_by_first_only']}, "
              f"by the second only {s['solved_by_second_only']}")


if __name__ == "__main__":
    main(*sys.argv[1:])
