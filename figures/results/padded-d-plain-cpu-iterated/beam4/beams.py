"""Where the right solution sits among the beams of `eval --num-beams K` (RESULTS.md, "Four beams
and the grader"): for each row the rank of the first beam the grader fully accepts, against the
greedy output; and, for the rows no beam solves, the statement where the greedy output first goes
wrong. Reads predictions files, full or compact (a compact row's reference is written again in the
format of the dataset-card.json beside it), and counts their rows together.

    python figures/results/padded-d-plain-cpu-iterated/beam4/beams.py OUT.json \
        figures/results/padded-d-plain-cpu-iterated/beam4/predictions-rows1*.jsonl.gz
"""

import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from gen.grader import grade  # noqa: E402
from train.quadratic import read_predictions, regrade  # noqa: E402


def main(out: str, *paths: str) -> None:
    records = []
    for path in paths:
        card = Path(path).parent / "dataset-card.json"
        records += regrade(read_predictions(Path(path)), json.loads(card.read_text())["format"] if card.exists() else None, path)
    ranks = []
    for r in records:
        accepted = [grade(r["a"], r["b"], r["c"], text).ok for text in r["beams"]]
        ranks.append(accepted.index(True) + 1 if any(accepted) else None)
    k, n = len(records[0]["beams"]), len(records)

    def table(rows):
        counts = Counter(ranks[i] for i in rows)
        return {"rows": len(rows), **{f"rank {j}": counts[j] for j in range(1, k + 1)}, "none": counts[None]}

    def first_wrong(rows):
        return dict(Counter(records[i]["diagnosis"]["first_wrong"] or "none" for i in rows).most_common())

    greedy_right = [i for i, r in enumerate(records) if r["exact"]]
    greedy_wrong = [i for i, r in enumerate(records) if not r["exact"]]
    unsolved = [i for i in range(n) if ranks[i] is None]
    summary = {
        "files": list(paths), "rows": n, "beams": k,
        "first accepted beam, all rows": table(range(n)),
        "first accepted beam, rows greedy solves": table(greedy_right),
        "first accepted beam, rows greedy fails": table(greedy_wrong),
        "greedy solves, the most likely beam does not": sum(records[i]["exact"] and ranks[i] != 1 for i in range(n)),
        "the most likely beam solves, greedy does not": sum(not records[i]["exact"] and ranks[i] == 1 for i in range(n)),
        "the most likely beam solves, greedy does not: greedy's first wrong statement": first_wrong(
            [i for i in greedy_wrong if ranks[i] == 1]),
        "no beam accepted, by root count": dict(Counter(str(records[i]["num_roots"]) for i in unsolved)),
        "no beam accepted, greedy's first wrong statement": first_wrong(unsolved),
    }
    Path(out).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
