"""Statement by statement, how often a model writes each value right, read from the committed
predictions: b^2 and 4ac (also by the digits of |b| and of |c|), D (split by the signed sum it is:
an addition when 4ac < 0, a subtraction with D > 0, D = 0 or D < 0; and given both operands
written right), the square root and the first numerator. Works on the steps, long, reversed and
magnitudes runs and their `~` forms (read back first): where a format has no `b^2=` or
`4*a*c=` statement (long, reversed), b^2 and 4ac are the two operands of its `D=B2-(4AC)=D`, and
-b-sqrt(D) is the numerator of its first `x=N/(2A)=x`. Run from the repository root, on folders
beside this script or given by path:

    python figures/results/format-comparison-5k/steps_values.py steps-10k-extra32k steps-reversed-10k-extra32k
    python figures/results/format-comparison-5k/steps_values.py figures/results/default-ranges-cpu/steps-reversed-7k
    python figures/results/format-comparison-5k/steps_values.py figures/results/default-ranges-cpu/reversed-3k
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
OPERANDS = re.compile(r"^(-?\d+)-\(?(-?\d+)\)?$")  # `B2-(4AC)`, `B2-4AC`: D's side before its value
NUMERATOR = re.compile(r"^\(?(-?\d+)\)?/")  # `N/(2A)`


def value(text: str):
    """The integer a side writes (`-924`, `(-924)`), or None."""
    found = NUMBER.match(text)
    return int(found[1]) if found else None


def statements(solution: str) -> dict:
    """{name: sides} of a solution, read back; the name is the first side (`b^2`, `D`, `sqrt(D)`, ...)."""
    text = reverse_digits(solution[1:]) if solution.startswith(REVERSED_MARK) else solution
    out = {}
    for statement in text.split(";"):
        sides = statement.split("=")
        if len(sides) >= 2:
            out.setdefault(sides[0], sides)  # `x=N/(2A)=x1`, x2's and the answers: keep the first
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
        if "b^2" not in written and "D" in written:  # long formats: D's operands
            operands = OPERANDS.match(written["D"][-2])
            b2, fac = (int(operands[1]), int(operands[2])) if operands else (None, None)
        count("b^2 right", b2 == b * b)
        count("4ac right", fac == four_ac)
        count(f"b^2 right, |b| of {len(str(abs(b)))} digits", b2 == b * b)
        count(f"4ac right, |c| of {len(str(abs(c)))} digits", fac == four_ac)
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
            if "-b-sqrt(D)" not in written and "x" in written:  # long formats: x1's numerator
                numerator = NUMERATOR.match(written["x"][1])
                n1 = int(numerator[1]) if numerator else None
            count("two roots, D right: sqrt(D) right", s == root)
            count("two roots, D right: -b-sqrt(D) right", n1 == -b - root)
    def printed(name):  # `order` first, then the rest by name, with `10 digits` after `9 digits`
        return (order.index(name) if name in order else len(order), re.sub(r"\d+", lambda m: m[0].zfill(3), name))

    return {name: share(flags[name]) for name in sorted(flags, key=printed)}


if __name__ == "__main__":
    for run in sys.argv[1:] or ["steps-10k-extra32k"]:
        print(f"## {run}")
        for name, result in report(run).items():
            print(f"  {name}: {result}")
