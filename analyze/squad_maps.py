"""The attention of a SQuAD run, on the shared path of `analyze.maps`: one question and context
(per-head grids, layer x token summaries), and averages over the evaluation set aligned by role:
[CLS], question, context, answer (the gold span), [SEP], punct. Also `cli.py ask`."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from analyze.attention import SQUAD_ROLES, AttentionAverage, capture, layer_token_summary, squad_roles
from gen import QuadlabError

ROLES = {"encoder": (SQUAD_ROLES, SQUAD_ROLES)}


def windows(tokenizer, rows: list[dict], max_length: int, stride: int, answers: list[tuple[int, int] | None]) -> list[dict]:
    """Question-context windows with their tokens and role indices."""
    encoded = tokenizer([r["question"] for r in rows], [r["context"] for r in rows], truncation="only_second", max_length=max_length,
                        stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    special = {"cls": tokenizer.cls_token, "sep": tokenizer.sep_token}
    out = []
    for i, ids in enumerate(encoded["input_ids"]):
        row = encoded["overflow_to_sample_mapping"][i]
        tokens = tokenizer.convert_ids_to_tokens(ids)
        roles = squad_roles(tokens, encoded.sequence_ids(i), encoded["offset_mapping"][i], answers[row], special)
        out.append({"row": row, "input_ids": ids, "attention_mask": encoded["attention_mask"][i],
                    "token_type_ids": encoded["token_type_ids"][i] if "token_type_ids" in encoded else None,
                    "tokens": tokens, "roles": [SQUAD_ROLES.index(r) for r in roles]})
    return out


def _tensors(batch: list[dict], pad_id: int, device) -> dict:
    width = max(len(w["input_ids"]) for w in batch)
    pad = lambda key, fill: torch.tensor([w[key] + [fill] * (width - len(w[key])) for w in batch], device=device)
    out = {"input_ids": pad("input_ids", pad_id), "attention_mask": pad("attention_mask", 0), "roles": pad("roles", -1)}
    if batch[0]["token_type_ids"] is not None:
        out["token_type_ids"] = pad("token_type_ids", 0)
    return out


def one_example(model, tokenizer, config, row: dict, name: str) -> dict:
    """The model's answer and the maps of the first window of one question and context."""
    from train.squad import predict
    from train.squad_data import eval_features

    predictions, nbest = predict(model, tokenizer, [row], eval_features(tokenizer, [row], config.max_length, config.stride), config, False)
    answer = predictions[row["id"]]
    start = row["context"].find(answer) if answer else -1
    span = (start, start + len(answer)) if start >= 0 else None
    window = windows(tokenizer, [row], config.max_length, config.stride, [span])[0]
    device = next(model.parameters()).device
    t = _tensors([window], tokenizer.pad_token_id, device)
    attention, _, _ = capture(model, t["input_ids"], t["attention_mask"], token_type_ids=t.get("token_type_ids"))["encoder"]
    n = len(window["tokens"])
    return {"name": name, "input": row["question"], "output": answer, "score": nbest[row["id"]][0]["score"] if nbest[row["id"]] else None,
            "tokens": {"encoder": window["tokens"]}, "roles": [SQUAD_ROLES[r] for r in window["roles"]],
            "maps": {"encoder": attention[:, 0, :, :n, :n].cpu().numpy()}, "summaries": {"encoder": layer_token_summary(attention[:, 0], n, n)}}


def material(run_dir: Path, limit: int, examples: list[int] | None, question: str | None, context: str | None,
             heads: list, batch_size: int, progress: bool) -> dict:
    from tqdm import tqdm

    from analyze.maps import check_heads
    from train.squad import load_data, load_run

    model, tokenizer, config = load_run(run_dir, "maps")
    if torch.cuda.is_available():
        model = model.to("cuda")
    check_heads(heads, {"encoder": model.config.num_hidden_layers}, model.config.num_attention_heads)
    rows = load_data(config)["eval"]
    if limit:
        rows = rows[:limit]
    chosen = [] if question else (examples if examples is not None else [0])
    for index in chosen:
        if not 0 <= index < len(rows):
            raise QuadlabError(f"example {index} is out of range: the evaluation set has {len(rows)} questions here")
    shown = [one_example(model, tokenizer, config, rows[i], str(i)) for i in chosen]
    if question:
        shown.append(one_example(model, tokenizer, config, _given(question, context, tokenizer, config), "given"))
    start = time.perf_counter()
    average = AttentionAverage(SQUAD_ROLES, SQUAD_ROLES)
    spans = [(r["answers"]["answer_start"][0], r["answers"]["answer_start"][0] + len(r["answers"]["text"][0])) if r["answers"]["text"] else None
             for r in rows]
    all_windows = sorted(windows(tokenizer, rows, config.max_length, config.stride, spans), key=lambda w: len(w["input_ids"]))
    device = next(model.parameters()).device
    for i in tqdm(range(0, len(all_windows), batch_size), desc="average", unit="batch", disable=None if progress else True):
        t = _tensors(all_windows[i : i + batch_size], tokenizer.pad_token_id, device)
        attention, q_mask, k_mask = capture(model, t["input_ids"], t["attention_mask"], token_type_ids=t.get("token_type_ids"))["encoder"]
        average.add(attention, q_mask, k_mask, t["roles"], t["roles"])
    return {"examples": shown, "averages": {"encoder": average}, "roles": ROLES, "split": "evaluation", "examples_averaged": len(rows),
            "average_seconds": round(time.perf_counter() - start, 2),
            "averaged_on": f"every window of {len(rows)} questions; answer = the first gold answer's tokens"}


def _given(question: str, context: str | None, tokenizer, config) -> dict:
    if not context or not context.strip():
        raise QuadlabError("the context is empty; give the passage to answer from with --context")
    if not question.strip():
        raise QuadlabError("the question is empty")
    if len(tokenizer(question, add_special_tokens=False)["input_ids"]) + 8 > config.max_length:
        raise QuadlabError(f"the question is longer than max_length {config.max_length} tokens allows; shorten it")
    return {"id": "given", "question": question, "context": context, "answers": {"text": [], "answer_start": []}}


def ask(run_dir: Path, question: str, context: str, out_dir: Path | None = None, heads: list | None = None) -> dict:
    """The answer, its score, and per layer the question token that receives the most attention
    from the answer span (mean over heads and answer tokens); writes the example's figures."""
    from analyze.maps import check_heads, write_example
    from train.squad import load_run

    run_dir = Path(run_dir)
    model, tokenizer, config = load_run(run_dir, "ask")
    heads = heads or []
    check_heads(heads, {"encoder": model.config.num_hidden_layers}, model.config.num_attention_heads)
    example = one_example(model, tokenizer, config, _given(question, context, tokenizer, config), "ask")
    roles, tokens, maps = example["roles"], example["tokens"]["encoder"], example["maps"]["encoder"]
    answer_idx = [i for i, r in enumerate(roles) if r == "answer"]
    question_idx = [i for i, r in enumerate(roles) if r == "question"]
    most = []
    if answer_idx and question_idx:
        received = maps[:, :, answer_idx][:, :, :, question_idx].mean(axis=(1, 2))  # (layers, question tokens)
        most = [f"{tokens[question_idx[int(np.argmax(r))]]} ({float(r.max()):.2f})" for r in received]
    out_dir = Path(out_dir or Path("figures") / run_dir.name / "ask")
    written = write_example(example, "ask", out_dir, heads)
    return {"answer": example["output"], "score": example["score"], "most_attended_question_token": most,
            "figures": [str(out_dir / w["file"]) for w in written]}
