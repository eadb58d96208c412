"""Metrics, one definition each, as in ../shared/GUIDE.md section 2."""

from __future__ import annotations

import operator
import re
from collections import Counter
from itertools import compress

from gen.equations import REVERSED_MARK
from gen.grader import grade

ROOT_CLASSES = {2: "two", 1: "one", 0: "none"}


def character_accuracy(prediction: str, target: str) -> float:
    """Positions i where pred[i] == target[i], over max(len(pred), len(target)); 1 if both empty."""
    longest = max(len(prediction), len(target))
    if longest == 0 or prediction == target:
        return 1.0
    return sum(map(operator.eq, prediction, target)) / longest  # C-level comparisons: a 20,000-row eval grades ~7M characters


def judge(a: int, b: int, c: int, target: str, prediction: str) -> dict:
    """Everything the quadratic metrics need about one prediction."""
    verdict = grade(a, b, c, prediction)
    return {
        "exact": prediction == target,
        "char_accuracy": character_accuracy(prediction, target),
        "roots_correct": verdict.answer_correct,
        "steps_valid": verdict.well_formed and verdict.steps_valid,
        "diagnosis": diagnose(target, prediction, verdict.answer_correct, verdict.false_statements if verdict.well_formed else None),
    }


def _summary(judged: list[dict]) -> dict:
    n = len(judged)
    if n == 0:
        return {"n": 0}
    return {
        "n": n,
        "full_solution_accuracy": sum(j["exact"] for j in judged) / n,
        "character_accuracy": sum(j["char_accuracy"] for j in judged) / n,
        "roots_accuracy": sum(j["roots_correct"] for j in judged) / n,
        "valid_steps_rate": sum(j["steps_valid"] for j in judged) / n,
    }


def quadratic_metrics(judged: list[dict], num_roots: list[int]) -> dict:
    """Overall and per root count (two, one, none)."""
    out = _summary(judged)
    out["by_num_roots"] = {
        name: _summary([j for j, k in zip(judged, num_roots) if k == count]) for count, name in ROOT_CLASSES.items()
    }
    return out


# ---------------------------------------------------------------------------------------------
# Diagnosis: which statement of a worked solution limits a model


def statements(solution: str) -> list[str]:
    solution = solution.removeprefix(REVERSED_MARK)  # the reversed format's mark is not a statement
    return [s for s in solution.split(";")[:-1]] if solution.endswith(";") else solution.split(";")


def _is_final(statement: str) -> bool:
    """`x=VALUE` or `x=none`: part of the final answer, not a formula."""
    value = statement[2:]
    return statement.startswith("x=") and (value == "none" or value.lstrip("-").isascii() and value.lstrip("-").isdigit())


def statement_names(target: str) -> list[str]:
    """A name for each statement of a reference solution, in order: its left side (`D`, `b^2`,
    `4*a*c`, `sqrt(D)`, `2*a`, ...), `x1` and `x2` for the root formulas, `answer` for the trailing
    run of `x=VALUE;` statements (the final answer, judged as one), and `NAME work K` for the K-th
    scratch statement (pure arithmetic, such as `18*2=36` in the long format) before statement NAME,
    so that names are the same for every equation."""
    parts = statements(target)
    final = len(parts)
    while final > 0 and _is_final(parts[final - 1]):
        final -= 1
    names, scratch, roots = [], [], 0
    for part in parts[:final]:
        name = part.split("=", 1)[0]
        if not re.search(r"[abcDx]", name):
            scratch.append(len(names))
            names.append(None)
            continue
        if name == "x":
            roots += 1
            name = f"x{roots}"
        for k, i in enumerate(scratch, 1):
            names[i] = f"{name} work {k}"
        scratch = []
        names.append(name)
    for k, i in enumerate(scratch, 1):
        names[i] = f"answer work {k}"
    return names + (["answer"] if final < len(parts) else [])


