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
