"""`cli.py patch RUN_DIR`: activation patching of the encoder or of the decoder (Vig et al. 2020,
Meng et al. 2022), for a task whose `Analysis` provides `patch_pairs` (train/tasks.py; the
quadratic task does).

A pair is a clean input and a corrupted one whose tokens align position by position: on the
encoder side two inputs (the quadratic task: equations that differ in one coefficient), on the
decoder side two teacher-forced decoder inputs for the same encoder input (the quadratic task: the
written work with one digit changed). The corrupted input is run with that side's hidden state at
one (layer, position) replaced by the clean run's, at the positions the pairs mark as patchable
(the decoder: from the first changed token on, since a causal decoder's states before it are the
same in both runs), and each of the task's scores (log-probabilities of the clean answer, teacher-forced) is
normalised per pair: (patched - corrupted) / (clean - corrupted), so 0 is the corrupted run and 1
the clean one. A pair whose clean and corrupted scores lie within TOLERANCE of each other says
nothing about that score and is dropped from it (counted in patching.json).

Layers are the side's `hidden_states` indices: 0 the embedding output (the input of block 0),
l the output of block l - 1, the last one after the final layer norm (what the decoder reads, on
the encoder side; what the output layer reads, on the decoder side).

Speed: many patches in one forward pass: the corrupted input is repeated along the batch, each
copy with its own (layer, position), written by hooks on the side's blocks (bench/bench_patching.py).

figures/<run>/patching/
    patching.json           settings, per score and (layer, role) the mean, 95% CI and n, the pairs
    patching.npz            per score: clean, corrupted (P,) and patched (P, layers, T) log-probs
    patching-roles.*        heatmaps layer x role, averaged over pairs
    patching-example.*      the per-position map of one pair
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from analyze import figures
from analyze.head_stats import mean_ci
from gen import QuadlabError, swap_in

TOLERANCE = 0.1  # nats: a pair whose clean and corrupted scores differ by less is dropped from that score
CERTAIN = math.log(0.9)  # a corrupted run whose mean log P of the clean answer passes this writes the clean answer too
CHANGED = "(changed tokens)"  # the pseudo-role of the positions where clean and corrupted differ


# ---------------------------------------------------------------------------------------------
# Hooks: record and overwrite the hidden states of one side


def sites(model, side: str = "encoder") -> list[tuple[torch.nn.Module, bool]]:
    """(module, before) per hidden_states index of `side` (encoder, decoder): the state is the
    input of the module when `before`, else its output. T5: the blocks' inputs, then the final
    layer norm's output."""
    if model.config.model_type not in ("t5", "mt5") or not hasattr(model, "encoder"):
        raise QuadlabError(f"activation patching supports T5 encoder-decoders; this model is {model.config.model_type!r}")
    stack = model.encoder if side == "encoder" else model.decoder
    return [(block, True) for block in stack.block] + [(stack.final_layer_norm, False)]


@contextmanager
def _hooked(model, change, side: str = "encoder"):
    """Within the block, change(index, state) -> state is applied at every hidden_states index."""
    handles = []
    for index, (module, before) in enumerate(sites(model, side)):
        if before:
            handles.append(module.register_forward_pre_hook(
                lambda m, args, index=index: (change(index, args[0]), *args[1:])))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, index=index: change(index, out)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def encoder_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(layers, B, T, d): the encoder's hidden state at every hidden_states index."""
    found = []

    def record(index, state):
        found.append(state)
        return state

    with _hooked(model, record):
        model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
    return torch.stack(found)


@torch.no_grad()
def clean_states(model, pairs: dict) -> torch.Tensor:
    """(layers, P, T, d): the clean run's hidden states on the pairs' side."""
    if pairs["side"] == "encoder":
        device = next(model.parameters()).device
        return encoder_states(model, pairs["clean"].to(device), pairs["attention_mask"].to(device))
    found = []

    def record(index, state):
        found.append(state)
        return state

    with _hooked(model, record, "decoder"):
        forward_scores(model, pairs, {}, torch.arange(len(pairs["clean"])), pairs["clean"], cut=False)
    return torch.stack(found)


def side_mask(pairs: dict) -> torch.Tensor:
    """(P, T): the real tokens of the patched side."""
    return pairs["attention_mask"] if pairs["side"] == "encoder" else pairs["decoder_attention_mask"]


