"""SQuAD data: reading v1.1 / v2.0 JSON, splitting by article, sliding-window features, and the
n-best post-processing of start/end logits. Kept apart from training, as in Hugging Face's
`examples/pytorch/question-answering` (`run_qa.py` / `utils_qa.py`), whose logic this follows."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gen import QuadlabError


@dataclass
class Skipped:
    """Examples left out, by reason, so that a run can say what it dropped."""

    counts: dict = field(default_factory=dict)

    def add(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def __str__(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in self.counts.items()) or "none"


def read_squad(path: Path) -> tuple[str, list[dict]]:
    """(version, articles) of an official-format file; a one-line error if it is not one."""
    path = Path(path)
    shape = "expected {'version', 'data': [{'title', 'paragraphs': [{'context', 'qas': [{'id', 'question', 'answers'}]}]}]}"
    if path.is_dir():
        raise QuadlabError(f"SQuAD file {path} is a directory; give a SQuAD v1.1/v2.0 JSON file such as dev-v1.1.json")
    try:
        text = path.read_bytes().decode("utf-8")
        raw = json.loads(text) if text.strip() else None
    except FileNotFoundError:
        raise QuadlabError(f"SQuAD file {path} does not exist") from None
    except (OSError, ValueError) as err:  # unreadable, not UTF-8, not JSON
        why = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}"
        raise QuadlabError(f"SQuAD file {path} cannot be read ({why})" if isinstance(err, OSError)
                           else f"SQuAD file {path} is not JSON ({why}); {shape}") from None
    if raw is None:
        raise QuadlabError(f"SQuAD file {path} is empty; {shape}")
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise QuadlabError(f"SQuAD file {path} has no 'data' list; {shape}")
    for a, article in enumerate(raw["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        for p, paragraph in enumerate(paragraphs if isinstance(paragraphs, list) else [None]):
            if not (isinstance(paragraph, dict) and isinstance(paragraph.get("context"), str) and isinstance(paragraph.get("qas"), list)):
                raise QuadlabError(f"SQuAD file {path}: article {a} paragraph {p} lacks 'context' (a string) or 'qas' (a list); {shape}")
            for q, qa in enumerate(paragraph["qas"]):
                missing = [k for k in ("id", "question", "answers") if not isinstance(qa, dict) or k not in qa]
                answers = qa.get("answers") if isinstance(qa, dict) else None
                # `type(...) is int`: isinstance takes true for 1; a string id, as in the official files
                if not missing and not (isinstance(qa["id"], str) and isinstance(qa["question"], str) and isinstance(answers, list) and all(
                        isinstance(x, dict) and isinstance(x.get("text"), str) and type(x.get("answer_start")) is int
                        and x["answer_start"] >= 0 for x in answers)):
                    missing = ["an 'id' string, a 'question' string or 'answers' of {'text': string, 'answer_start': integer >= 0}"]
                if missing:
                    raise QuadlabError(f"SQuAD file {path}: article {a} paragraph {p} question {q} lacks {', '.join(missing)}; {shape}")
    return str(raw.get("version", "1.1")), raw["data"]


def examples_from(articles: list[dict], skipped: Skipped) -> list[dict]:
    """One row per question: id, title, context, question, answers {text, answer_start}.
    Empty contexts and answers whose text is not at answer_start are skipped and counted."""
    rows = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                if not context.strip():
                    skipped.add("with an empty context")
                    continue
                answers = [a for a in qa["answers"] if not qa.get("is_impossible")]
                if any(context[a["answer_start"] : a["answer_start"] + len(a["text"])] != a["text"] for a in answers):
                    skipped.add("whose answer_start does not match the context")
                    continue
                rows.append({
                    "id": qa["id"], "title": article.get("title", ""), "context": context, "question": qa["question"].lstrip(),
                    "answers": {"text": [a["text"] for a in answers], "answer_start": [a["answer_start"] for a in answers]},
                })
    return rows


def split_by_article(articles: list[dict], eval_articles: int) -> tuple[list[dict], list[dict]]:
    """The first articles train, the last `eval_articles` evaluate (as GUIDE.md suggests: 38 / 10)."""
    if len(articles) < 2:
        raise QuadlabError(f"the training file has {len(articles)} article{'' if len(articles) == 1 else 's'}, and the evaluation set is "
                           f"split from it by article (at least one each); give a file of 2 or more articles, or an --eval-file")
    if not 0 < eval_articles < len(articles):
        raise QuadlabError(f"cannot keep {eval_articles} of {len(articles)} articles for evaluation; "
                           f"pass --set eval_articles=N from 1 to {len(articles) - 1}, or --eval-file")
    return articles[:-eval_articles], articles[-eval_articles:]


def _encode(tokenizer, rows: list[dict], max_length: int, stride: int, padding: str):
    pad_right = tokenizer.padding_side == "right"
    questions = [r["question"] for r in rows]
    contexts = [r["context"] for r in rows]
    return tokenizer(
        questions if pad_right else contexts, contexts if pad_right else questions,
        truncation="only_second" if pad_right else "only_first", max_length=max_length, stride=stride,
        return_overflowing_tokens=True, return_offsets_mapping=True, padding=padding,
    ), (1 if pad_right else 0)


def drop_long_questions(tokenizer, rows: list[dict], max_length: int, skipped: Skipped) -> list[dict]:
    """A question that leaves no room for context in `max_length` tokens cannot be answered."""
    if not rows:
        return []
    lengths = tokenizer([r["question"] for r in rows], add_special_tokens=False)["input_ids"]
    kept = []
    for row, ids in zip(rows, lengths):
        if len(ids) + 8 > max_length:
            skipped.add(f"whose question is longer than max_length {max_length} allows")
        else:
            kept.append(row)
    return kept


def train_features(tokenizer, rows: list[dict], max_length: int, stride: int, padding: str = "do_not_pad") -> list[dict]:
    """Windows over long contexts (`stride` tokens of overlap), each labelled with the answer's
    start and end tokens, or with the [CLS] position when the answer is not inside the window (or
    there is none)."""
    encoded, context_index = _encode(tokenizer, rows, max_length, stride, padding)
    features = []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        input_ids = encoded["input_ids"][i]
        cls = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        sequence_ids = encoded.sequence_ids(i)
        row = rows[encoded["overflow_to_sample_mapping"][i]]
        start = end = cls
        if row["answers"]["answer_start"]:
            char_start = row["answers"]["answer_start"][0]
            char_end = char_start + len(row["answers"]["text"][0])
            tokens = [t for t, s in enumerate(sequence_ids) if s == context_index]
            first, last = tokens[0], tokens[-1]
            if offsets[first][0] <= char_start and offsets[last][1] >= char_end:
                start = first
                while start <= last and offsets[start][0] <= char_start:
                    start += 1
                start -= 1
                end = last
                while end >= first and offsets[end][1] >= char_end:
                    end -= 1
                end += 1
        feature = {k: encoded[k][i] for k in encoded if k not in ("offset_mapping", "overflow_to_sample_mapping")}
        features.append({**feature, "start_positions": start, "end_positions": end})
    return features


def eval_features(tokenizer, rows: list[dict], max_length: int, stride: int, padding: str = "do_not_pad") -> list[dict]:
    """Windows as in training, each with its example id and the character offsets of its context
    tokens (None elsewhere), for post-processing."""
    encoded, context_index = _encode(tokenizer, rows, max_length, stride, padding)
    features = []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        sequence_ids = encoded.sequence_ids(i)
        feature = {k: encoded[k][i] for k in encoded if k not in ("offset_mapping", "overflow_to_sample_mapping")}
        feature["example_id"] = rows[encoded["overflow_to_sample_mapping"][i]]["id"]
        ids = encoded["input_ids"][i]
        feature["cls_index"] = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
        feature["offset_mapping"] = [o if s == context_index else None for o, s in zip(offsets, sequence_ids)]
        features.append(feature)
    return features


def postprocess(rows: list[dict], features: list[dict], start_logits, end_logits, n_best: int = 20, max_answer_length: int = 30,
                version_2: bool = False, null_threshold: float = 0.0) -> tuple[dict, dict]:
    """(predictions {id: text}, n-best {id: [{text, score}]}): the best span over all windows of an
    example, scored start + end logit, at most `max_answer_length` tokens; in v2.0 the empty answer
    wins when its score (the [CLS] start + end) beats the best span by more than `null_threshold`."""
    by_example: dict[str, list[int]] = {}
    for i, feature in enumerate(features):
        by_example.setdefault(feature["example_id"], []).append(i)
    predictions, nbest = {}, {}
    for row in rows:
        candidates, null_score = [], None
        for i in by_example.get(row["id"], []):
            starts, ends, offsets = np.asarray(start_logits[i]), np.asarray(end_logits[i]), features[i]["offset_mapping"]
            cls = features[i].get("cls_index", 0)
            score = float(starts[cls] + ends[cls])
            null_score = score if null_score is None else min(null_score, score)
            for s in np.argsort(starts)[-1 : -n_best - 1 : -1]:
                for e in np.argsort(ends)[-1 : -n_best - 1 : -1]:
                    if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    candidates.append({"text": row["context"][offsets[s][0] : offsets[e][1]], "score": float(starts[s] + ends[e])})
        candidates = sorted(candidates, key=lambda c: c["score"], reverse=True)[:n_best]
        best = candidates[0] if candidates else {"text": "", "score": float("-inf")}
        if version_2 and null_score is not None and null_score - best["score"] > null_threshold:
            predictions[row["id"]] = ""
        else:
            predictions[row["id"]] = best["text"]
        nbest[row["id"]] = candidates
    return predictions, nbest