_PUBLISHED_ROOT = re.compile(r"x=\(-(?:\d+|\(-\d+\))-(\d+)\)/")


def diagnose(target: str, prediction: str, answer_correct: bool, false_statements: list | None = None) -> dict:
    """Which statements of `prediction` are right, in the order of the reference `target`, and the
    first that goes wrong (None when all are right). A statement is compared with the reference's
    statement at the same place, character for character, in two parts: `NAME: formula` (every side
    but the last: the formula written out with this equation's numbers) and `NAME: value` (the last
    side, the computed number). The final answer is right when the grader says so
    (`answer_correct`), whatever its order. In the published format the square root of D appears only
    inside the root formulas, so `sqrt(D)` is judged there: the number after `-B-` in x1's formula.

    `holds` says, for each statement but the answer, whether the prediction's statement at that
    place is a true equality, whatever its operands: a model that multiplies right what it copied
    wrong has learned the multiplication. It is given for well-formed predictions, from the
    grader's `false_statements` (numbers from 1), and empty when that is None."""
    names = statement_names(target)
    ref, pred = statements(target), statements(prediction)
    right = {}
    for i, name in enumerate(names):
        if name == "answer":
            right[name] = bool(answer_correct)
            continue
        want = ref[i].rsplit("=", 1)
        got = pred[i].rsplit("=", 1) if i < len(pred) else None
        right[f"{name}: formula"] = got is not None and got[0] == want[0]
        right[f"{name}: value"] = got is not None and len(got) == 2 and got[1] == want[1]
        if name == "D" and names[i + 1 : i + 2] == ["x1"]:  # published: sqrt(D) sits in x1's formula
            root = _PUBLISHED_ROOT.match(ref[i + 1])
            written = _PUBLISHED_ROOT.match(pred[i + 1]) if i + 1 < len(pred) else None
            if root:
                right["sqrt(D)"] = bool(written) and written.group(1) == root.group(1)
    first_wrong = next((name for name, ok in right.items() if not ok), None)
    holds = {}
    if false_statements is not None:
        false = set(false_statements)
        holds = {name: i < len(pred) and i + 1 not in false for i, name in enumerate(names) if name != "answer"}
    return {"statements": right, "first_wrong": first_wrong, "holds": holds}


def digits(n: int) -> int:
    """Decimal digits of |n| (1 for 0)."""
    return len(str(abs(n)))


def solution_order(sequences) -> list[str]:
    """Statement names in solution order across outputs whose scratch steps differ in number (one
    has more steps for D, another for x1): a name first met in a later output goes right after
    the name before it there."""
    order, seen = [], set()
    for names in sequences:
        previous = None
        for name in names:
            if name not in seen:
                order.insert(order.index(previous) + 1 if previous is not None else 0, name)
                seen.add(name)
            previous = name
    return order


