"""`cli.py heads RUN_DIR`: head-level analysis of a run, quadratic or SQuAD, on the capture path of
`cli.py maps` (definitions: ../shared/GUIDE.md section 3; functions: analyze/head_stats.py; hooks:
analyze/interventions.py).

One streamed pass over `limit` rows of a split (teacher-forced on the reference solutions, as the
maps' averages) gives, per attention kind: head statistics, pattern types, Jensen-Shannon distances
between heads, the per-map features clustered with KMeans, the attention each role receives,
rollout (encoders), context-vector variance and the special-symbol shares. Head importance, the
symbol blocking and the accuracy of checkpoints decode `eval_limit` rows.

figures/<run>/heads/
    heads.json                everything below as numbers, with the settings and timings
    head-stats-<kind>.csv     one row per layer and head: statistics, type, role attention,
                              importance, gradient importance, context variance
    map-clusters-<kind>.csv   the make-up of each KMeans cluster of per-example maps
    heads.npz                 per-map features, JS distances, MDS coordinates, rollout averages
    *.png, *.svg              the figures; figures/<run>/index.html shows them
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from analyze import figures, head_stats, interventions
from analyze.attention import EQUATION_ROLES, KINDS, SOLUTION_ROLES, SQUAD_ROLES, AttentionAverage, capture
from gen import QuadlabError, swap_in

METRIC_TITLES = {"full_solution_accuracy": "full-solution accuracy", "roots_accuracy": "roots accuracy",
                 "character_accuracy": "character accuracy", "f1": "F1", "exact_match": "exact match"}


def _segments(starts: list[bool]) -> list[int]:
    """Segment index of each token, a new segment beginning where `starts` is True."""
    out, current = [], -1
    for i, start in enumerate(starts):
        current += 1 if (start or i == 0) else 0
        out.append(current)
    return out


def _pad(rows: list[list], width: int, fill) -> torch.Tensor:
    return torch.tensor([r + [fill] * (width - len(r)) for r in rows])


# ---------------------------------------------------------------------------------------------
# The two tasks: what the analysis needs from each


class QuadraticTask:
    """Equations and their reference solutions, teacher-forced; classes: two, one or no real roots.
    Segments (for the block template): the equation's terms (a new one at each sign and at `=`), the
    solution's steps (a new one after each `;`). Special symbols: x, ^, =."""

    name = "quadratic"
    batch_size = 64
    kinds = KINDS
    sides = {"encoder": ("encoder", "encoder"), "decoder": ("decoder", "decoder"), "cross": ("decoder", "encoder")}
    roles = {"encoder": EQUATION_ROLES, "decoder": SOLUTION_ROLES}
    symbols = ("x", "^", "=")
    metrics = ("full_solution_accuracy", "roots_accuracy", "character_accuracy")
    class_name = "number of real roots"

    def __init__(self, run_dir: Path, split: str, limit: int, eval_limit: int):
        from train.quadratic import load_run, load_splits

        self.model, self.tokenizer, self.config = load_run(run_dir, "heads")
        dataset = load_splits(self.config)[split]
        columns = dataset.select(range(min(max(limit, eval_limit), len(dataset)))).to_dict()
        self.rows = {k: v[:limit] for k, v in columns.items()}
        self.eval_rows = {k: v[:eval_limit] for k, v in columns.items()}
        self.split, self.n_rows, self.n_eval_rows = split, len(self.rows["equation"]), len(self.eval_rows["equation"])

    def load_model(self, path: Path):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM.from_pretrained(str(path), attn_implementation="eager")

    def batches(self, batch_size: int) -> list[dict]:
        from analyze.maps import teacher_forced_batch
        from train.metrics import ROOT_CLASSES

        rows = self.rows
        order = sorted(range(len(rows["equation"])), key=lambda i: len(rows["solution"][i]))
        out = []
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            b = teacher_forced_batch(self.tokenizer, [rows["equation"][i] for i in idx], [rows["solution"][i] for i in idx])
            enc_seg = [_segments([t in "+-=" and (j == 0 or toks[j - 1] != "^") for j, t in enumerate(toks)]) for toks in b["encoder_tokens"]]
            dec_seg = [_segments([j > 0 and toks[j - 1] == ";" for j in range(len(toks))]) for toks in b["decoder_tokens"]]
            out.append({
                "inputs": {k: b[k] for k in ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")},
                "labels": b["labels"],
                "roles": {"encoder": b["encoder_roles"], "decoder": b["decoder_roles"]},
                "segments": {"encoder": _pad(enc_seg, b["input_ids"].shape[1], -1), "decoder": _pad(dec_seg, b["decoder_input_ids"].shape[1], -1)},
                "classes": [ROOT_CLASSES[rows["num_roots"][i]] for i in idx],
                "tokens": {"encoder": b["encoder_tokens"], "decoder": b["decoder_tokens"]},
            })
        return out

    def gradient_batches(self, batch_size: int) -> list[dict]:
        return self.batches(batch_size)  # they carry the labels

    def query_masks(self, batch: dict) -> dict:
        i = batch["inputs"]
        return {"encoder": i["attention_mask"].bool(), "decoder": i["decoder_attention_mask"].bool(), "cross": i["decoder_attention_mask"].bool()}

    def row_losses(self, model, batch: dict) -> torch.Tensor:
        device = next(model.parameters()).device
        logits = model(**{k: v.to(device) for k, v in batch["inputs"].items()}).logits
        labels = batch["labels"].to(device)
        per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=-100, reduction="none")
        return per_token.sum(dim=1) / (labels != -100).sum(dim=1).clamp(min=1)

    def _encoded(self):
        tok = self.tokenizer
        ids = tok(self.eval_rows["equation"])["input_ids"]
        input_ids = _pad(ids, max(map(len, ids)), tok.pad_token_id)
        return input_ids, (input_ids != tok.pad_token_id).long()

    @torch.no_grad()
    def _generate(self, model, input_ids, mask, repeat: int, gates: dict, block: tuple | None = None, encoder_hidden=None) -> list[str]:
        """Greedy decoding of `repeat` copies of the rows, each copy with its own gates; the encoder's
        output is reused when given (the gates and blocks of the encoder are then already in it)."""
        from transformers.modeling_outputs import BaseModelOutput

        device = next(model.parameters()).device
        ids, mask = input_ids.repeat(repeat, 1).to(device), mask.repeat(repeat, 1).to(device)
        block_layers, block_keys = block if block else ({}, None)
        block_keys = block_keys.repeat(repeat, 1).to(device) if block_keys is not None else None
        if encoder_hidden is None:
            with interventions.gated(model, {k: v for k, v in gates.items() if k == "encoder"}), \
                    interventions.blocked(model, {k: v for k, v in block_layers.items() if k == "encoder"}, block_keys):
                encoder_hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        else:
            encoder_hidden = encoder_hidden.repeat(repeat, 1, 1)
        with interventions.gated(model, {k: v for k, v in gates.items() if k != "encoder"}), \
                interventions.blocked(model, {k: v for k, v in block_layers.items() if k != "encoder"}, block_keys):
            generated = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden), attention_mask=mask,
                                       do_sample=False, num_beams=1, cache_implementation="static")
        return self.tokenizer.batch_decode(generated, skip_special_tokens=True)

    def _metrics(self, predictions: list[str]) -> dict:
        from train.metrics import judge, quadratic_metrics

        r = self.eval_rows
        judged = [judge(a, b, c, t, p) for a, b, c, t, p in zip(r["a"], r["b"], r["c"], r["solution"], predictions)]
        return {k: v for k, v in quadratic_metrics(judged, r["num_roots"]).items() if k in self.metrics}

    def evaluate(self, model, block: tuple | None = None) -> dict:
        input_ids, mask = self._encoded()
        return self._metrics(self._generate(model, input_ids, mask, 1, {}, block))

    def ablate(self, model, specs: list, batch_rows: int, progress: bool) -> list[dict]:
        """Metrics with each spec's head ((kind, layer, head), or None for none) ablated. Several
        ablations share one generate call (each copy of the rows has its own gates); ablations in
        the decoder and cross-attention reuse one encoder pass."""
        from tqdm import tqdm

        model.eval()
        input_ids, mask = self._encoded()
        n = len(input_ids)
        per_call = max(1, batch_rows // max(n, 1))
        layout = interventions.shape(model)
        device = next(model.parameters()).device
        with torch.no_grad():
            encoder_hidden = model.get_encoder()(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        groups = []
        for side in ("encoder", "decoder"):
            chosen = [i for i, s in enumerate(specs) if (s is not None and s[0] == "encoder") == (side == "encoder")]
            groups += [(side, chosen[i : i + per_call]) for i in range(0, len(chosen), per_call)]
        results: list = [None] * len(specs)
        for side, group in tqdm(groups, desc="ablate", unit="call", disable=None if progress else True):
            gates = {kind: torch.ones(len(group) * n, *layout[kind], device=device) for kind in layout}
            for copy, index in enumerate(group):
                if specs[index] is not None:
                    kind, layer, head = specs[index]
                    gates[kind][copy * n : (copy + 1) * n, layer, head] = 0
            texts = self._generate(model, input_ids, mask, len(group), gates, encoder_hidden=None if side == "encoder" else encoder_hidden)
            for copy, index in enumerate(group):
                results[index] = self._metrics(texts[copy * n : (copy + 1) * n])
        return results

    def blocking(self, model, peaks: dict, seed: int) -> dict:
        """Accuracy with attention to the equation's x, ^ and = blocked in the layers where their
        share peaks (encoder self-attention, cross-attention, both), and a control that blocks as
        many of the equation's digits, chosen at random, in the same layers."""
        from analyze.attention import equation_roles

        tokens = [self.tokenizer.convert_ids_to_tokens(ids) for ids in self.tokenizer(self.eval_rows["equation"])["input_ids"]]
        input_ids, _ = self._encoded()
        symbols = torch.zeros(input_ids.shape, dtype=torch.bool)
        control = torch.zeros(input_ids.shape, dtype=torch.bool)
        rng = random.Random(seed)
        for row, toks in enumerate(tokens):
            roles = equation_roles(toks)
            marked = [j for j, r in enumerate(roles) if r in self.symbols]
            digits = [j for j, t in enumerate(toks) if t.isdigit()]
            symbols[row, marked] = True
            control[row, rng.sample(digits, min(len(marked), len(digits)))] = True
        conditions = {"encoder": {"encoder": [peaks["encoder"]]}, "cross": {"cross": [peaks["cross"]]},
                      "both": {"encoder": [peaks["encoder"]], "cross": [peaks["cross"]]}}
        out = {"layers": peaks}
        for name, layers in conditions.items():
            out[f"symbols blocked ({name})"] = self.evaluate(model, (layers, symbols))
        out["control: as many digits blocked (both)"] = self.evaluate(model, (conditions["both"], control))
        return out


class SquadTask:
    """Question-context windows of the evaluation set; classes: the question's wh-word. Segments:
    [CLS], the question, each [SEP], each sentence of the context. Special symbols: [CLS], [SEP] and
    punctuation (Clark et al. 2019's finding for BERT)."""

    name = "squad"
    batch_size = 8  # a 384-token window of a 6-layer, 12-head encoder has 42 MB of attention maps, and JS pairs them
    kinds = ("encoder",)
    sides = {"encoder": ("encoder", "encoder")}
    roles = {"encoder": SQUAD_ROLES}
    symbols = ("[CLS]", "[SEP]", "punct")
    metrics = ("f1", "exact_match")
    class_name = "question type"
    WH = ("what", "who", "when", "where", "which", "why", "how")

    def __init__(self, run_dir: Path, split: str, limit: int, eval_limit: int):
        from train.squad import load_data, load_run
        from train.squad_data import drop_long_questions

        self.model, self.tokenizer, self.config = load_run(run_dir, "heads")
        data = load_data(self.config)
        self.version_2 = data["version_2"]
        self.rows = drop_long_questions(self.tokenizer, data["eval"][: limit or None], self.config.max_length, data["skipped"])
        self.eval_rows = drop_long_questions(self.tokenizer, data["eval"][: eval_limit or None], self.config.max_length, data["skipped"])
        self.split, self.n_rows, self.n_eval_rows = "evaluation", len(self.rows), len(self.eval_rows)

    def load_model(self, path: Path):
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering.from_pretrained(str(path), attn_implementation="eager")

    def question_type(self, question: str) -> str:
        words = question.lower().replace("?", " ").split()
        return next((w for w in words if w in self.WH), "other")

    def batches(self, batch_size: int) -> list[dict]:
        from analyze.squad_maps import _tensors, windows

        spans = [(r["answers"]["answer_start"][0], r["answers"]["answer_start"][0] + len(r["answers"]["text"][0])) if r["answers"]["text"] else None
                 for r in self.rows]
        found = sorted(windows(self.tokenizer, self.rows, self.config.max_length, self.config.stride, spans), key=lambda w: len(w["input_ids"]))
        out = []
        for start in range(0, len(found), batch_size):
            chunk = found[start : start + batch_size]
            t = _tensors(chunk, self.tokenizer.pad_token_id, "cpu")
            segments = []
            for w in chunk:
                roles = [SQUAD_ROLES[r] for r in w["roles"]]
                starts = [j == 0 or roles[j] in ("[CLS]", "[SEP]") or roles[j - 1] in ("[CLS]", "[SEP]")
                          or (roles[j - 1] != "question") != (roles[j] != "question") or w["tokens"][j - 1] in (".", "?", "!")
                          for j in range(len(roles))]
                segments.append(_segments(starts))
            inputs = {k: t[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in t}
            out.append({"inputs": inputs, "roles": {"encoder": t["roles"]}, "segments": {"encoder": _pad(segments, t["input_ids"].shape[1], -1)},
                        "classes": [self.question_type(self.rows[w["row"]]["question"]) for w in chunk],
                        "tokens": {"encoder": [w["tokens"] for w in chunk]}})
        return out

    def query_masks(self, batch: dict) -> dict:
        return {"encoder": batch["inputs"]["attention_mask"].bool()}

    def gradient_batches(self, batch_size: int) -> list[dict]:
        from train.squad import collator
        from train.squad_data import train_features

        features = train_features(self.tokenizer, self.rows, self.config.max_length, self.config.stride, "do_not_pad")
        collate = collator(self.tokenizer.pad_token_id)
        return [{"inputs": collate(features[i : i + batch_size])} for i in range(0, len(features), batch_size)]

    def row_losses(self, model, batch: dict) -> torch.Tensor:
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in batch["inputs"].items()}
        starts, ends = inputs.pop("start_positions"), inputs.pop("end_positions")
        out = model(**inputs)
        loss = torch.nn.functional.cross_entropy
        return (loss(out.start_logits.float(), starts, reduction="none") + loss(out.end_logits.float(), ends, reduction="none")) / 2

    def evaluate(self, model, gates: dict | None = None) -> dict:
        from train.metrics import squad_metrics
        from train.squad import predict
        from train.squad_data import eval_features

        features = eval_features(self.tokenizer, self.eval_rows, self.config.max_length, self.config.stride, self.config.padding)
        with interventions.gated(model, gates or {}):
            predictions, _ = predict(model, self.tokenizer, self.eval_rows, features, self.config, self.version_2)
        metrics = squad_metrics(predictions, {r["id"]: r["answers"]["text"] for r in self.eval_rows})
        return {k: metrics[k] / 100 for k in self.metrics}  # shares, like the quadratic metrics

    def ablate(self, model, specs: list, batch_rows: int, progress: bool) -> list[dict]:
        """One batched evaluation of every window per ablated head (an encoder has no pass to reuse)."""
        from tqdm import tqdm

        layout = interventions.shape(model)
        device = next(model.parameters()).device
        out = []
        for spec in tqdm(specs, desc="ablate", unit="head", disable=None if progress else True):
            gates = {}
            if spec is not None:
                kind, layer, head = spec
                gates[kind] = torch.ones(1, *layout[kind], device=device)
                gates[kind][0, layer, head] = 0
            out.append(self.evaluate(model, gates))
        return out


# ---------------------------------------------------------------------------------------------
# The analysis


def stream(task, model, batches: list[dict], progress: bool, with_attention: bool = True) -> dict:
    """One pass over the batches: per kind the per-map features, role averages, JS sums, symbol
    shares, rollout (encoder) and the context-vector variance."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    variance = interventions.ContextVariance(model)
    found = {kind: {"features": [], "queries": [], "js": None, "js_queries": 0, "shares": {}, "baselines": {},
                    "average": AttentionAverage(task.roles[task.sides[kind][0]], task.roles[task.sides[kind][1]])} for kind in task.kinds}
    rollout_average = AttentionAverage(task.roles["encoder"], task.roles["encoder"])
    classes, first_example = [], None
    with variance:
        for batch in tqdm(batches, desc="heads", unit="batch", disable=None if progress else True):
            variance.query_masks = task.query_masks(batch)
            inputs = {k: v.to(device) for k, v in batch["inputs"].items()}
            if not with_attention:
                with torch.no_grad():
                    model(**inputs)
                continue
            captured = capture(model, **inputs)
            classes += batch["classes"]
            for kind, (attention, q_mask, k_mask) in captured.items():
                q_side, k_side = task.sides[kind]
                q_roles, k_roles = batch["roles"][q_side].to(device), batch["roles"][k_side].to(device)
                f = found[kind]
                f["features"].append(head_stats.map_features(attention, q_mask, k_mask, batch["segments"][k_side].to(device),
                                                             positional=kind != "cross", causal=kind == "decoder").permute(1, 0, 2, 3).cpu())
                f["queries"].append(q_mask.sum(dim=1).cpu())
                f["average"].add(attention, q_mask, k_mask, q_roles, k_roles)
                js = head_stats.js_divergence_sums(attention, q_mask)
                f["js"] = js if f["js"] is None else f["js"] + js
                f["js_queries"] += int(q_mask.sum())
                key_roles = task.roles[k_side]
                sets = {s: [key_roles.index(s)] for s in task.symbols if s in key_roles}
                sets["all"] = [i for v in sets.values() for i in v]
                for name, indices in sets.items():
                    keys = torch.isin(k_roles, torch.tensor(indices, device=device))
                    share, baseline = head_stats.symbol_share(attention, q_mask, k_mask, keys, causal=kind == "decoder")
                    f["shares"].setdefault(name, []).append(share.T.cpu())
                    f["baselines"].setdefault(name, []).append(baseline.cpu())
                if kind == "encoder":
                    r = head_stats.rollout(attention, k_mask)
                    rollout_average.add(r[:, :, None], q_mask, k_mask, q_roles, k_roles)
                    if first_example is None:
                        n = int(k_mask[0].sum())
                        first_example = {"tokens": batch["tokens"]["encoder"][0][:n], "rollout": r[:, 0, :n, :n].cpu().numpy()}
    if not with_attention:
        return {"variance": variance.result()}
    out = {"classes": classes, "variance": variance.result(), "rollout_average": rollout_average, "rollout_example": first_example}
    for kind, f in found.items():
        out[kind] = {"features": torch.cat(f["features"]).numpy(), "queries": torch.cat(f["queries"]).numpy(),
                     "js": (f["js"] / max(f["js_queries"], 1)).cpu().numpy(), "average": f["average"],
                     "shares": {k: torch.cat(v).numpy() for k, v in f["shares"].items()},
                     "baselines": {k: torch.cat(v).numpy() for k, v in f["baselines"].items()}}
    return out


def head_table(features: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(L, H, F): each head's statistics over the split, every query weighted alike."""
    w = queries.astype(np.float64)[:, None, None, None]
    return (features * w).sum(axis=0) / max(float(queries.sum()), 1.0)


def gradient_importance(task, model, batches: list[dict], progress: bool) -> dict:
    """E|dL/dxi| per head: every row has its own gates, so one backward pass gives each example's
    gradient (row b's loss depends only on row b's gates)."""
    from tqdm import tqdm

    layout = interventions.shape(model)
    device = next(model.parameters()).device
    sums = {kind: torch.zeros(shape, dtype=torch.float64) for kind, shape in layout.items()}
    rows = 0
    model.eval()
    for batch in tqdm(batches, desc="gradients", unit="batch", disable=None if progress else True):
        n = batch["inputs"]["input_ids"].shape[0]
        gates = {kind: torch.ones(n, *shape, device=device, requires_grad=True) for kind, shape in layout.items()}
        with interventions.gated(model, gates):
            losses = task.row_losses(model, batch)
        grads = torch.autograd.grad(losses.sum(), list(gates.values()))
        for kind, g in zip(gates, grads):
            sums[kind] += g.abs().sum(dim=0).double().cpu()
        rows += n
    return {kind: (s / max(rows, 1)).numpy() for kind, s in sums.items()}


def cluster_heads(js: np.ndarray, seed: int) -> dict:
    """MDS coordinates of the heads from their JS distances, and an average-linkage clustering on the
    same distances with the number of clusters (2..8) of the best silhouette."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.manifold import MDS
    from sklearn.metrics import silhouette_score

    d = (js + js.T) / 2
    np.fill_diagonal(d, 0)
    p = len(d)
    coords = MDS(n_components=2, metric="precomputed", init="random", n_init=4, random_state=seed).fit_transform(d) if p > 2 else np.zeros((p, 2))
    best = (np.zeros(p, dtype=int), float("-inf"))  # one cluster when there are too few heads to compare
    for k in range(2, min(8, p - 1) + 1):
        labels = AgglomerativeClustering(n_clusters=k, metric="precomputed", linkage="average").fit_predict(d)
        score = silhouette_score(d, labels, metric="precomputed")
        if score > best[1]:
            best = (labels, float(score))
    if best[1] == float("-inf"):
        best = (best[0], float("nan"))
    return {"coords": coords, "labels": best[0], "silhouette": best[1]}


def cluster_maps(features: np.ndarray, classes: list[str], clusters: int, seed: int) -> dict:
    """KMeans on the standardised features of every per-example map (B, L, H, F); `clusters` 0
    picks 2..8 by silhouette (on at most 3000 maps). Make-up of each cluster by layer, head, class."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    b, layers, heads, f = features.shape
    usable = [i for i in range(f) if not np.isnan(features[..., i]).any()]
    x = StandardScaler().fit_transform(features[..., usable].reshape(-1, len(usable)))
    layer_of = np.broadcast_to(np.arange(layers)[None, :, None], (b, layers, heads)).reshape(-1)
    head_of = np.broadcast_to(np.arange(heads)[None, None, :], (b, layers, heads)).reshape(-1)
    class_of = np.broadcast_to(np.array(classes, dtype=object)[:, None, None], (b, layers, heads)).reshape(-1)
    candidates = [min(clusters, len(x))] if clusters else (list(range(2, min(8, len(x) - 1) + 1)) or [1])
    best = None
    for k in candidates:
        model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
        score = silhouette_score(x, model.labels_, sample_size=min(3000, len(x)), random_state=seed) if k > 1 and len(x) > k else float("nan")
        if best is None or score > best[1]:
            best = (model.labels_, float(score), k)
    labels, score, k = best
    raw = features.reshape(-1, f)
    makeup = []
    for c in range(k):
        members = labels == c
        centre = np.full(f, np.nan)
        centre[usable] = raw[members][:, usable].mean(axis=0)
        makeup.append({
            "cluster": c, "maps": int(members.sum()), "type": head_stats.PATTERNS[int(head_stats.classify(centre[None])[0])],
            "by_layer": {int(l): int((layer_of[members] == l).sum()) for l in range(layers)},
            "by_head": {f"{l}.{h}": int(((layer_of == l) & (head_of == h) & members).sum()) for l in range(layers) for h in range(heads)},
            "by_class": {str(cl): int((class_of[members] == cl).sum()) for cl in sorted(set(classes))},
            "centre": {name: float(v) for name, v in zip(head_stats.FEATURES, centre)},
        })
    return {"k": k, "silhouette": score, "clusters": makeup, "labels": labels.reshape(b, layers, heads)}


def symbol_test(shares: dict, baselines: dict) -> dict:
    """Per symbol set and layer: the mean share of attention with its 95% CI over examples, the
    uniform baseline, and the excess (share - baseline) with its CI."""
    out = {}
    for name, share in shares.items():
        rows = []
        for layer in range(share.shape[1]):
            mean, lo, hi = head_stats.mean_ci(share[:, layer])
            excess, elo, ehi = head_stats.mean_ci(share[:, layer] - baselines[name])
            rows.append({"layer": layer, "share": mean, "ci": [lo, hi], "baseline": float(baselines[name].mean()),
                         "excess": excess, "excess_ci": [elo, ehi]})
        out[name] = rows
    return out


def _checkpoint_points(task, run_dir: Path, compare: list[Path], batches: list[dict], progress: bool) -> list[dict]:
    """Context variance and accuracy of each model: the checkpoints kept in run_dir/checkpoints/
    (or, with `compare`, the final models of run_dir and the compared runs)."""
    from tqdm import tqdm

    if compare:
        models = [(str(run_dir), run_dir)] + [(str(p), p) for p in compare]
    else:
        found = sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        models = [(p.name, p) for p in found if (p / "model.safetensors").exists()]
    points = []
    device = next(task.model.parameters()).device
    for name, path in tqdm(models, desc="checkpoints", unit="model", disable=None if progress else True):
        try:
            model = task.load_model(path).to(device)
        except Exception as err:
            raise QuadlabError(f"cannot load the model in {path}: {type(err).__name__}") from None
        model.eval()
        variance = stream(task, model, batches, False, with_attention=False)["variance"]
        points.append({"model": name, "metrics": task.evaluate(model),
                       "variance": {kind: {"layer": v["layer"].tolist(), "head": v["head"].tolist(), "mean": float(v["layer"].mean())}
                                    for kind, v in variance.items()}})
    return points


def correlations(task, points: list[dict]) -> dict:
    """Pearson r (and p) between each kind's mean layer variance (and each layer's) and each metric."""
    out = {}
    for kind in task.kinds:
        for metric in task.metrics:
            y = [p["metrics"][metric] for p in points]
            out[f"{kind}/{metric}"] = head_stats.pearson([p["variance"][kind]["mean"] for p in points], y)
            layers = len(points[0]["variance"][kind]["layer"]) if points else 0
            for layer in range(layers):
                out[f"{kind}/layer {layer}/{metric}"] = head_stats.pearson([p["variance"][kind]["layer"][layer] for p in points], y)
    return out


def analyze_heads(run_dir: Path, out_dir: Path | None = None, split: str = "test", limit: int = 1000, eval_limit: int = 300,
                  batch_size: int | None = None, clusters: int = 0, compare: list[Path] | None = None, skip_importance: bool = False,
                  progress: bool = True) -> dict:
    from train.runs import open_run, read_config

    run_dir = Path(run_dir)
    config = open_run(run_dir, "heads")
    compare = [Path(p) for p in compare or []]
    for other in compare:
        theirs = other / "tokenizer.json"
        try:
            if read_config(other).task == config.task and theirs.is_file() and theirs.read_bytes() != (run_dir / "tokenizer.json").read_bytes():
                raise QuadlabError(f"{other} has another tokenizer than {run_dir}; compare runs of the same task and vocabulary")
            open_run(other, "heads --compare", task=config.task)
        except QuadlabError as err:
            raise QuadlabError(f"--compare {other}: {err}") from None
    task = (SquadTask if config.task == "squad" else QuadraticTask)(run_dir, split, limit, eval_limit)
    batch_size = batch_size or task.batch_size
    model = task.model
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    if not task.n_rows:
        raise QuadlabError(f"no rows to analyse in the {task.split} split")
    interventions.sites(model)  # a model the hooks do not know fails here, before any work
    timings = {}
    clock = time.perf_counter()
    batches = task.batches(batch_size)
    found = stream(task, model, batches, progress)
    timings["statistics pass"] = time.perf_counter() - clock
    layout = interventions.shape(model)
    result = {"run": str(run_dir), "task": task.name, "split": task.split, "rows": task.n_rows, "maps_examples": len(found["classes"]),
              "eval_rows": task.n_eval_rows,
              "layout": {k: list(v) for k, v in layout.items()}, "thresholds": {k: list(v) for k, v in head_stats.THRESHOLDS.items()},
              "band": head_stats.BAND, "vertical_keys": head_stats.VERTICAL_KEYS, "kinds": {}}
    arrays = {}
    for kind in task.kinds:
        f = found[kind]
        table = head_table(f["features"], f["queries"])
        types = head_stats.classify(table)
        map_types = head_stats.classify(f["features"])
        clock = time.perf_counter()
        heads_clustered = cluster_heads(f["js"], config.seed)
        maps_clustered = cluster_maps(f["features"], found["classes"], clusters, config.seed)
        timings[f"clustering {kind}"] = time.perf_counter() - clock
        avg = f["average"]
        key_roles = task.roles[task.sides[kind][1]]
        result["kinds"][kind] = {
            "statistics": {name: table[..., i].tolist() for i, name in enumerate(head_stats.FEATURES)},
            "types": [[head_stats.PATTERNS[t] for t in row] for row in types],
            "type_counts_per_layer": [{p: int((types[l] == i).sum()) for i, p in enumerate(head_stats.PATTERNS)} for l in range(len(types))],
            "map_type_shares": [[{p: float((map_types[:, l, h] == i).mean()) for i, p in enumerate(head_stats.PATTERNS)}
                                 for h in range(types.shape[1])] for l in range(types.shape[0])],
            "role_attention": {r: avg.role_share[:, :, i].tolist() for i, r in enumerate(key_roles) if avg.key_role_baseline[i] > 0},
            "role_key_share": {r: float(avg.key_role_baseline[i]) for i, r in enumerate(key_roles) if avg.key_role_baseline[i] > 0},
            "head_clusters": {"labels": heads_clustered["labels"].tolist(), "silhouette": heads_clustered["silhouette"]},
            "map_clusters": {k: v for k, v in maps_clustered.items() if k != "labels"},
            "context_variance": {k: v.tolist() for k, v in found["variance"][kind].items()},
            "symbols": symbol_test(f["shares"], f["baselines"]),
        }
        arrays[f"{kind}/map-features"] = f["features"].astype(np.float32)
        arrays[f"{kind}/js-distance"] = f["js"].astype(np.float32)
        arrays[f"{kind}/mds"] = heads_clustered["coords"].astype(np.float32)
        arrays[f"{kind}/map-clusters"] = maps_clustered["labels"].astype(np.int16)
    if "encoder" in task.kinds:
        ra = found["rollout_average"]
        arrays["rollout/position"] = ra.position_mean[:, 0].astype(np.float32)
        arrays["rollout/roles"] = ra.role_mean[:, 0].astype(np.float32)
        if found["rollout_example"]:
            arrays["rollout/example"] = found["rollout_example"]["rollout"].astype(np.float32)
    if not skip_importance:
        clock = time.perf_counter()
        specs = [None] + [(kind, l, h) for kind in task.kinds for l in range(layout[kind][0]) for h in range(layout[kind][1])]
        # rows per generate call: on 2 CPU cores 2,400 (8 copies of 300 rows) ran 1.5x faster than one
        # ablation per call, and 7,500 no faster (bench/bench_heads.py)
        ablations = task.ablate(model, specs, batch_rows=8192 if torch.cuda.is_available() else 2400, progress=progress)
        timings["ablation"] = time.perf_counter() - clock
        base = ablations[0]
        result["baseline_metrics"] = base
        clock = time.perf_counter()
        gradients = gradient_importance(task, model, task.gradient_batches(batch_size), progress)
        timings["gradient importance"] = time.perf_counter() - clock
        ranked = []
        for spec, metrics in zip(specs[1:], ablations[1:]):
            kind, l, h = spec
            drop = {m: base[m] - metrics[m] for m in task.metrics}
            ranked.append({"kind": kind, "layer": l, "head": h, "drop": drop, "ablated": metrics, "gradient": float(gradients[kind][l, h])})
        ranked.sort(key=lambda r: tuple(-r["drop"][m] for m in task.metrics) + (-r["gradient"],))
        result["importance"] = ranked
        for kind in task.kinds:
            result["kinds"][kind]["gradient_importance"] = gradients[kind].tolist()
        if task.name == "quadratic":
            peaks = {kind: int(np.argmax([row["excess"] for row in result["kinds"][kind]["symbols"]["all"]])) for kind in ("encoder", "cross")}
            clock = time.perf_counter()
            result["symbol_blocking"] = {"baseline": base, **task.blocking(model, peaks, config.seed)}
            timings["symbol blocking"] = time.perf_counter() - clock
    clock = time.perf_counter()
    points = _checkpoint_points(task, run_dir, compare, batches, progress)
    result["context_points"] = points
    result["context_correlation"] = correlations(task, points) if points else {}
    result["context_note"] = (f"{len(points)} {'runs' if compare else 'checkpoints'}" if points else
                              "no checkpoints in this run: train with --keep-checkpoints, or pass --compare RUN_DIR")
    timings["checkpoints"] = time.perf_counter() - clock
    result["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    return _write(task, result, arrays, found, run_dir, Path(out_dir or Path("figures") / run_dir.name))


# ---------------------------------------------------------------------------------------------
# Writing: tables, figures, report


def _write(task, result: dict, arrays: dict, found: dict, run_dir: Path, out_root: Path) -> dict:
    from analyze.report import write_report

    final = out_root / "heads"
    tmp = out_root / f".heads.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        written = []
        for kind in task.kinds:
            written += _kind_outputs(task, kind, result, arrays, tmp)
        if "encoder" in task.kinds:
            written += _rollout_figures(task, found, tmp)
        if result["context_points"]:
            files = figures.context_scatter(result["context_points"], task.kinds, task.metrics, result["context_correlation"],
                                            "Context-vector variance against accuracy", tmp / "context-variance-accuracy")
            written.append({"file": f"heads/{files[0]}", "svg": f"heads/{files[1]}", "what": "context variance"})
        result["figures"] = written
        np.savez_compressed(tmp / "heads.npz", **arrays)
        (tmp / "heads.json").write_text(json.dumps(_finite(result), indent=1) + "\n")
        swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_report(out_root)
    return {"out_dir": str(final), **result}


def _finite(value):
    """JSON has no NaN: undefined numbers become null."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _kind_outputs(task, kind: str, result: dict, arrays: dict, folder: Path) -> list[dict]:
    r = result["kinds"][kind]
    title = figures.KIND_TITLES[kind]
    written = []

    def add(files, what):
        written.append({"file": f"heads/{files[0]}", "svg": f"heads/{files[1]}", "kind": kind, "what": what})

    stats = {name: np.array(v) for name, v in r["statistics"].items()}
    panels = {"entropy / uniform entropy": stats["entropy"] / np.maximum(stats["uniform_entropy"], 1e-12), "confidence": stats["confidence"]}
    if kind != "cross":
        panels |= {"to previous token": stats["previous"], "to same token": stats["same"], "to next token": stats["next"],
                   "mean distance (tokens)": stats["distance"]}
    add(figures.layer_head_panels(panels, f"{title}: head statistics over {result['maps_examples']} examples", folder / f"{kind}-statistics"),
        "head statistics")
    roles = {f"to {role} (keys: {r['role_key_share'][role]:.2f})": np.array(v) for role, v in r["role_attention"].items()}
    add(figures.layer_head_panels(roles, f"{title}: share of attention each key role receives", folder / f"{kind}-role-attention"),
        "head statistics")
    types = np.array([[head_stats.PATTERNS.index(t) for t in row] for row in r["types"]])
    add(figures.pattern_types(types, head_stats.PATTERNS, f"{title}: pattern type of every head", folder / f"{kind}-pattern-types"), "pattern types")
    add(figures.head_mds(arrays[f"{kind}/mds"], np.array(r["head_clusters"]["labels"]), types.shape,
                         f"{title}: heads by Jensen-Shannon distance (MDS)", folder / f"{kind}-head-mds"), "clustering")
    add(figures.cluster_makeup(r["map_clusters"]["clusters"], task.class_name, f"{title}: KMeans clusters of per-example maps",
                               folder / f"{kind}-map-clusters"), "clustering")
    if "importance" in result:
        panels = {}
        for metric in task.metrics:
            drop = np.zeros(types.shape)
            for item in result["importance"]:
                if item["kind"] == kind:
                    drop[item["layer"], item["head"]] = item["drop"][metric]
            panels[f"drop in {METRIC_TITLES[metric]}"] = drop
        panels["gradient importance E|dL/dxi|"] = np.array(r["gradient_importance"])
        add(figures.layer_head_panels(panels, f"{title}: head importance (ablation drop on {result['eval_rows']} rows, gradient)",
                                      folder / f"{kind}-importance", diverging=True), "head importance")
    add(figures.layer_head_panels({"head context variance": np.array(r["context_variance"]["head"])},
                                  f"{title}: variance of each head's context vectors", folder / f"{kind}-context-variance"), "context variance")
    add(figures.symbol_shares(r["symbols"], f"{title}: attention received by special symbols, mean and 95% CI over examples",
                              folder / f"{kind}-symbols"), "special symbols")
    with open(folder / f"head-stats-{kind}.csv", "w", newline="") as out:
        w = csv.writer(out)
        role_names = list(r["role_attention"])
        extra = ["gradient_importance"] if "gradient_importance" in r else []
        drops = [f"drop_{m}" for m in task.metrics] if "importance" in result else []
        w.writerow(["layer", "head", *head_stats.FEATURES, "entropy_ratio", "type", *[f"to_{x}" for x in role_names], *drops, *extra, "context_variance"])
        by_head = {(i["layer"], i["head"]): i for i in result.get("importance", []) if i["kind"] == kind}
        for l in range(types.shape[0]):
            for h in range(types.shape[1]):
                row = [l, h, *[f"{stats[n][l, h]:.6f}" for n in head_stats.FEATURES],
                       f"{stats['entropy'][l, h] / max(stats['uniform_entropy'][l, h], 1e-12):.6f}", r["types"][l][h],
                       *[f"{r['role_attention'][x][l][h]:.6f}" for x in role_names],
                       *[f"{by_head[(l, h)]['drop'][m]:.6f}" for m in task.metrics if (l, h) in by_head],
                       *[f"{r['gradient_importance'][l][h]:.6g}" for _ in extra], f"{r['context_variance']['head'][l][h]:.6g}"]
                w.writerow(row)
    with open(folder / f"map-clusters-{kind}.csv", "w", newline="") as out:
        w = csv.writer(out)
        clusters = r["map_clusters"]["clusters"]
        layers = sorted({k for c in clusters for k in c["by_layer"]})
        class_names = sorted({k for c in clusters for k in c["by_class"]})
        w.writerow(["cluster", "maps", "type", *[f"layer_{l}" for l in layers], *[f"class_{c}" for c in class_names],
                    *[f"centre_{n}" for n in head_stats.FEATURES]])
        for c in clusters:
            w.writerow([c["cluster"], c["maps"], c["type"], *[c["by_layer"][l] for l in layers], *[c["by_class"].get(x, 0) for x in class_names],
                        *[f"{c['centre'][n]:.6f}" for n in head_stats.FEATURES]])
    return written


def _rollout_figures(task, found: dict, folder: Path) -> list[dict]:
    written = []
    example = found["rollout_example"]
    if example:
        r = example["rollout"][:, None]
        files = figures.head_grid(r, example["tokens"], example["tokens"], "encoder", "Attention rollout of the first analysed example, "
                                  "after each layer", folder / "rollout-example")
        written.append({"file": f"heads/{files[0]}", "svg": f"heads/{files[1]}", "kind": "encoder", "what": "rollout"})
    ra = found["rollout_average"]
    files = figures.head_grid(ra.position_mean, None, None, "encoder", f"Attention rollout, mean over {ra.examples} examples, "
                              "aligned by position", folder / "rollout-position")
    written.append({"file": f"heads/{files[0]}", "svg": f"heads/{files[1]}", "kind": "encoder", "what": "rollout"})
    seen = [i for i, c in enumerate(ra.key_role_baseline) if c > 0]
    roles = task.roles["encoder"]
    files = figures.head_grid(ra.role_mean[:, :, seen][:, :, :, seen], [roles[i] for i in seen], [roles[i] for i in seen], "encoder",
                              f"Attention rollout, mean over {ra.examples} examples, aligned by token role", folder / "rollout-roles")
    written.append({"file": f"heads/{files[0]}", "svg": f"heads/{files[1]}", "kind": "encoder", "what": "rollout"})
    return written


def summary_lines(result: dict, top: int = 5) -> list[str]:
    """The short summary `cli.py heads` prints."""
    lines = []
    if "importance" in result:
        base = ", ".join(f"{METRIC_TITLES[m]} {v:.3f}" for m, v in result["baseline_metrics"].items())
        lines.append(f"baseline on {result['eval_rows']} rows: {base}")
        for item in result["importance"][:top]:
            drops = ", ".join(f"{METRIC_TITLES[m]} {v:+.3f}" for m, v in item["drop"].items())
            lines.append(f"  important head: {item['kind']} layer {item['layer']} head {item['head']}: drop {drops}; gradient {item['gradient']:.3g}")
    for kind, r in result["kinds"].items():
        for layer, counts in enumerate(r["type_counts_per_layer"]):
            shown = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
            lines.append(f"{kind} layer {layer}: {shown}")
        peak = max(r["symbols"]["all"], key=lambda row: row["excess"])
        lines.append(f"{kind}: special symbols receive {peak['share']:.3f} of the attention at their peak (layer {peak['layer']}; "
                     f"uniform {peak['baseline']:.3f}; excess 95% CI {peak['excess_ci'][0]:+.3f}..{peak['excess_ci'][1]:+.3f})")
    blocking = result.get("symbol_blocking")
    if blocking:
        base = blocking["baseline"]
        for name, metrics in blocking.items():
            if name in ("baseline", "layers"):
                continue
            lines.append(f"{name}: " + ", ".join(f"{METRIC_TITLES[m]} {metrics[m] - base[m]:+.3f}" for m in metrics))
    corr = result.get("context_correlation") or {}
    overall = {k: v for k, v in corr.items() if k.count("/") == 1}
    if overall:
        for key, value in overall.items():
            r, p = value.get("r"), value.get("p")
            r_text = f"undefined ({value.get('note', '')})" if r is None or r != r else f"r = {r:+.3f}, p = {p:.3g}"
            lines.append(f"context variance vs {key.replace('/', ' ')}: {r_text}, n = {value['n']}")
    else:
        lines.append(f"context variance vs accuracy: {result['context_note']}")
    return lines
