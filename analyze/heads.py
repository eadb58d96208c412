"""`cli.py heads RUN_DIR`: head-level analysis of a run of any task (its `Analysis`, train/tasks.py),
on the capture path of `cli.py maps` (definitions: ../shared/GUIDE.md section 3; functions:
analyze/head_stats.py; hooks: analyze/interventions.py).

One streamed pass over `limit` rows of a split (the task's captured batches, as the maps' averages) gives, per attention kind: head statistics, pattern types, Jensen-Shannon distances
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
from analyze.report import METRIC_TITLES, write_report
from analyze.attention import AttentionAverage, batch_slices, capture
from gen import QuadlabError, swap_in



# ---------------------------------------------------------------------------------------------
# The analysis


def stream(task, model, batches: list[dict], progress: bool, with_attention: bool = True) -> dict:
    """One pass over the batches: per kind the per-map features, role averages, JS sums, symbol
    shares, rollout (encoder) and the context-vector variance. Each batch runs in slices of at most
    analyze.attention.ATTENTION_BYTES of maps (a CPU): the JS sums hold several copies of a kind's maps."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    layout = interventions.shape(model)
    variance = interventions.ContextVariance(model)
    found = {kind: {"features": [], "queries": [], "js": None, "js_queries": 0, "shares": {}, "baselines": {},
                    "average": AttentionAverage(task.roles[task.sides[kind][0]], task.roles[task.sides[kind][1]])} for kind in task.kinds}
    rollout_average = AttentionAverage(task.roles["encoder"], task.roles["encoder"])
    classes, first_example = [], None
    with variance:
        for batch in tqdm(batches, desc="heads", unit="batch", disable=None if progress else True):
            if not with_attention:
                variance.query_masks = task.query_masks(batch)
                with torch.no_grad():
                    model(**{k: v.to(device) for k, v in batch["inputs"].items()})
                continue
            for part in batch_slices(batch, task.sides, layout, device):
                variance.query_masks = task.query_masks(part)
                captured = capture(model, **{k: v.to(device) for k, v in part["inputs"].items()})
                classes += part["classes"]
                for kind, (attention, q_mask, k_mask) in captured.items():
                    q_side, k_side = task.sides[kind]
                    q_roles, k_roles = part["roles"][q_side].to(device), part["roles"][k_side].to(device)
                    f = found[kind]
                    f["features"].append(head_stats.map_features(attention, q_mask, k_mask, part["segments"][k_side].to(device),
                                                                 positional=kind != "cross", causal=kind == "decoder").permute(1, 0, 2, 3).cpu())
                    f["queries"].append(q_mask.sum(dim=1).cpu())
                    f["average"].add(attention, q_mask, k_mask, q_roles, k_roles)
                    js = head_stats.js_divergence_sums(attention, q_mask, causal=kind == "decoder")
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
                            first_example = {"tokens": part["tokens"]["encoder"][0][:n], "rollout": r[:, 0, :n, :n].cpu().numpy()}
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
    gradient (row b's loss depends only on row b's gates). Batches run in slices, as in `stream`:
    the backward pass keeps every layer's maps."""
    from tqdm import tqdm

    layout = interventions.shape(model)
    device = next(model.parameters()).device
    sums = {kind: torch.zeros(shape, dtype=torch.float64) for kind, shape in layout.items()}
    rows = 0
    model.eval()
    for batch in tqdm(batches, desc="gradients", unit="batch", disable=None if progress else True):
        for part in batch_slices(batch, task.sides, layout, device):
            n = part["inputs"]["input_ids"].shape[0]
            gates = {kind: torch.ones(n, *shape, device=device, requires_grad=True) for kind, shape in layout.items()}
            with interventions.gated(model, gates):
                losses = task.row_losses(model, part)
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


def symbol_blocking(task, model, peaks: dict, seed: int) -> dict:
    """Metrics with attention to the input's special symbols (`task.symbols`) blocked in the layer
    where their share peaks, in each kind whose keys are the input (encoder self-attention,
    cross-attention) and in all of them; and a control that blocks as many of the input's other
    tokens (`task.control_roles`), chosen at random, in the same layers."""
    rng = random.Random(seed)

    def symbols(roles: list[str]) -> list[int]:
        return [j for j, r in enumerate(roles) if r in task.symbols]

    def control(roles: list[str]) -> list[int]:
        pool = [j for j, r in enumerate(roles) if r in task.control_roles]
        return rng.sample(pool, min(len(symbols(roles)), len(pool)))

    conditions = {kind: {kind: [layer]} for kind, layer in peaks.items()}
    if len(peaks) > 1:
        conditions["both" if len(peaks) == 2 else "all"] = {kind: [layer] for kind, layer in peaks.items()}
    together = list(conditions)[-1]
    out = {"layers": peaks}
    for name, layers in conditions.items():
        out[f"symbols blocked ({name})"] = task.evaluate(model, blocked=(layers, symbols))
    out[f"control: as many {task.control_name} blocked ({together})"] = task.evaluate(model, blocked=(conditions[together], control))
    return out


