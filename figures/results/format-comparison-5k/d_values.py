"""What the published-format models write for D when it is wrong, read from the committed predictions.

A two-root equation of the dataset is a(x - r1)(x - r2) with integer roots, so its D is
(a(r1 - r2))^2, a square of a multiple of |a|. A no-root equation's D has no such form. This asks
whether a model's wrong D keeps that form, which would mean that it writes D as the square of a
number it has found, not as b^2 - 4ac worked out; and, for no-root equations, which parts of the
wrong D are right (the last digit and D mod 4 follow from the coefficients' last digits). Run from
the repository root:

    python figures/results/format-comparison-5k/d_values.py published-30k-extra32k published-reversed-30k-extra32k
"""

import gzip
import json
import re
import sys
from math import isqrt
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from gen.equations import REVERSED_MARK, reverse_digits  # noqa: E402  (after the path: a script)

HERE = Path(__file__).parent
PUBLISHED = re.compile(r"D=\(.*?\)=(-?\d+);(?:x=\(-(?:\d+|\(-\d+\))-(\d+)\)/\(2\*.*?\)=(-?\d+);x=.*?=(-?\d+);)?")


def read_back(solution: str) -> str:
    return reverse_digits(solution[1:]) if solution.startswith(REVERSED_MARK) else solution


def squares_share(digits: int) -> float:
    """The share of perfect squares among the non-negative integers written with `digits` digits:
    what a wrong D of that length would give by chance."""
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    return (isqrt(hi) + 1 - (isqrt(lo - 1) + 1 if lo else 0)) / (hi - lo + 1)


def share(flags: list) -> str:
    return f"{sum(flags) / len(flags):.3f} ({sum(flags)}/{len(flags)})" if flags else "-"


def report(run: str) -> dict:
    rows = [json.loads(line) for line in gzip.open(HERE / run / "predictions.jsonl.gz", "rt")]
    two, none = [], []
    for row in rows:
        a, b, c = row["a"], row["b"], row["c"]
        disc = b * b - 4 * a * c
        found = PUBLISHED.match(read_back(row["prediction"]))
        if not found:
            continue
        written = int(found[1])
        if row["num_roots"] == 2 and written != disc and found[2]:
            root, x1, x2 = int(found[2]), int(found[3]), int(found[4])
            true_root = isqrt(disc)
            two.append({
                "D a perfect square": written >= 0 and isqrt(written) ** 2 == written,
                "chance": squares_share(len(str(abs(written)))),
                "sqrt(D) in x1's formula squared is D": root * root == written,
                "sqrt(D) a multiple of |a|": root % abs(a) == 0,
                "(sqrt(D) - true sqrt(D)) / |a| even": (root - true_root) % (2 * abs(a)) == 0,
                "both roots right all the same": sorted((x1, x2)) == sorted(((-b - true_root) // (2 * a), (-b + true_root) // (2 * a))),
            })
        if row["num_roots"] == 0:
            w, t = str(abs(written)), str(abs(disc))
            none.append({
                "D right": written == disc,
                "D negative": written < 0,
                "as many digits": len(w) == len(t),
                "first digit right": w[0] == t[0],
                "first two digits right": w[:2] == t[:2],
                "last digit right": w[-1] == t[-1],
                "tens digit right (as many digits)": None if len(w) != len(t) or len(t) < 2 else w[-2] == t[-2],
                "hundreds digit right (as many digits)": None if len(w) != len(t) or len(t) < 3 else w[-3] == t[-3],
                "D right mod 4": (written - disc) % 4 == 0,
                "within 10%": abs(written - disc) <= abs(disc) / 10,
            })
    out = {"run": run, "two roots, D wrong": {}, "no root": {}}
    for name, group in (("two roots, D wrong", two), ("no root", none)):
        for key in (group[0] if group else {}):
            if key == "chance":
                out[name]["a random number as long as that D a perfect square (expected)"] = f"{sum(g[key] for g in group) / len(group):.3f}"
                continue
            out[name][key] = share([g[key] for g in group if g[key] is not None])
    return out


if __name__ == "__main__":
    for run in sys.argv[1:] or ["published-30k-extra32k", "published-reversed-30k-extra32k"]:
        result = report(run)
        print(f"## {run}")
        for name in ("two roots, D wrong", "no root"):
            print(f"{name}:")
            for key, value in result[name].items():
                print(f"  {key}: {value}")
