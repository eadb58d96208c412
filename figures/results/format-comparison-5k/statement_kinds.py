"""Statements of the long formats grouped by what they compute, read from the committed predictions.

The diagnosis names scratch statements by place (`D work 3`), and the same place holds a partial
product in one equation and a running sum in another. This groups them by kind instead. For each
kind, it gives the share of well-formed predictions whose statement at the reference's place is a
true equality, using the grader's `false_statements`. It also splits D's statement by the signed sum
it is, and the partial products and running sums by the digits of the number they work on (the
multiplicand; the sum). Run from the repository root, on folders beside this script or given by path:

    python figures/results/format-comparison-5k/statement_kinds.py long reversed magnitudes
    python figures/results/format-comparison-5k/statement_kinds.py figures/results/default-ranges-cpu/reversed-3k
"""

import gzip
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from gen.equations import reverse_digits, write_solution  # noqa: E402  (after the path: a script)
from gen.grader import grade  # noqa: E402

HERE = Path(__file__).parent


def read_back(solution: str) -> str:
    """A `~` solution with its numbers in the usual order; any other as it is."""
    return reverse_digits(solution[1:]) if solution.startswith("~") else solution


def kinds(target: str, a: int, b: int, c: int) -> list[str]:
    """The kind of each statement of a long, reversed or magnitudes reference, read back in order:
    before D come 4a, partial products and running sums; between D and sqrt(D) the square-root
    steps; after 2a the numerators, long-division steps and roots."""
    steps = read_back(target).split(";")[:-1]
    long_steps = write_solution(a, b, c, "long").split(";")[:-1]
    out, phase, j = [], "before D", 0
    for i, step in enumerate(steps):
        if j < len(long_steps) and step == long_steps[j]:
            j += 1
        else:  # only the magnitudes format writes steps the long one lacks
            out.append("magnitude step before D" if steps[i + 1].startswith("D=") else "magnitude step before -B+-S")
            continue
        if step.startswith("D="):
            out.append("D = B^2 - 4AC")
            phase = "square root"
        elif step.startswith(("4*a=", "2*a=", "sqrt(D)=")):
            out.append(step.split("=")[0])
            phase = "roots" if step.startswith("2*a=") else phase
        elif re.fullmatch(r"x=-?\d+", step):
            out.append("answer")
        elif step.startswith("x="):
            out.append("x = N / 2a")
        elif phase == "before D":
            out.append("partial product" if "*" in step else "running sum")
        elif phase == "square root":
            out.append("square-root step")
        else:
            out.append("long-division step" if "*" in step else "numerator -B+-S")
    return out


def sign_case(a: int, b: int, c: int) -> str:
    p, q = b * b, 4 * a * c
    if not p or not q:
        return "an operand 0"
    if q < 0:
        return "B^2 + |4AC|"
    return "B^2 - 4AC, D >= 0" if p >= q else "4AC - B^2, D < 0"


def main(runs: list[str]) -> None:
    for run in runs:
        total, true, d_total, d_true, size_total, size_true = {}, {}, {}, {}, {}, {}
        folder = Path(run) if Path(run).is_dir() else HERE / run
        with gzip.open(folder / "predictions.jsonl.gz", "rt") as lines:
            for line in lines:
                r = json.loads(line)
                verdict = grade(r["a"], r["b"], r["c"], r["prediction"])
                if not verdict.well_formed:
                    continue
                false = set(verdict.false_statements)
                written = len(r["prediction"].split(";")) - 1
                reference = read_back(r["target"]).split(";")
                for i, kind in enumerate(kinds(r["target"], r["a"], r["b"], r["c"])):
                    if kind == "answer":
                        continue
                    holds = i < written and i + 1 not in false
                    total[kind] = total.get(kind, 0) + 1
                    true[kind] = true.get(kind, 0) + holds
                    if kind in ("partial product", "running sum"):  # `X*d=P`: X's digits; `S+P=T`: T's
                        number = re.findall(r"\d+", reference[i])[0 if kind == "partial product" else -1]
                        size = f"{kind}, {len(number):2d} digits"
                        size_total[size] = size_total.get(size, 0) + 1
                        size_true[size] = size_true.get(size, 0) + holds
                    if kind == "D = B^2 - 4AC":
                        case = sign_case(r["a"], r["b"], r["c"])
                        d_total[case] = d_total.get(case, 0) + 1
                        d_true[case] = d_true.get(case, 0) + holds
        print(f"{run}: share of well-formed outputs whose statement is a true equality")
        for kind in sorted(total):
            print(f"  {kind:30s} {true[kind] / total[kind]:.3f}  (n = {total[kind]})")
        print(f"{run}: D = B^2 - 4AC true, by the signed sum it is")
        for case in sorted(d_total):
            print(f"  {case:30s} {d_true[case] / d_total[case]:.3f}  (n = {d_total[case]})")
        print(f"{run}: partial products by the multiplicand's digits, running sums by the sum's")
        for size in sorted(size_total):
            print(f"  {size:30s} {size_true[size] / size_total[size]:.3f}  (n = {size_total[size]})")


if __name__ == "__main__":
    main(sys.argv[1:] or ["long", "reversed", "magnitudes"])