@contextmanager
def patched(model, layers: torch.Tensor, where: torch.Tensor, values: torch.Tensor, side: str = "encoder"):
    """Within the block, row r of a batch has its hidden state at index layers[r] of `side`
    replaced by values[r] at the positions where[r] (B, T) is True; rows with layer -1 are left alone."""

    def change(index, state):
        width = state.shape[1]  # the batch may be cut to its longest input (forward_scores)
        chosen = (layers == index)[:, None] & where[:, :width]
        return torch.where(chosen[..., None], values[:, :width].to(state.dtype), state) if chosen.any() else state

    with _hooked(model, change, side):
        yield


# ---------------------------------------------------------------------------------------------
# Scores


def score_targets(targets: dict, vocab: int) -> dict:
    """{score: (positions (P, K), valid (P, K), allowed (P, K, V))} from the task's
    [(decoder position, [token ids])] per pair."""
    out = {}
    for name, per_pair in targets.items():
        k = max(map(len, per_pair))
        positions = torch.zeros(len(per_pair), k, dtype=torch.long)
        valid = torch.zeros(len(per_pair), k, dtype=torch.bool)
        allowed = torch.zeros(len(per_pair), k, vocab, dtype=torch.bool)
        for p, steps in enumerate(per_pair):
            for i, (position, ids) in enumerate(steps):
                positions[p, i], valid[p, i] = position, True
                allowed[p, i, ids] = True
        out[name] = (positions, valid, allowed)
    return out


def log_probs(logits: torch.Tensor, target) -> torch.Tensor:
    """(B,): the sum over a target's steps of log P(one of the allowed tokens at that position)."""
    positions, valid, allowed = target
    steps = logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))  # (B, K, V)
    steps = torch.log_softmax(steps.double(), dim=-1)  # double: the normalised differences are of near-equal sums
    per_step = torch.logsumexp(steps.masked_fill(~allowed, float("-inf")), dim=-1)
    return per_step.masked_fill(~valid, 0).sum(dim=1)


@torch.no_grad()
def forward_scores(model, pairs: dict, targets: dict, index: torch.Tensor, input_ids: torch.Tensor, cut: bool = True) -> tuple[dict, torch.Tensor]:
    """({score: (B,)}, logits) of the pairs `index` run with `input_ids` (B, T) on the pairs' side
    (the encoder's input, or the decoder's), under whatever hooks are active; the padding beyond
    the longest input and decoder input is cut off (`cut`)."""
    device = next(model.parameters()).device
    mask, decoder_mask = pairs["attention_mask"][index], pairs["decoder_attention_mask"][index]
    width, depth = (int(mask.sum(dim=1).max()), int(decoder_mask.sum(dim=1).max())) if cut else (mask.shape[1], decoder_mask.shape[1])
    encoder_ids, decoder_ids = ((input_ids, pairs["decoder_input_ids"][index]) if pairs["side"] == "encoder"
                                else (pairs["input_ids"][index], input_ids))
    logits = model(input_ids=encoder_ids[:, :width].to(device), attention_mask=mask[:, :width].to(device),
                   decoder_input_ids=decoder_ids[:, :depth].to(device), decoder_attention_mask=decoder_mask[:, :depth].to(device)).logits
    on = {name: tuple(t[index].to(device) for t in target) for name, target in targets.items()}
    return {name: log_probs(logits, target).cpu() for name, target in on.items()}, logits