def diagnosis(records: list[dict]) -> dict:
    """Per-statement accuracy, where outputs first go wrong, and accuracy by the size of the numbers
    (digits of |b|, |c|, |D|) and by root class, over records that carry `a, b, c, num_roots`,
    `exact`, `roots_correct`, `char_accuracy` and `diagnosis` (from `diagnose`)."""
    n = len(records)
    if n == 0:
        return {"n": 0}
    names = solution_order(r["diagnosis"]["statements"] for r in sorted(records, key=lambda r: -len(r["diagnosis"]["statements"])))

    def statement_accuracy(rows):
        # rows having each name, rows where it is right; counted by Counter's C loop over the names
        # (long formats have hundreds of names a row)
        having, right = Counter(), Counter()
        for r in rows:
            statements = r["diagnosis"]["statements"]
            having.update(statements.keys())
            right.update(compress(statements.keys(), statements.values()))
        return {name: {"n": having[name], "accuracy": right[name] / having[name]} for name in names if name in having}

    def group(key):
        groups = {}
        for r in records:
            groups.setdefault(key(r), []).append(r)
        return {str(k): {"n": len(rows), "full_solution_accuracy": sum(r["exact"] for r in rows) / len(rows),
                         "roots_accuracy": sum(r["roots_correct"] for r in rows) / len(rows),
                         "character_accuracy": sum(r["char_accuracy"] for r in rows) / len(rows),
                         "statements": statement_accuracy(rows)}
                for k, rows in sorted(groups.items())}

    first = Counter(r["diagnosis"]["first_wrong"] or "none wrong" for r in records)
    holds = {}
    for r in records:
        for name, ok in r["diagnosis"].get("holds", {}).items():
            holds.setdefault(name, []).append(ok)
    return {
        "n": n,
        "statement_accuracy": statement_accuracy(records),
        # over well-formed outputs: the statement is a true equality, whatever its operands
        "statement_holds": {name: {"n": len(holds[name]), "rate": sum(holds[name]) / len(holds[name])}
                            for name in dict.fromkeys(nm.split(": ")[0] for nm in names) if name in holds},
        "first_wrong": {name: first[name] / n for name in [*names, "none wrong"] if first[name]},
        "by_digits_of_b": group(lambda r: digits(r["b"])),
        "by_digits_of_c": group(lambda r: digits(r["c"])),
        "by_digits_of_D": group(lambda r: digits(r["b"] * r["b"] - 4 * r["a"] * r["c"])),
        "by_num_roots": group(lambda r: ROOT_CLASSES[r["num_roots"]]),
    }


# ---------------------------------------------------------------------------------------------
# SQuAD: the official v1.1 evaluation script's definitions (v2.0 adds HasAns / NoAns breakdowns)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse white space."""
    import re
    import string

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:  # v2.0: both empty (no answer) is a match
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], golds: dict[str, list[str]]) -> dict:
    """`exact_match` and `f1` in percent, the maximum over the gold answers of each question, averaged
    over questions; with `HasAns_*` and `NoAns_*` when some questions have no answer (v2.0)."""

    def scores(ids):
        em = f1 = 0.0
        for qid in ids:
            answers = golds[qid] or [""]
            pred = predictions.get(qid, "")
            em += max(exact_match(pred, a) for a in answers)
            f1 += max(f1_score(pred, a) for a in answers)
        n = max(len(ids), 1)
        return {"exact_match": 100 * em / n, "f1": 100 * f1 / n, "total": len(ids)}

    out = scores(list(golds))
    has, no = [q for q, a in golds.items() if a], [q for q, a in golds.items() if not a]
    if no:
        for prefix, ids in (("HasAns", has), ("NoAns", no)):
            part = scores(ids)
            out.update({f"{prefix}_exact": part["exact_match"], f"{prefix}_f1": part["f1"], f"{prefix}_total": part["total"]})
    return out


# ---------------------------------------------------------------------------------------------
# Sequence classification


def classification_metrics(gold: list[str], predicted: list[str], majority: str) -> dict:
    """Accuracy, macro-F1 (the mean F1 over the labels that occur in `gold` or `predicted`, as
    scikit-learn's f1_score(average="macro")), per-label precision, recall and F1, and the
    majority-class baseline: the accuracy of always answering `majority` (the training set's most
    frequent label)."""
    n = len(gold)
    by_label = {}
    for label in sorted(set(gold) | set(predicted)):
        hits = sum(g == p == label for g, p in zip(gold, predicted))
        said, real = predicted.count(label), gold.count(label)
        precision, recall = hits / said if said else 0.0, hits / real if real else 0.0
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        by_label[label] = {"n": real, "precision": precision, "recall": recall, "f1": f1}
    return {"n": n, "accuracy": sum(g == p for g, p in zip(gold, predicted)) / max(n, 1),
            "macro_f1": sum(m["f1"] for m in by_label.values()) / max(len(by_label), 1),
            "majority_class": majority, "majority_baseline": gold.count(majority) / max(n, 1), "by_label": by_label}
