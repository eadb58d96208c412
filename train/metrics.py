"""Metrics, one definition each, as in ../shared/GUIDE.md section 2."""

from __future__ import annotations

from gen.grader import grade

ROOT_CLASSES = {2: "two", 1: "one", 0: "none"}


def character_accuracy(prediction: str, target: str) -> float:
    """Positions i where pred[i] == target[i], over max(len(pred), len(target)); 1 if both empty."""
    longest = max(len(prediction), len(target))
    if longest == 0:
        return 1.0
    return sum(p == t for p, t in zip(prediction, target)) / longest


def judge(a: int, b: int, c: int, target: str, prediction: str) -> dict:
    """Everything the quadratic metrics need about one prediction."""
    verdict = grade(a, b, c, prediction)
    return {
        "exact": prediction == target,
        "char_accuracy": character_accuracy(prediction, target),
        "roots_correct": verdict.answer_correct,
        "steps_valid": verdict.well_formed and verdict.steps_valid,
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
    from collections import Counter

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