@torch.no_grad()
def patch_all(model, pairs: dict, batch_size: int, progress: bool = False, tolerance: float = 0.0) -> dict:
    """Every (pair, layer, position) patch, `batch_size` copies per forward pass, of every pair but
    those whose clean and corrupted scores lie within `tolerance` of each other for every score
    (the command's TOLERANCE: what no score would count). Returns {"clean", "corrupted": {score:
    (P,)}, "patched": {score: (P, layers, T)} (NaN where nothing is patched)}."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    side = pairs["side"]
    mask = side_mask(pairs)
    patchable = pairs["patchable"].bool()
    n_pairs, width = mask.shape
    every = torch.arange(n_pairs)
    targets = score_targets(pairs["targets"], model.config.vocab_size)
    clean, _ = forward_scores(model, pairs, targets, every, pairs["clean"])
    corrupted, _ = forward_scores(model, pairs, targets, every, pairs["corrupted"])
    states = clean_states(model, pairs)  # (layers, P, T, d)
    n_layers = states.shape[0]
    # on the best model's encoder every pair is dropped, and patching them all took minutes to say so
    informative = np.any([kept_pairs(clean[name], corrupted[name], tolerance) for name in targets], axis=0)
    # pairs in order of length: each batch is cut to its longest pair, so similar lengths waste little
    order = sorted(np.flatnonzero(informative).tolist(),
                   key=lambda p: (int(pairs["decoder_attention_mask"][p].sum()), int(pairs["attention_mask"][p].sum())))
    jobs = torch.tensor([(p, l, t) for p in order for l in range(n_layers) for t in torch.nonzero(patchable[p]).flatten().tolist()],
                        dtype=torch.long).reshape(-1, 3)
    patched_scores = {name: torch.full((n_pairs, n_layers, width), float("nan"), dtype=torch.float64) for name in targets}
    for start in tqdm(range(0, len(jobs), batch_size), desc="patch", unit="batch", disable=None if progress else True):
        p, l, t = jobs[start : start + batch_size].T
        where = torch.zeros(len(p), width, dtype=torch.bool)
        where[torch.arange(len(p)), t] = True
        with patched(model, l.to(device), where.to(device), states[l.to(device), p.to(device)], side):
            found, _ = forward_scores(model, pairs, targets, p, pairs["corrupted"][p])
        for name, values in found.items():
            patched_scores[name][p, l, t] = values
    return {"clean": clean, "corrupted": corrupted, "patched": patched_scores}


def kept_pairs(clean: torch.Tensor, corrupted: torch.Tensor, tolerance: float) -> np.ndarray:
    """(P,) the pairs that a score keeps: clean and corrupted at least `tolerance` apart."""
    return np.abs((clean - corrupted).numpy()) >= tolerance


def normalised(clean: torch.Tensor, corrupted: torch.Tensor, patched: torch.Tensor, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """(P, layers, T) restoration, 0 at the corrupted run and 1 at the clean one, and (P,) the
    pairs kept."""
    gap = (clean - corrupted).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        restored = (patched.numpy() - corrupted.numpy()[:, None, None]) / gap[:, None, None]
    return restored, kept_pairs(clean, corrupted, tolerance)


def by_role(restored: np.ndarray, kept: np.ndarray, roles: np.ndarray, changed: np.ndarray, role_names: list[str]) -> dict:
    """Per layer and role (those of any pair, and CHANGED): the mean over kept pairs of each pair's
    mean over its positions of the role, its 95% CI, and n, the kept pairs that have the role."""
    n_layers = restored.shape[1]
    columns = [(name, roles == i) for i, name in enumerate(role_names)] + [(CHANGED, changed)]
    columns = [(name, member) for name, member in columns if member.any()]
    stats, counts = [], []
    for name, member in columns:
        has = np.flatnonzero(kept & member.any(axis=1))
        per_pair = np.array([restored[p][:, member[p]].mean(axis=1) for p in has]).reshape(len(has), n_layers)
        stats.append([mean_ci(per_pair[:, layer]) for layer in range(n_layers)])
        counts.append(len(has))
    return {"roles": [name for name, _ in columns], "n": counts,
            "mean": [[s[layer][0] for s in stats] for layer in range(n_layers)],  # (layers, roles)
            "ci": [[[s[layer][1], s[layer][2]] for s in stats] for layer in range(n_layers)]}


# ---------------------------------------------------------------------------------------------
# The command


def layer_names(n_layers: int) -> list[str]:
    return ["embeddings"] + [f"layer {l}" for l in range(n_layers - 1)]


def analyze_patching(run_dir: Path, out_dir: Path | None = None, pairs: int = 200, split: str = "test", seed: int = 0,
                     batch_size: int = 256, progress: bool = True, side: str = "encoder", data: str | Path | None = None) -> dict:
    from train import tasks
    from train.runs import analysis, figures_dir, open_run

    run_dir = Path(run_dir)
    config = open_run(run_dir, "patch", data=data)
    if not hasattr(tasks.module(config.task).Analysis, "patch_pairs"):
        raise QuadlabError(f"{run_dir} is a {tasks.TASKS[config.task].title} run; patching needs a task that provides pairs of "
                           f"inputs (the quadratic task does: `{tasks.TASKS['quadratic'].train_command}`)")
    clock = time.perf_counter()
    task = analysis(run_dir, "patch", split=split, data=data)
    model = task.model.eval()
    sites(model)  # another architecture fails here, before any work
    if torch.cuda.is_available():
        model.to("cuda")
    made = task.patch_pairs(pairs, seed, side)
    seconds = {"loading and pairs": time.perf_counter() - clock}
    clock = time.perf_counter()
    found = patch_all(model, made, batch_size, progress, tolerance=TOLERANCE)  # what every score drops is not patched
    seconds["patching"] = time.perf_counter() - clock
    n_layers = found["patched"][next(iter(found["patched"]))].shape[1]
    roles = made["roles"].numpy()
    valid = side_mask(made).numpy().astype(bool)
    changed = (made["clean"] != made["corrupted"]).numpy() & valid
    role_names = list(made["role_names"])
    result = {"run": str(run_dir), "task": task.name, "split": task.split,
              "settings": {"side": side, "pairs": pairs, "seed": seed, "batch_size": batch_size, "tolerance_nats": TOLERANCE,
                           "normalisation": "(patched - corrupted) / (clean - corrupted) per pair: 0 the corrupted run, 1 the clean run"},
              "layers": layer_names(n_layers), "hidden_states_index": list(range(n_layers)), "scores": {}}
    arrays, restored_all = {}, {}
    for name in made["targets"]:
        clean, corrupted, patched_lp = found["clean"][name], found["corrupted"][name], found["patched"][name]
        restored, kept = normalised(clean, corrupted, patched_lp, TOLERANCE)
        restored_all[name] = (restored, kept)
        result["scores"][name] = {
            "what": made["scores"][name], "pairs_used": int(kept.sum()), "pairs_dropped": int((~kept).sum()),
            "dropped_why": f"clean and corrupted log-probabilities within {TOLERANCE} nats",
            "clean_mean": float(clean.mean()), "corrupted_mean": float(corrupted.mean()),
            **by_role(restored, kept, roles, changed, role_names)}
        arrays[f"{name}/clean"], arrays[f"{name}/corrupted"] = clean.numpy(), corrupted.numpy()
        arrays[f"{name}/patched"] = patched_lp.numpy().astype(np.float32)
    used = [sum(bool(k[p]) for _, k in restored_all.values()) for p in range(len(valid))]
    example = int(np.argmax(used))  # the first pair that every score keeps, else that most keep (none: pair 0, not patched)
    shown = np.flatnonzero(made["patchable"][example].numpy())  # the patched positions
    result["example"] = {"pair": example, "positions": shown.tolist(), "tokens": [made["tokens"][example][t] for t in shown],
                         "corrupted_tokens": [made["corrupted_tokens"][example][t] for t in shown],
                         "restored": {name: r[example][:, shown].tolist() for name, (r, _) in restored_all.items()}}
    result["pairs"] = [{**p, **{f"{name} clean": float(found["clean"][name][i]) for name in made["targets"]},
                        **{f"{name} corrupted": float(found["corrupted"][name][i]) for name in made["targets"]},
                        "dropped_from": [name for name, (_, kept) in restored_all.items() if not kept[i]]}
                       for i, p in enumerate(made["pairs"])]
    result["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return _write(result, arrays, Path(out_dir or figures_dir(run_dir) / ("patching" if side == "encoder" else "patching-decoder")))


def summary_lines(result: dict, top: int = 3) -> list[str]:
    """Per score: the pairs used and dropped, and the (layer, role) cells that restore most. Of a
    result as computed, or as read back from patching.json (where NaN is written null)."""

    def number(v):
        return float("nan") if v is None else v

    lines = []
    for name, s in result["scores"].items():
        cells = sorted(((m, l, r) for l, row in enumerate(s["mean"]) for r, m in enumerate(row) if m is not None and m == m), reverse=True)[:top]
        best = "; ".join(f"{result['layers'][l]} {s['roles'][r]} {m:.2f} [{number(s['ci'][l][r][0]):.2f}, {number(s['ci'][l][r][1]):.2f}]"
                         for m, l, r in cells)
        tolerance = result["settings"]["tolerance_nats"]
        if not s["pairs_used"] and s["corrupted_mean"] <= CERTAIN:
            best = f"nothing to restore: the model does not tell clean from corrupted by {tolerance} nats in any pair (train it longer)"
        elif not s["pairs_used"]:  # both runs write the clean answer almost surely: the prefix both read decides it, not where patched
            side = result["settings"]["side"]
            best = (f"nothing to restore: the corrupted run writes the clean answer as surely as the clean run (mean log P "
                    f"{s['corrupted_mean']:.3f} against {s['clean_mean']:.3f}), so the teacher-forced prefix that both read decides it, "
                    f"not the {side}" + (" (a format that writes its work before the answer: patch that work with --side decoder)" if side == "encoder" else ""))
        lines.append(f"{name}: {s['pairs_used']} pairs ({s['pairs_dropped']} dropped: clean and corrupted within "
                     f"{tolerance} nats); most restored: {best}")
    return lines


# ---------------------------------------------------------------------------------------------
# Writing


def _write(result: dict, arrays: dict, final: Path) -> dict:
    from analyze.heads import _finite

    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        result["figures"] = _role_figure(result, tmp / "patching-roles") + _example_figure(result, tmp / "patching-example")
        result["summary"] = summary_lines(result)  # what the command prints, for the report
        np.savez_compressed(tmp / "patching.npz", **arrays)
        (tmp / "patching.json").write_text(json.dumps(_finite(result), indent=1) + "\n")
        swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out_dir": str(final), **result}


def _heatmap(ax, values: np.ndarray, labels: list[str], x_labels: list[str], title: str, notes=None):
    """One panel layer x column on a diverging scale centred at 0 (restoration can overshoot 1 or
    go below 0)."""
    values = np.where(np.isfinite(values), values, np.nan)  # a dropped pair's example: no scale
    limit = max(1.0, float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0)
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    ax.set_xticks(np.arange(len(x_labels)), x_labels, rotation=90, fontsize=7)
    ax.set_yticks(np.arange(len(labels)), labels, fontsize=8)
    ax.set_title(title, fontsize=9)
    if notes is not None:
        for (l, r), text in np.ndenumerate(notes):
            ax.text(r, l, text, ha="center", va="center", fontsize=5.5)
    return image


def _role_figure(result: dict, path: Path) -> list[str]:
    import matplotlib.pyplot as plt

    scores = result["scores"]
    fig, axes = plt.subplots(1, len(scores), figsize=(5.2 * len(scores), 0.5 * len(result["layers"]) + 2.6), squeeze=False,
                             layout="constrained")
    image = None
    for ax, (name, s) in zip(axes[0], scores.items()):
        mean = np.array(s["mean"], dtype=float).reshape(len(result["layers"]), len(s["roles"]))
        ci = np.array(s["ci"], dtype=float).reshape(*mean.shape, 2)
        notes = np.vectorize(lambda m, h: f"{m:.2f}\n±{h:.2f}" if np.isfinite(h) else f"{m:.2f}")(mean, (ci[..., 1] - ci[..., 0]) / 2)
        image = _heatmap(ax, mean, result["layers"], s["roles"], f"{name} ({s['pairs_used']} pairs, {s['pairs_dropped']} dropped)", notes)
    fig.colorbar(image, ax=axes, shrink=0.8, label="restored share (0 corrupted, 1 clean)")
    fig.suptitle(f"Activation patching of the {result['settings']['side']}:\nmean over pairs by token role, with the 95% CI half-width",
                 fontsize=10)
    return figures.save(fig, path)


def _example_figure(result: dict, path: Path) -> list[str]:
    import matplotlib.pyplot as plt

    ex = result["example"]
    labels = [t if t == u else f"{t}→{u}" for t, u in zip(ex["tokens"], ex["corrupted_tokens"])]
    fig, axes = plt.subplots(len(ex["restored"]), 1, figsize=(max(5.0, 0.32 * len(labels) + 2), 1.9 * len(ex["restored"]) + 1.4),
                             squeeze=False, layout="constrained")
    image, dropped = None, result["pairs"][ex["pair"]]["dropped_from"]  # only where no pair is kept by every score
    for ax, (name, restored) in zip(axes[:, 0], ex["restored"].items()):
        title = f"{name} (this pair is dropped from it: clean and corrupted within {result['settings']['tolerance_nats']} nats)" if name in dropped else name
        image = _heatmap(ax, np.array(restored, dtype=float), result["layers"], labels, title)
    fig.colorbar(image, ax=axes, shrink=0.8, label="restored share")
    clean, corrupted = "".join(ex["tokens"]).replace("</s>", ""), "".join(ex["corrupted_tokens"]).replace("</s>", "")
    fig.suptitle(f"Pair {ex['pair']}: {clean} (clean) / {corrupted} (corrupted), one position patched at a time", fontsize=9)
    return figures.save(fig, path)
