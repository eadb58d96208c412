"""Where the digit-by-digit square root goes wrong, read from the committed predictions of a long,
reversed or magnitudes run. Only outputs whose `D=...` statement equals the reference's and whose
D is positive count: the square root then starts from the right number. Their square-root steps
(`d*d=T;R-T=R';(20*P+d)*d=T;R-T=R';...` up to `sqrt(D)=S`, read back from `~` first) are compared
with the reference's statement by statement, and the first that differs is put in one class:

- the trial digit d, given the right root so far P: too large ((20P+d)*d > R) or too small;
- P, the root so far, copied wrong into the trial;
- the trial's product (20P+d)*d wrong with P and d right;
- the remainder R, the last difference followed by D's next pair of digits, wrong in `R-T`;
- T copied wrong into `R-T`, or the difference R-T wrong;
- the steps end too soon (`sqrt(D)=` written early) or go on past D's last pair.

Run from the repository root, on folders beside this script or given by path:

    python figures/results/format-comparison-5k/sqrt_steps.py figures/results/default-ranges-cpu/reversed-10k-extra400k-wsd
"""

import gzip
import json
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from gen.equations import REVERSED_MARK, reverse_digits  # noqa: E402  (after the path: a script)

HERE = Path(__file__).parent
TRIAL = re.compile(r"^(?:\(20\*(\d+)\+(\d)\)\*(\d)|(\d)\*(\d))=(\d+)$")  # `(20*P+d)*d=T` or `d*d=T`
SUBTRACTION = re.compile(r"^(\d+)-(\d+)=(\d+)$")


def sqrt_steps(solution: str):
    """(D's statement, the square-root statements before `sqrt(D)=`, S's statement) of a solution
    read back, or None where it has no `D=` or no `sqrt(D)=`."""
    text = reverse_digits(solution[1:]) if solution.startswith(REVERSED_MARK) else solution
    parts = text.split(";")
    d_at = next((i for i, part in enumerate(parts) if part.startswith("D=")), None)
    s_at = next((i for i, part in enumerate(parts) if part.startswith("sqrt(D)=")), None)
    if d_at is None or s_at is None or s_at < d_at:
        return None
    return parts[d_at], parts[d_at + 1:s_at], parts[s_at]


def first_difference(ours: list, reference: list) -> str:
    """The class of the first statement of `ours` that differs from `reference` (module docstring)."""
    for at, expected in enumerate(reference):
        if at >= len(ours):
            return "steps end too soon"
        written = ours[at]
        if written == expected:
            continue
        if at % 2 == 0:  # a trial
            want, got = TRIAL.match(expected), TRIAL.match(written)
            if not got or (got[1] is None) != (want[1] is None):
                return "trial malformed"
            if want[1] is not None and got[1] != want[1]:
                return "root so far copied wrong"
            digit = 2 if want[1] is not None else 4  # the groups of d: 2 and 3 in `(20*P+d)*d`, 4 and 5 in `d*d`
            if got[digit] != got[digit + 1]:
                return "trial malformed"
            d_want, d_got = want[digit], got[digit]
            if d_got != d_want:
                return "trial digit too large" if int(d_got) > int(d_want) else "trial digit too small"
            return "trial product wrong"
        want, got = SUBTRACTION.match(expected), SUBTRACTION.match(written)
        if not got:
            return "subtraction malformed"
        if got[1] != want[1]:
            return "remainder (brought-down pair) wrong"
        if got[2] != want[2]:
            return "trial product copied wrong"
        return "difference wrong"
    return "steps go on past D's last pair" if len(ours) > len(reference) else "sqrt(D) statement wrong"


def results_folder(run: str) -> Path:
    """A results folder given by path, or one beside this script."""
    return Path(run) if Path(run).is_dir() else HERE / run


def report(run: str) -> dict:
    folder = results_folder(run)
    counts, by_digits, total_by_digits = Counter(), Counter(), Counter()
    considered = right = root_right = 0
    for line in gzip.open(folder / "predictions.jsonl.gz", "rt"):
        row = json.loads(line)
        reference = sqrt_steps(row["target"])
        if reference is None or reference[2] == "sqrt(D)=0":
            continue
        ours = sqrt_steps(row["prediction"])
        if ours is None or ours[0] != reference[0]:
            continue
        considered += 1
        digits = len(reference[1]) // 2
        total_by_digits[digits] += 1
        root_right += ours[2] == reference[2]
        if ours[1] == reference[1] and ours[2] == reference[2]:
            right += 1
            continue
        counts[first_difference(ours[1], reference[1])] += 1
        at = next((i for i, (a, b) in enumerate(zip(ours[1], reference[1])) if a != b), min(len(ours[1]), len(reference[1])))
        by_digits[(digits, at // 2 + 1)] += 1
    print(f"{folder.name}: {considered} outputs with D > 0 written right; every square-root step right in "
          f"{right} ({right / max(considered, 1):.3f}), the root S in {root_right} ({root_right / max(considered, 1):.3f})")
    for name, n in counts.most_common():
        print(f"  {name:40s} {n:5d}  {n / max(considered, 1):.3f} of those outputs")
    print("  by the root's digits n: outputs, first wrong at root digit 1, ..., n, then after the steps")
    for digits in sorted(total_by_digits):
        wrong = [by_digits[(digits, k)] for k in range(1, digits + 2)]
        print(f"    {digits} digits: {total_by_digits[digits]:5d}, wrong at {wrong}")
    return {"considered": considered, "right": right, "root_right": root_right, "first_difference": dict(counts)}


if __name__ == "__main__":
    for name in sys.argv[1:] or ["reversed"]:
        if not (results_folder(name) / "predictions.jsonl.gz").is_file():
            sys.exit(f"sqrt_steps.py: {name} has no predictions.jsonl.gz; give a results folder (a path, or a name beside this script)")
        report(name)
