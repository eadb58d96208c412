"""Where the 0.891 model's square root goes wrong (RESULTS.md, "After D, the square root").

For the two-root test equations whose output is right up to D (D's value included), the first
statement of the digit-by-digit square root that differs from the reference, by the root's
number of digits and by kind: the trial digit d of `(20*P+d)*d` too big or too small, the trial's
product, the remainder's digits or its length, or the partial remainder R brought down.

    python figures/results/reversed-small-more/sqrt_errors.py figures/results/reversed-small-more/run/predictions.jsonl.gz OUT.json

Reads eval's predictions, full or compact (`cli.py grade --compact`: a row without `target` gets
its reference written again in the format of the dataset-card.json beside the file, by
train.quadratic.regrade).
"""

import collections
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from train.quadratic import read_predictions, regrade  # noqa: E402


def statements(solution: str) -> list[str]:
    return solution.lstrip("~").split(";")


def first_error(target: list[str], prediction: list[str], start: int, stop: int) -> str:
    """The kind of the first statement in target[start:stop + 1] that the prediction writes otherwise."""
    j = next(i for i in range(start, stop + 1) if i >= len(prediction) or prediction[i] != target[i])
    want, got = target[j], prediction[j] if j < len(prediction) else ""
    if want.startswith("sqrt("):
        return "the sqrt(D) statement"
    want_left, got_left = want.split("=")[0], got.split("=")[0]
    if "*" in want_left:  # a trial: (02*P+d)*d=T, or d*d=T for the first digit
        if want_left == got_left:
            return "trial product"
        want_d, got_d = re.findall(r"\*(\d)$", want_left), re.findall(r"\*(\d)$", got_left)
        if want_d and got_d and want_d != got_d:
            return "trial digit too big" if got_d[0] > want_d[0] else "trial digit too small"
        return "trial, other"
    if want_left != got_left:
        return "partial remainder R brought down"
    return "remainder length" if len(want.split("=")[-1]) != len(got.split("=")[-1]) else "remainder digits"


def outputs(predictions: str):
    """(num_roots, reference, output) of each row, compact rows made whole again."""
    card = Path(predictions).parent / "dataset-card.json"
    fmt = json.loads(card.read_text())["format"] if card.exists() else None
    for record in regrade(read_predictions(Path(predictions)), fmt, predictions):
        yield record["num_roots"], record["target"], record["prediction"]


def main(predictions: str, out: str) -> None:
    outcome = collections.Counter()
    by_root_digits = collections.defaultdict(collections.Counter)
    by_root_digit_and_kind = collections.Counter()
    wrong_digit = collections.Counter()  # a wrong trial digit: by how much, and whether R, written after it, is right
    for num_roots, target, prediction in outputs(predictions):
        if num_roots != 2:
            continue
        target, prediction = statements(target), statements(prediction)
        d_at = next(i for i, s in enumerate(target) if s.startswith("D="))
        if prediction[: d_at + 1] != target[: d_at + 1]:
            outcome["wrong up to D"] += 1
            continue
        s_at = next(i for i, s in enumerate(target) if s.startswith("sqrt("))
        root_digits = len(target[s_at].split("=")[1])
        counts = by_root_digits[root_digits]
        counts["n"] += 1
        if prediction[: s_at + 1] == target[: s_at + 1]:
            outcome["square root right"] += 1
            continue
        kind = first_error(target, prediction, d_at + 1, s_at)
        counts["square root wrong"] += 1
        outcome[kind] += 1
        first = next(i for i in range(d_at + 1, s_at + 1) if i >= len(prediction) or prediction[i] != target[i])
        by_root_digit_and_kind[f"trial {(first - d_at - 1) // 2 + 1}: {kind}"] += 1
        if kind.startswith("trial digit"):
            want_d, got_d = (int(s.split("=")[0][-1]) for s in (target[first], prediction[first]))
            wrong_digit[f"off by {abs(got_d - want_d)}"] += 1
            r_right = first + 1 < len(prediction) and prediction[first + 1].split("-")[0] == target[first + 1].split("-")[0]
            wrong_digit["R written right after it" if r_right else "R written wrong after it"] += 1
    result = {
        "two-root outputs": dict(outcome),
        "right up to D, by digits of sqrt(D)": {
            str(k): {"n": v["n"], "square root wrong": v["square root wrong"],
                     "rate": round(v["square root wrong"] / v["n"], 4)} for k, v in sorted(by_root_digits.items())},
        "first wrong, by the trial (one per non-zero root digit)": dict(sorted(by_root_digit_and_kind.items())),
        "trial digit wrong first": dict(sorted(wrong_digit.items())),
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
