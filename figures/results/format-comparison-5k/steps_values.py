"""Statement by statement, how often the steps-format models write each value right, read from the
committed predictions: b^2, 4ac, D (split by the signed sum it is: an addition when 4ac < 0, a
subtraction with D > 0, D = 0 or D < 0; and given both operands written right), the
square root, the numerators and the roots. Works on the steps and steps-reversed runs (a `~`
solution is read back first). Run from the repository root, on folders beside this script or
given by path:

    python figures/results/format-comparison-5k/steps_values.py steps-10k-extra32k steps-reversed-10k-extra32k
    python figures/results/format-comparison-5k/steps_values.py figures/results/default-ranges-cpu/steps-reversed-7k
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
NUMBER = re.compile(r"^\(?(-?\d+)\)?$")


def value(text: str):
    """The integer a side writes (`-924`, `(-924)`), or None."""
    found = NUMBER.match(text)
    return int(found[1]) if found else None


def statements(solution: str) -> dict:
    """{name: sides} of a steps solution, read back; the name is the first side (`b^2`, `D`, ...)."""
    text = reverse_digits(solution[1:]) if solution.startswith(REVERSED_MARK) else solution
    out = {}
    for statement in text.split(";"):
        sides = statement.split("=")
        if len(sides) >= 3:
            out.setdefault(sides[0], sides)  # `x=N/(2A)=x1` twice: keep the first
    return out


def share(flags: list) -> str:
    return f"{sum(flags) / len(flags):.3f} ({sum(flags)}/{len(flags)})" if flags else "-"


def report(run: str) -> dict:
    folder = Path(run) if Path(run).is_dir() else HERE / run  # a results folder, or one beside this script
    rows = [json.loads(line) for line in gzip.open(folder / "predictions.jsonl.gz", "rt")]
    kinds = ("addition (4ac < 0)", "subtraction, D > 0", "subtraction, D = 0", "subtraction, D < 0")
    order = ["full solution", "b^2 right", "4ac right", "D right", *(f"D right: {k}" for k in kinds),
             *(f"D right, both operands right: {k}" for k in kinds)]
    flags: dict = {name: [] for name in order}  # the printed order

    def count(name, flag):
        flags.setdefault(name, []).append(bool(flag))

    for row in rows:
        a, b, c = row["a"], row["b"], row["c"]
        disc, four_ac = b * b - 4 * a * c, 4 * a * c
        written = statements(row["prediction"])
        count("full solution", row["exact"])
        b2, fac, d = (value(written.get(k, ["", ""])[-1]) for k in ("b^2", "4*a*c", "D"))
        count("b^2 right", b2 == b * b)
        count("4ac right", fac == four_ac)
        kind = kinds[0] if four_ac < 0 else kinds[1] if disc > 0 else kinds[2] if disc == 0 else kinds[3]
        count("D right", d == disc)
        count(f"D right: {kind}", d == disc)
        if b2 == b * b and fac == four_ac:
            count(f"D right, both operands right: {kind}", d == disc)
            if row["num_roots"] == 2 and d is not None and d != disc:
                count("two roots, operands right, D wrong: D a perfect square", d >= 0 and isqrt(d) ** 2 == d)
        if row["num_roots"] == 2 and d == disc:
            root = isqrt(disc)
            s = value(written.get("sqrt(D)", ["", ""])[-1])
            n1 = value(written.get("-b-sqrt(D)", ["", ""])[-1])
            count("two roots, D right: sqrt(D) right", s == root)
            count("two roots, D right: -b-sqrt(D) right", n1 == -b - root)
    return {name: share(f) for name, f in flags.items()}


if __name__ == "__main__":
    for run in sys.argv[1:] or ["steps-10k-extra32k"]:
        print(f"## {run}")
        for name, result in report(run).items():
            print(f"  {name}: {result}")