def _checkpoint_points(task, run_dir: Path, compare: list[Path], batches: list[dict], progress: bool) -> list[dict]:
    """Context variance and accuracy of each model: the checkpoints kept in run_dir/checkpoints/
    (or, with `compare`, the final models of run_dir and the compared runs)."""
    from tqdm import tqdm

    from train.config import run_name

    if compare:
        models = [(str(p), run_name(p), p) for p in [run_dir] + compare]
    else:
        found = sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        models = [(p.name, p.name, p) for p in found if (p / "model.safetensors").exists()]
    points = []
    device = next(task.model.parameters()).device
    for name, label, path in tqdm(models, desc="checkpoints", unit="model", disable=None if progress else True):
        try:
            model = task.load_model(path).to(device)
        except Exception as err:
            raise QuadlabError(f"cannot load the model in {path}: {type(err).__name__}") from None
        model.eval()
        variance = stream(task, model, batches, False, with_attention=False)["variance"]
        points.append({"model": name, "label": label, "metrics": task.evaluate(model),
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
                  progress: bool = True, data: str | Path | None = None) -> dict:
    from train.runs import analysis, figures_dir, open_run, read_config

    run_dir = Path(run_dir)
    config = open_run(run_dir, "heads", data=data)
    compare = [Path(p) for p in compare or []]
    for other in compare:
        theirs = other / "tokenizer.json"
        try:
            if read_config(other).task == config.task and theirs.is_file() and theirs.read_bytes() != (run_dir / "tokenizer.json").read_bytes():
                raise QuadlabError(f"{other} has another tokenizer than {run_dir}; compare runs of the same task and vocabulary")
            open_run(other, "heads --compare", task=config.task)
        except QuadlabError as err:
            raise QuadlabError(f"--compare {other}: {err}") from None
    task = analysis(run_dir, "heads", split=split, limit=limit, eval_limit=eval_limit, data=data)
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
    batches = list(task.batches(batch_size))
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
        peaks = {kind: int(np.argmax([row["excess"] for row in result["kinds"][kind]["symbols"]["all"]]))
                 for kind in task.kinds if task.sides[kind][1] == "encoder"}
        clock = time.perf_counter()
        result["symbol_blocking"] = {"baseline": base, **symbol_blocking(task, model, peaks, config.seed)}
        timings["symbol blocking"] = time.perf_counter() - clock
    clock = time.perf_counter()
    points = _checkpoint_points(task, run_dir, compare, batches, progress)
    result["context_points"] = points
    result["context_correlation"] = correlations(task, points) if points else {}
    result["context_note"] = (f"{len(points)} {'runs' if compare else 'checkpoints'}" if points else
                              "no checkpoints in this run: train with --keep-checkpoints, or pass --compare RUN_DIR")
    timings["checkpoints"] = time.perf_counter() - clock
    result["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    return _write(task, result, arrays, found, run_dir, Path(out_dir or figures_dir(run_dir)))


# ---------------------------------------------------------------------------------------------
# Writing: tables, figures, report


def _write(task, result: dict, arrays: dict, found: dict, run_dir: Path, out_root: Path) -> dict:
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
            panels = [{"title": kind, "points": result["context_points"], "kind": kind, "metric": metric,
                       "correlation": result["context_correlation"].get(f"{kind}/{metric}", {})} for metric in task.metrics for kind in task.kinds]
            files = figures.context_scatter(panels, len(task.kinds), "Context-vector variance against accuracy", tmp / "context-variance-accuracy")
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


def context_figure(figure_dirs: list[Path], out: Path) -> dict:
    """The prior study's question across tasks: for each figures directory that `cli.py heads`
    wrote (a run with kept checkpoints, or with --compare), its encoder's mean layer context variance
    against the task's main metric, with Pearson r, side by side in one figure; the numbers as JSON."""
    from train.config import run_name

    panels = []
    for folder in figure_dirs:
        path = Path(folder) / "heads" / "heads.json"
        missing = QuadlabError(f"{folder} holds no context-variance points of `cli.py heads` (heads/heads.json); run "
                               f"`python cli.py heads RUN_DIR --out {folder}` on a run trained with --keep-checkpoints")
        try:
            found = json.loads(path.read_text())
            points, metric = found["context_points"], next(iter(found["baseline_metrics"] if "baseline_metrics" in found else
                                                                 found["context_points"][0]["metrics"]))
        except (OSError, ValueError, KeyError, StopIteration, IndexError, TypeError):
            raise missing from None
        if not points:  # a run without kept checkpoints: heads.json says so, and there is nothing to plot
            raise missing
        kind = "encoder"
        panels.append({"title": f"{found['task']} ({run_name(found['run'])})", "run": found["run"], "task": found["task"], "points": points,
                       "kind": kind, "metric": metric, "correlation": head_stats.pearson([p["variance"][kind]["mean"] for p in points],
                                                                                        [p["metrics"][metric] for p in points])})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = figures.context_scatter(panels, len(panels), "Context-vector variance against performance, by task", out / "context-variance-tasks")
    summary = [{k: p[k] for k in ("task", "run", "kind", "metric", "correlation")} | {"models": len(p["points"])} for p in panels]
    tmp = out / "context-variance-tasks.json.tmp"
    tmp.write_text(json.dumps(_finite(summary), indent=1) + "\n")
    os.replace(tmp, out / "context-variance-tasks.json")
    return {"figures": [str(out / f) for f in files], "panels": summary}
