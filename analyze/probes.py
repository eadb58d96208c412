"""`cli.py probe RUN_DIR`: linear probes on the hidden states of a run of any task (its `Analysis`,
train/tasks.py): which layer and which token role holds which fact about the example.

One streamed forward pass over the analysed rows (the task's captured batches; seq2seq models
teacher-forced on the reference, as the maps' averages) keeps only what the probes read, pooled at
once (no more than one batch of hidden states in memory):
- encoder: for every layer (0 = the embeddings .. L) and every token role of the input, the mean of
  the hidden states of the example's tokens of that role, and `mean`, over all its tokens;
- decoder (seq2seq): for every layer, the hidden state at one position per statement of the
  solution (a statement is a segment of the decoder side, which ends at `;`): its last `=`, the
  position whose output is the statement's value (the segment's last token where the side has no
  `=` role). Statements are matched across rows by the name the task gives them (its
  `statement_names`: `D`, `sqrt(D)`, `x1`, `D work 2`, ...), not by their index, since the formats
  that write out their arithmetic have as many steps as the numbers have digits: the 12th
  statement is D in one row and a partial product in the next. At most DECODER_STATEMENTS names:
  every name of a formula first, then the steps of each formula's work, the first step of each
  before the second (`decoder_statements`);
- token-level targets (SQuAD's "inside the answer span"): the hidden states of single tokens, at
  most TOKENS_PER_LABEL of each label per window, drawn at random, so that a rare label (the
  answer's few tokens against the context's hundreds) is not swamped.

Then, per target, layer and role, a logistic regression on the standardised features is fitted on
one part of the rows and scored on the other (split by example row, never by token; SQuAD: by
question). Beside each accuracy: the majority baseline (the share of the most common label in the
scoring part) and the control task of Hewitt and Liang (2019): the same probe on labels that are a
fixed random function of the token type (the token ids the role pools; a single token's id), drawn
from the target's label distribution; selectivity = accuracy - control accuracy. A role that is one
and the same token in every example (x, ^, =) has a single type, so its control task is a constant
that any probe fits: it gets no control and no selectivity (there any accuracy above the majority
baseline comes from the context).

<out> (default figures/<run>/probes/)
    probes.json      settings, and per target, side, layer and role: accuracy, majority,
                     control accuracy, selectivity, n train / test; the best cell per target
    probes.csv       the same table
    probe-<target>.png, .svg   layer x role heatmaps: accuracy and selectivity
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import os
import re
import shutil
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from gen import QuadlabError, swap_in

# torch, transformers and matplotlib are imported where they are used: the probes are fitted in
# worker processes, which then start in a fraction of the time

DEFAULT_LIMIT = 5000
MIN_PART = 10  # rows in each part of the split: fewer make an accuracy of a few coin flips
TOKENS_PER_LABEL = 8
DECODER_STATEMENTS = 16  # the long and reversed formats have ~40 names; each is a (rows, layers, d) array
WORK = " work "  # in a statement's name: a step of the named formula's work (train/metrics.py, statement_names)


# ---------------------------------------------------------------------------------------------
# Control task and the probe itself


def control_labels(types, distribution: np.ndarray, seed: int, name: str = "") -> np.ndarray:
    """Hewitt and Liang's control task: each token type (an integer) gets a label code drawn from
    `distribution` (the probabilities of the codes), a fixed function of (seed, name, type), so
    every occurrence of a type gets the same label whatever else is in the data."""
    types = np.asarray(types, dtype=np.int64)
    unique, inverse = np.unique(types, return_inverse=True)
    u = np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{name}:{t}".encode(), digest_size=8).digest(), "little") / 2.0**64
                  for t in unique.tolist()])
    cdf = np.cumsum(distribution) / np.sum(distribution)
    codes = np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)
    return codes[inverse]


def type_of(ids) -> int:
    """A token type as one integer: the token ids a role pools in an example (a stable hash)."""
    return int.from_bytes(hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8).digest(), "little", signed=True)


def fit_score(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seed: int) -> float:
    """Accuracy on the scoring part of a logistic regression fitted on the other (features already
    standardised). One class to fit on: that class is the prediction."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(y_train)) < 2:
        return float(np.mean(y_test == y_train[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a probe near its optimum is as good a probe
        probe = LogisticRegression(tol=1e-3, max_iter=100, random_state=seed).fit(x_train, y_train)
    return float(probe.score(x_test, y_test))


def probe_cell(x: np.ndarray, test: np.ndarray, labels: dict, controls: dict, seed: int) -> dict:
    """One (layer, role): the features (n, d) of the examples that have it, which of them score
    (bool), and per target its label codes and control codes (None: no control). Standardised on
    the fitting part; every target shares the scaling."""
    train = ~test
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    z = (x - mean) / np.where(std > 1e-6, std, 1.0)
    out = {}
    for name, y in labels.items():
        counts = np.bincount(y[test])
        row = {"accuracy": fit_score(z[train], y[train], z[test], y[test], seed), "majority": float(counts.max() / counts.sum()),
               "n_train": int(train.sum()), "n_test": int(test.sum()), "control_accuracy": None, "selectivity": None}
        if controls[name] is not None:
            row["control_accuracy"] = fit_score(z[train], controls[name][train], z[test], controls[name][test], seed)
            row["selectivity"] = row["accuracy"] - row["control_accuracy"]
        out[name] = row
    return out


# ---------------------------------------------------------------------------------------------
# The streamed pass


def hidden_states(model, inputs: dict) -> dict:
    """{side: (layers + 1) hidden states (B, T, d)}, teacher-forced for an encoder-decoder."""
    import torch

    with torch.no_grad():
        if model.config.is_encoder_decoder:
            out = model(**inputs, output_hidden_states=True)
            return {"encoder": out.encoder_hidden_states, "decoder": out.decoder_hidden_states}
        if "token_type_ids" in inputs and "token_type_ids" not in inspect.signature(model.forward).parameters:
            inputs = {k: v for k, v in inputs.items() if k != "token_type_ids"}  # DistilBERT has no segments
        return {"encoder": model(**inputs, output_hidden_states=True).hidden_states}


def decoder_positions(roles: np.ndarray, segments: np.ndarray, equals: int | None) -> list[tuple[int, int]]:
    """(statement, position) of one decoder sequence: in each segment, its last token of role
    `equals` (the `=` whose output is the statement's value), or its last token when None."""
    out = []
    for k in range(int(segments.max()) + 1 if segments.size else 0):
        where = np.flatnonzero(segments == k)
        if equals is not None:
            where = where[roles[where] == equals]
        if where.size:
            out.append((k, int(where[-1])))
    return out


def decoder_statements(names: list[list[str]], limit: int = DECODER_STATEMENTS) -> list[str]:
    """Which statement names the decoder's probes read, from each row's names: every formula's
    name (no WORK in it), then work steps by their number, the first step of every formula before
    any second one (the more common first), up to `limit`; in the order they are written (their
    mean index in the rows that have them)."""
    count, where = Counter(), Counter()
    for row in names:
        for name in dict.fromkeys(row):  # a name twice in a row: its first place
            count[name] += 1
            where[name] += row.index(name)

    def rank(name):
        step = name.partition(WORK)[2]
        return (int(step) if step.isdigit() else 0, -count[name], name)

    chosen = sorted(count, key=rank)[:limit]
    return sorted(chosen, key=lambda name: (where[name] / count[name], name))


def collect(task, batch_size: int, row_level: bool, token_targets: dict, seed: int, progress: bool) -> dict:
    """One pass over the analysed rows: pooled features per side, their token types, and the
    sampled tokens of the token-level targets."""
    import torch
    from tqdm import tqdm

    model = task.model
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    enc_roles = list(task.roles["encoder"])
    dec_roles = list(task.roles.get("decoder", ()))
    equals = dec_roles.index("=") if "=" in dec_roles else None
    n = task.n_rows
    found = {"encoder": None, "decoder": None, "tokens": {name: [] for name in token_targets}}
    statements = task.statement_names() if dec_roles else []  # per row, each decoder segment's name
    columns = {name: j for j, name in enumerate(decoder_statements(statements))}
    for batch in tqdm(task.batches(batch_size), desc="probe", unit="batch", disable=None if progress else True):
        states = hidden_states(model, {k: v.to(device) for k, v in batch["inputs"].items()})
        rows = np.asarray(batch["rows"])
        ids = batch["inputs"]["input_ids"].numpy()
        roles = batch["roles"]["encoder"]
        h = torch.stack(states["encoder"]).float()  # (L + 1, B, T, d)
        if row_level:
            one_hot = torch.nn.functional.one_hot(roles.clamp(min=0), len(enc_roles)).float() * (roles >= 0)[..., None]
            one_hot = torch.cat([one_hot, (roles >= 0).float()[..., None]], dim=-1).to(h.device)  # the last column: mean
            sums = torch.einsum("btr,lbtd->blrd", one_hot, h).cpu().numpy()
            counts = one_hot.sum(dim=1).cpu().numpy()
            if found["encoder"] is None:
                found["encoder"] = {"sums": np.zeros((n, *sums.shape[1:]), np.float32), "counts": np.zeros((n, len(enc_roles) + 1)),
                                    "types": np.zeros((n, len(enc_roles) + 1), np.int64)}
            e = found["encoder"]
            roles_np = roles.numpy()
            for b, row in enumerate(rows):
                fresh = e["counts"][row] == 0  # SQuAD: a question's later windows keep the first window's types
                for r in np.flatnonzero(fresh & (counts[b] > 0)):
                    e["types"][row, r] = type_of(ids[b][roles_np[b] == r] if r < len(enc_roles) else ids[b][roles_np[b] >= 0])
            np.add.at(e["sums"], rows, sums)
            np.add.at(e["counts"], rows, counts)
            if "decoder" in states:
                hd = torch.stack(states["decoder"]).float().cpu().numpy()
                if found["decoder"] is None:
                    found["decoder"] = {"features": np.zeros((n, hd.shape[0], len(columns), hd.shape[-1]), np.float32),
                                        "present": np.zeros((n, len(columns)), bool), "types": np.zeros((n, len(columns)), np.int64)}
                d = found["decoder"]
                d_roles, d_segments = batch["roles"]["decoder"].numpy(), batch["segments"]["decoder"].numpy()
                d_ids = batch["inputs"]["decoder_input_ids"].numpy()
                for b, row in enumerate(rows):
                    valid = d_roles[b] >= 0
                    for k, pos in decoder_positions(d_roles[b][valid], d_segments[b][valid], equals):
                        j = columns.get(statements[row][k]) if k < len(statements[row]) else None
                        if j is None or d["present"][row, j]:
                            continue  # a statement not probed, or a name's later place in the row
                        d["features"][row, :, j] = hd[:, b, pos]
                        d["present"][row, j] = True
                        d["types"][row, j] = type_of(d_ids[b][pos : pos + 1])
        for name, by_role in token_targets.items():
            wanted = {enc_roles.index(r): label for r, label in by_role.items() if r in enc_roles}
            roles_np = roles.numpy()
            for b, row in enumerate(rows):
                for role, label in wanted.items():
                    where = np.flatnonzero(roles_np[b] == role)
                    chosen = np.sort(rng.choice(where, min(TOKENS_PER_LABEL, where.size), replace=False)) if where.size else where
                    for pos in chosen:
                        found["tokens"][name].append((int(row), int(ids[b][pos]), label, h[:, b, pos].cpu().numpy()))
        del states, h
    out = {"encoder_roles": enc_roles + ["mean"], "tokens": {}}
    if found["encoder"] is not None:
        e = found["encoder"]
        present = e["counts"] > 0
        e["sums"] /= np.maximum(e["counts"], 1)[:, None, :, None]
        out["encoder"] = {"features": e["sums"], "present": present, "types": e["types"]}
    if found["decoder"] is not None:
        d = found["decoder"]
        out["decoder"] = d
        out["decoder_roles"] = list(columns)
    for name, items in found["tokens"].items():
        if items:
            out["tokens"][name] = {"rows": np.array([i[0] for i in items]), "types": np.array([i[1] for i in items]),
                                   "labels": [i[2] for i in items], "features": np.stack([i[3] for i in items])}
    return out


# ---------------------------------------------------------------------------------------------
# The command


def _codes(labels) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Label codes, the label names, and each code's share."""
    names, codes = np.unique(np.asarray([str(v) for v in labels]), return_inverse=True)
    return codes, names.tolist(), np.bincount(codes, minlength=len(names)) / max(len(codes), 1)


def probe_sets(found: dict, row_targets: dict, token_targets: dict) -> tuple[list, dict]:
    """What `fit_all` fits: [(side, role names, features {features, present, types[, rows]},
    [(target, label codes, label shares)])], the targets that read the same features together;
    and each target's level and label counts."""
    groups, described = {}, {}
    for name, labels in row_targets.items():
        codes, label_names, shares = _codes(labels)
        described[name] = {"level": "example", "labels": dict(zip(label_names, map(int, np.bincount(codes, minlength=len(label_names)))))}
        for side in ("encoder", "decoder"):
            if side in found:
                groups.setdefault(side, (side, found[f"{side}_roles"], found[side], []))[3].append((name, codes, shares))
    for name, by_role in token_targets.items():
        tokens = found["tokens"].get(name)
        if tokens is None:
            raise QuadlabError(f"no token of the roles {', '.join(by_role)} in the analysed rows, so nothing to probe for {name!r}; raise --limit")
        codes, label_names, shares = _codes(tokens["labels"])
        described[name] = {"level": "token", "roles": by_role, "labels": dict(zip(label_names, map(int, np.bincount(codes, minlength=len(label_names)))))}
        groups[name] = ("encoder", ["token"], {"features": tokens["features"][:, :, None], "present": np.ones((len(codes), 1), bool),
                                               "types": tokens["types"][:, None], "rows": tokens["rows"]}, [(name, codes, shares)])
    return list(groups.values()), described


def fit_all(groups: list, test_rows: np.ndarray, seed: int, progress: bool, workers: int | None = None) -> list[dict]:
    """Every probe of `probe_sets`' groups, with `test_rows` (bool per example row) scoring: one
    table row per target, side, layer and role. A cell is standardised once for all its targets.
    Cells are fitted in `workers` processes (default: one per core, at most 8), each on one BLAS
    thread; the cells are handed out as they are cut, so their features are not copied all at once."""
    from joblib import Parallel, delayed
    from tqdm import tqdm

    total = sum(data["features"].shape[1] * len(role_names) for _, role_names, data, _ in groups)
    bar = tqdm(total=total, desc="fit", unit="cell", disable=None if progress else True)

    def cells():
        for side, role_names, data, members in groups:
            example_rows = data.get("rows", np.arange(len(test_rows)))
            for r, role in enumerate(role_names):
                have = data["present"][:, r]
                test = test_rows[example_rows[have]]
                types = data["types"][have, r]
                n_types = len(np.unique(types))
                labels = {name: codes[have] for name, codes, _ in members}
                controls = {name: control_labels(types, shares, seed, name) if n_types > 1 else None for name, _, shares in members}
                for layer in range(data["features"].shape[1]):
                    bar.update()
                    if min(test.sum(), (~test).sum()) >= MIN_PART:  # else a role few examples have (a statement of the rare class)
                        where = {"side": side, "layer": layer, "role": role, "control_types": n_types}
                        yield delayed(_fit_cell)(where, data["features"][have, layer, r], test, labels, controls, seed)

    workers = workers or min(os.cpu_count() or 1, 8)
    out = [row for found in Parallel(n_jobs=workers, pre_dispatch="2*n_jobs")(cells()) for row in found]
    bar.close()
    return out


def _fit_cell(where: dict, x: np.ndarray, test: np.ndarray, labels: dict, controls: dict, seed: int) -> list[dict]:
    return [{"target": name, **where, **row} for name, row in probe_cell(x, test, labels, controls, seed).items()]


def held_out_rows(n: int, fraction: float, seed: int) -> np.ndarray:
    """Which of n example rows score (bool): a random `fraction` of them, the rest fit."""
    test = np.zeros(n, bool)
    test[np.random.default_rng(seed).permutation(n)[: int(round(n * fraction))]] = True
    return test


def rows_needed(fraction: float) -> int:
    """The fewest rows whose split leaves MIN_PART rows on each side."""
    n = MIN_PART
    while min(int(round(n * fraction)), n - int(round(n * fraction))) < MIN_PART:
        n += 1
    return n


def run_probes(run_dir: Path, out_dir: Path | None = None, split: str = "test", limit: int = DEFAULT_LIMIT, targets: list[str] | None = None,
               batch_size: int | None = None, held_out: float = 0.3, seed: int = 0, progress: bool = True, data: str | Path | None = None) -> dict:
    import torch
    from threadpoolctl import threadpool_limits

    from train.runs import analysis, figures_dir
    from train.tasks import TASKS

    if not 0 < held_out < 1:
        raise QuadlabError(f"--held-out {held_out} is not a share of the rows; give a number between 0 and 1, e.g. 0.3")
    run_dir = Path(run_dir)
    task = analysis(run_dir, "probe", split=split, limit=limit, data=data)
    known = task.probe_targets()
    chosen = list(dict.fromkeys(targets)) if targets else list(known)
    unknown = [t for t in chosen if t not in known]
    if unknown:
        raise QuadlabError(f"unknown target {unknown[0]!r} for this {TASKS[task.name].title} run; its targets are: " + ", ".join(map(repr, known)))
    need = rows_needed(held_out)
    if task.n_rows < need:
        raise QuadlabError(f"{task.n_rows} rows of the {task.split} split are too few to split for probing: --held-out {held_out} needs at least "
                           f"{need} ({MIN_PART} to fit the probes and {MIN_PART} to score them); raise --limit or use a larger split")
    row_targets = {t: known[t] for t in chosen if not isinstance(known[t], dict)}
    token_targets = {t: known[t] for t in chosen if isinstance(known[t], dict)}
    model = task.model
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    timings = {}
    clock = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on the busy 2-core machine two threads of these small operations took 5x longer, waiting on each other
    try:
        found = collect(task, batch_size or 64, bool(row_targets), token_targets, seed, progress)
    finally:
        torch.set_num_threads(threads)
    timings["forward pass"] = time.perf_counter() - clock
    test_rows = held_out_rows(task.n_rows, held_out, seed)

    clock = time.perf_counter()
    groups, described = probe_sets(found, row_targets, token_targets)
    with threadpool_limits(1):  # small fits on several BLAS threads waited on each other 20x longer on a busy 2-core machine
        cells = fit_all(groups, test_rows, seed, progress)
    timings["probes"] = time.perf_counter() - clock
    best = {}
    for name in chosen:
        mine = [c for c in cells if c["target"] == name]
        if mine:
            best[name] = max(mine, key=lambda c: (c["accuracy"] - c["majority"], c["selectivity"] if c["selectivity"] is not None else -1))
    result = {"run": str(run_dir), "task": task.name, "split": task.split, "rows": task.n_rows, "settings": {
        "held_out": held_out, "seed": seed, "limit": limit, "batch_size": batch_size or 64, "rows_fit": int((~test_rows).sum()),
        "rows_scored": int(test_rows.sum()), "min_part": MIN_PART, "tokens_per_label": TOKENS_PER_LABEL, "decoder_statements": DECODER_STATEMENTS,
        "encoder_roles": found["encoder_roles"] if row_targets else ["token"], "decoder_roles": found.get("decoder_roles", []),
        "probe": "LogisticRegression (scikit-learn, L2, C=1, lbfgs, tol 1e-3, at most 100 iterations) on features standardised on the fitting part",
        "decoder_position": "each statement's last `=`, the position whose output is the statement's value (teacher-forced); "
                            "statements matched across rows by their name (D, sqrt(D), x1, D work 2: the second step of D's work)",
        "control": "labels drawn from the target's label distribution, a fixed function of (seed, target, token type); "
                   "a role with a single token type has no control"},
        "targets": described, "cells": cells, "best": best, "seconds": {k: round(v, 2) for k, v in timings.items()}}
    return _write(result, Path(out_dir) if out_dir else figures_dir(run_dir) / "probes")


# ---------------------------------------------------------------------------------------------
# Writing


COLUMNS = ("target", "side", "layer", "role", "accuracy", "majority", "control_accuracy", "selectivity", "n_train", "n_test", "control_types")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "target"


def _write(result: dict, final: Path) -> dict:
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        written = []
        for name in result["best"]:  # the targets with a cell to draw
            written += heatmap(name, [c for c in result["cells"] if c["target"] == name], tmp / f"probe-{_slug(name)}")
        with open(tmp / "probes.csv", "w", newline="") as out:
            w = csv.writer(out)
            w.writerow(COLUMNS)
            for c in result["cells"]:
                w.writerow(["" if c[k] is None else f"{c[k]:.6f}" if isinstance(c[k], float) else c[k] for k in COLUMNS])
        result["figures"] = written
        result["summary"] = summary_lines(result)  # what the command prints, for the report
        (tmp / "probes.json").write_text(json.dumps(result, indent=1) + "\n")
        swap_in(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out_dir": str(final), **result}


def heatmap(name: str, cells: list[dict], path: Path) -> list[str]:
    """Layers x roles (encoder roles, then the decoder's statements), accuracy and selectivity."""
    from analyze import figures

    plt = figures.plt
    columns = list(dict.fromkeys((c["side"], c["role"]) for c in cells))
    layers = max((c["layer"] for c in cells), default=0) + 1
    panels = {"accuracy": np.full((layers, len(columns)), np.nan), "selectivity (accuracy - control)": np.full((layers, len(columns)), np.nan)}
    for c in cells:
        j = columns.index((c["side"], c["role"]))
        panels["accuracy"][c["layer"], j] = c["accuracy"]
        if c["selectivity"] is not None:
            panels["selectivity (accuracy - control)"][c["layer"], j] = c["selectivity"]
    labels = [role if side == "encoder" else f"dec {role}" for side, role in columns]
    width = max(4.0, 0.42 * len(columns) + 2.2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * width, 0.45 * layers + 2.4), squeeze=False)
    fig.subplots_adjust(left=0.07, right=0.97, bottom=0.3, top=0.82, wspace=0.25)
    for ax, (title, values) in zip(axes.flat, panels.items()):
        if title == "accuracy":
            image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        else:
            image = ax.imshow(values, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
        if values.size <= 400:
            for l in range(layers):
                for j in range(len(columns)):
                    if np.isfinite(values[l, j]):
                        ax.text(j, l, f"{values[l, j]:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if (title == "accuracy" and values[l, j] < 0.5) else "black")
        ax.set_xticks(np.arange(len(columns)), labels, fontsize=7, rotation=90)
        ax.set_yticks(np.arange(layers), [f"layer {l}" for l in range(layers)], fontsize=7)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.06, pad=0.02).ax.tick_params(labelsize=6)
    majority = [c["majority"] for c in cells]
    n_test = max((c["n_test"] for c in cells), default=0)
    fig.suptitle(f"Linear probes for {name!r}: layer 0 = embeddings; scored on {n_test} held-out "
                 f"{'tokens' if columns and columns[0][1] == 'token' else 'rows'}; majority baseline "
                 f"{min(majority, default=0):.2f}-{max(majority, default=0):.2f}", fontsize=9)
    return figures.save(fig, path)


def summary_lines(result: dict) -> list[str]:
    """For each target, where it is best decoded: the largest gain over the majority baseline."""
    lines = []
    for name, cell in result["best"].items():
        selectivity = "n/a (one token type)" if cell["selectivity"] is None else f"{cell['selectivity']:+.3f}"
        where = cell["role"] if cell["side"] == "encoder" else f"decoder {cell['role']}"
        lines.append(f"{name}: best at layer {cell['layer']}, {where}: accuracy {cell['accuracy']:.3f}, "
                     f"selectivity {selectivity}, majority {cell['majority']:.3f} (n test {cell['n_test']})")
    return lines
