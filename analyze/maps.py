"""`cli.py maps` and `cli.py explain`: attention figures and numbers for a run directory.

figures/<run>/
    index.html            offline report: every figure, and a viewer to pick kind, layer, head, example
    index.json            what every figure and array is
    maps.npz              the numbers behind every figure
    example-<name>/       per-head grids, single heads, layer x token summaries for one example;
                          neuron views (`--neuron`, analyze/neuron.py) for the first
    average/              dataset-averaged maps by position and by role, layer x role summaries,
                          symbol statistics per layer (also as symbols-<kind>.csv)
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from analyze import figures
from analyze.attention import AttentionAverage, batch_slices, capture, layer_token_summary
from analyze.report import ANALYSES, VIEWER_SCALE, thousandths, write_report
from gen import QuadlabError, swap_in


def _on(device, inputs: dict) -> dict:
    return {k: v.to(device) for k, v in inputs.items()}


def example_maps(model, sides: dict, example: dict) -> dict:
    """Per-head maps (L, H, Q, K) of each kind for one example of a task (`Analysis.example`),
    cropped to its tokens, and its layer x token summaries."""
    batch = example["batch"]
    captured = capture(model, **_on(next(model.parameters()).device, batch["inputs"]))
    tokens = {side: found[0] for side, found in batch["tokens"].items()}
    roles = {side: found[0, : len(tokens[side])].tolist() for side, found in batch["roles"].items()}
    out = {k: example[k] for k in ("name", "input", "output", "answer", "focus") if k in example} | {"tokens": tokens, "role_ids": roles, "sides": sides,
                                                                           "maps": {}, "summaries": {}, "inputs": batch["inputs"]}
    for kind, (attention, _, _) in captured.items():
        q, k = len(tokens[sides[kind][0]]), len(tokens[sides[kind][1]])
        out["maps"][kind] = attention[:, 0, :, :q, :k].cpu().numpy()
        out["summaries"][kind] = layer_token_summary(attention[:, 0], q, k)
    return out


def dataset_average(model, batches, sides: dict, roles: dict, progress: bool = False) -> dict:
    """{kind: AttentionAverage} over captured batches (train/tasks.py), streamed: memory does not
    grow with their number, nor past analyze.attention.ATTENTION_BYTES with their size."""
    from tqdm import tqdm

    from analyze.interventions import shape

    averages = {}
    device = next(model.parameters()).device
    layout = shape(model)
    for batch in tqdm(batches, desc="average", unit="batch", disable=None if progress else True):
        for part in batch_slices(batch, sides, layout, device):
            for kind, (attention, q_mask, k_mask) in capture(model, **_on(device, part["inputs"])).items():
                q_side, k_side = sides[kind]
                if kind not in averages:
                    averages[kind] = AttentionAverage(roles[q_side], roles[k_side])
                averages[kind].add(attention, q_mask, k_mask, part["roles"][q_side].to(device), part["roles"][k_side].to(device))
    return averages


def option_name(field: str) -> str:
    return f"--{field.replace('_', '-')}"


def check_given(task, given: dict | None, run_dir: Path, spelled=option_name) -> None:
    """The fields of a given example are the ones the run's task reads; `spelled` names a field as
    the user wrote it (an option of the command line; serve: a key of the request)."""
    from train.tasks import TASKS

    if given and not set(given) <= set(task.inputs):
        wanted = " and ".join(spelled(f) for f in task.inputs)
        extra = " and ".join(spelled(f) for f in given if f not in task.inputs)
        verb = "do" if len(given) - len(set(given) & set(task.inputs)) > 1 else "does"
        raise QuadlabError(f"{run_dir} is a {TASKS[task.name].title} run; {extra} {verb} not apply to it (give its example with {wanted})")


def check_heads(heads: list[tuple[int, int]], model) -> None:
    """Chosen (layer, head) pairs exist in every attention kind of the model."""
    from analyze.interventions import shape

    layout = shape(model)
    n_layers, n_heads = min(l for l, _ in layout.values()), min(h for _, h in layout.values())
    for layer, head in heads:
        if not (0 <= head < n_heads and 0 <= layer < n_layers):
            raise QuadlabError(f"layer {layer} head {head} is out of range: this model has layers 0..{n_layers - 1} "
                               f"and heads 0..{n_heads - 1}")


def render_example(example: dict, name: str, out_dir: Path, heads: list[tuple[int, int]], arrays: dict) -> list[dict]:
    """Per-head grids, chosen single heads and layer x token summaries of one example."""
    folder = out_dir / f"example-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    tokens = example["tokens"]
    written = []
    for kind, maps in example["maps"].items():
        q_labels, k_labels = (tokens[side] for side in example["sides"][kind])
        title = f"{figures.KIND_TITLES[kind]}, every layer and head; example {name}: {_short(example['input'])}"
        files = figures.head_grid(maps, q_labels, k_labels, kind, title, folder / f"{kind}-heads")
        written.append({"file": f"example-{name}/{files[0]}", "svg": f"example-{name}/{files[1]}", "kind": kind, "example": name, "what": "per-head maps"})
        for layer, head in heads:
            title = f"{figures.KIND_TITLES[kind]}, layer {layer} head {head}; example {name}: {_short(example['input'])}"
            files = figures.single_head(maps[layer, head], q_labels, k_labels, kind, title, folder / f"{kind}-L{layer}H{head}")
            written.append({"file": f"example-{name}/{files[0]}", "svg": f"example-{name}/{files[1]}", "kind": kind, "example": name,
                            "layer": layer, "head": head, "what": "single head"})
        title = f"{figures.KIND_TITLES[kind]}: attention each token receives by layer; example {name}"
        files = figures.layer_summary(example["summaries"][kind], k_labels, title, folder / f"{kind}-layer-token", "key token")
        written.append({"file": f"example-{name}/{files[0]}", "svg": f"example-{name}/{files[1]}", "kind": kind, "example": name, "what": "layer x token summary"})
        arrays[f"example-{name}/{kind}"] = maps.astype(np.float32)
        arrays[f"example-{name}/{kind}-layer-token"] = example["summaries"][kind].astype(np.float32)
    return written


def write_example(example: dict, name: str, out_dir: Path, heads: list[tuple[int, int]]) -> list[dict]:
    """`render_example` and its maps.npz as out_dir/example-NAME, built in a hidden sibling and renamed
    into place, so that Ctrl-C or a failure leaves the previous folder whole (`explain`, `ask`)."""
    final = out_dir / f"example-{name}"
    tmp = out_dir / f".example-{name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        arrays = {}
        written = render_example(example, name, tmp, heads, arrays)  # into tmp/example-NAME/
        np.savez_compressed(tmp / final.name / "maps.npz", **arrays)
        swap_in(tmp / final.name, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def _short(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def render_average(averages: dict, roles: dict, out_dir: Path, arrays: dict, split: str) -> list[dict]:
    folder = out_dir / "average"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, avg in averages.items():
        q_roles, k_roles = roles[kind]
        n = avg.examples
        base = f"{figures.KIND_TITLES[kind]}, mean over {n} {split} examples"
        position = avg.position_mean
        files = figures.head_grid(position, None, None, kind, f"{base}, aligned by position", folder / f"{kind}-position")
        written.append({"file": f"average/{files[0]}", "svg": f"average/{files[1]}", "kind": kind, "what": "average by position"})
        seen_q = [i for i, c in enumerate(avg.query_role_counts) if c > 0]
        seen_k = [i for i, c in enumerate(avg.key_role_baseline) if c > 0]
        by_role = avg.role_mean[:, :, seen_q][:, :, :, seen_k]
        files = figures.head_grid(by_role, [q_roles[i] for i in seen_q], [k_roles[i] for i in seen_k], kind,
                                  f"{base}, aligned by token role", folder / f"{kind}-roles")
        written.append({"file": f"average/{files[0]}", "svg": f"average/{files[1]}", "kind": kind, "what": "average by role"})
        summary = avg.layer_role_summary[:, seen_k]
        files = figures.layer_summary(summary, [k_roles[i] for i in seen_k], f"{base}: attention each role receives by layer",
                                      folder / f"{kind}-layer-role", "key role")
        written.append({"file": f"average/{files[0]}", "svg": f"average/{files[1]}", "kind": kind, "what": "layer x role summary"})
        share, baseline = avg.role_share[:, :, seen_k], avg.key_role_baseline[seen_k]
        for layer in range(share.shape[0]):
            files = figures.role_share(share[layer], [k_roles[i] for i in seen_k], baseline,
                                       f"{base}: share of attention by key role, layer {layer}", folder / f"{kind}-symbols-L{layer}")
            written.append({"file": f"average/{files[0]}", "svg": f"average/{files[1]}", "kind": kind, "layer": layer, "what": "symbol statistics"})
        with open(folder / f"symbols-{kind}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["layer", "head", *[k_roles[i] for i in seen_k]])
            w.writerow(["keys", "", *[f"{b:.6f}" for b in baseline]])
            for layer in range(share.shape[0]):
                for head in range(share.shape[1]):
                    w.writerow([layer, head, *[f"{v:.6f}" for v in share[layer, head]]])
        arrays[f"average/{kind}-position"] = position.astype(np.float32)
        arrays[f"average/{kind}-roles"] = avg.role_mean.astype(np.float32)
        arrays[f"average/{kind}-role-share"] = avg.role_share.astype(np.float32)
        arrays[f"average/{kind}-key-role-baseline"] = avg.key_role_baseline.astype(np.float32)
    return written


def viewer_rows(maps: np.ndarray) -> list:
    """(layers, heads, queries, keys) attention as nested lists of integer thousandths, each query's
    row cut after its last non-zero one (a causal map's masked half: a fifth of the characters of
    3-decimal floats is left); the viewer reads zeros there."""
    scaled = thousandths(maps)
    nonzero = scaled != 0
    ends = np.where(nonzero.any(-1), scaled.shape[-1] - np.argmax(nonzero[..., ::-1], axis=-1), 0)
    return [[[row[:end].tolist() for row, end in zip(head, head_ends)] for head, head_ends in zip(layer, layer_ends)]
            for layer, layer_ends in zip(scaled, ends)]


def render_maps(run_dir: Path, out_dir: Path | None = None, split: str = "test", limit: int = 0, examples: list[int] | None = None,
                given: dict | None = None, heads: list[tuple[int, int]] | None = None, batch_size: int = 256,
                bertviz: bool = False, progress: bool = True, neurons: list[tuple[str, int, int, int]] | None = None,
                data: str | Path | None = None) -> dict:
    """The standard set for a run of any task: maps of chosen examples (rows of the split, or one
    `given` by its fields, e.g. {"equation": ...}), averages over the split by position and by
    role, the report; the neuron view of each (kind, layer, head, query token) in `neurons` for the
    first shown example."""
    from analyze.neuron import check_neuron, render_neurons, viewer_vectors
    from train.runs import analysis, figures_dir

    run_dir = Path(run_dir)
    task = analysis(run_dir, "maps", split=split, limit=limit, data=data)
    check_given(task, given, run_dir)
    out_dir = Path(out_dir or figures_dir(run_dir))
    heads = heads or []
    model = task.model.to("cuda") if torch.cuda.is_available() else task.model
    check_heads(heads, model)
    chosen = [] if given else (examples if examples is not None else [0])
    for index in chosen:
        if not 0 <= index < task.n_rows:
            raise QuadlabError(f"example {index} is out of range: the {task.split} split has {task.n_rows} rows here; "
                               f"give --example 0 to {task.n_rows - 1}")
    shown = [example_maps(model, task.sides, task.example(index=i)) for i in chosen]
    if given:
        shown.append(example_maps(model, task.sides, task.example(given=given)))
    if neurons and not shown:
        raise QuadlabError("the neuron view is drawn on an example: give one with --example or the input options")
    for kind, layer, head, query in neurons or []:
        check_neuron(model, shown[0]["inputs"], kind, layer, head, query)
    start = time.perf_counter()
    averages = dataset_average(model, task.batches(batch_size), task.sides, task.roles, progress)
    roles = {kind: (task.roles[q], task.roles[k]) for kind, (q, k) in task.sides.items()}
    material = {"split": task.split, "examples_averaged": task.n_rows, "average_seconds": round(time.perf_counter() - start, 2),
                "averaged_on": task.averaged_on}

    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        arrays, written, viewed = {}, [], []
        for example in shown:
            written += render_example(example, example["name"], tmp, heads, arrays)
            viewed.append({k: example[k] for k in ("name", "input", "output", "tokens")} |
                          {"maps": {k: viewer_rows(v) for k, v in example["maps"].items()}, "neuron": viewer_vectors(model, example)})
        if neurons:
            written += render_neurons(model, shown[0], neurons, tmp, arrays)
        written += render_average(averages, roles, tmp, arrays, material["split"])
        if bertviz and shown:
            written += export_bertviz(shown[0], tmp)
        np.savez_compressed(tmp / "maps.npz", **arrays)
        index = {
            "run": str(run_dir), "task": task.name, "split": material["split"], "examples_averaged": material["examples_averaged"],
            "average_seconds": material["average_seconds"], "averaged_on": material["averaged_on"],
            "examples": [{k: e[k] for k in ("name", "input", "output")} for e in viewed],
            "roles": {kind: {"query": list(q), "key": list(k)} for kind, (q, k) in roles.items()},
            "figures": written, "arrays": {name: list(a.shape) for name, a in arrays.items()},
        }
        (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "viewer.json").write_text(json.dumps({"map_scale": VIEWER_SCALE, "examples": viewed}, separators=(",", ":")))
        for folder in ANALYSES:  # what `cli.py heads`, `probe` and `patch` wrote stays, and stays in the report
            if (out_dir / folder).is_dir():
                shutil.copytree(out_dir / folder, tmp / folder)  # a copy: a failure below leaves the old folder whole
        write_report(tmp)
        swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out_dir": str(out_dir), **index}


def export_bertviz(example: dict, out_dir: Path) -> list[dict]:
    """bertviz's head_view and model_view pages for one example, from its captured maps (they load
    their scripts from a CDN, so they need a network; index.html does not)."""
    try:
        from bertviz import head_view, model_view
    except ImportError:
        raise QuadlabError("--bertviz needs the bertviz package: pip install bertviz (or pip install -e '.[bertviz]')") from None
    layers = {kind: tuple(torch.from_numpy(m[l][None]) for l in range(m.shape[0])) for kind, m in example["maps"].items()}
    tokens = example["tokens"]
    if "cross" in layers:  # encoder-decoder: bertviz takes the three kinds and both token lists
        args = {"encoder_attention": layers["encoder"], "decoder_attention": layers["decoder"], "cross_attention": layers["cross"],
                "encoder_tokens": tokens["encoder"], "decoder_tokens": tokens["decoder"]}
    else:
        args = {"attention": layers["encoder"], "tokens": tokens["encoder"]}
    written = []
    for name, view in (("bertviz-head-view.html", head_view), ("bertviz-model-view.html", model_view)):
        (out_dir / name).write_text(view(html_action="return", **args).data)
        written.append({"file": name, "kind": "all", "what": "bertviz view (needs a network)"})
    return written


def most_attended(task, example: dict) -> dict:
    """{label: per layer, the key token that the task's chosen queries attend to most (mean over
    heads and those queries), with its position and that mean}, as `task.attended` lists them, and
    for the single queries an example may point at (`focus`: label, kind, query each; the
    quadratic task's first wrong token), over all keys."""

    def most_read(kind: str, queries: list[int], keys: list[int]) -> list[str]:
        if not queries or not keys:
            return []
        received = example["maps"][kind][:, :, queries][:, :, :, keys].mean(axis=(1, 2))  # (layers, keys)
        tokens = example["tokens"][task.sides[kind][1]]
        return [f"{tokens[keys[int(np.argmax(r))]]!r} (position {keys[int(np.argmax(r))]}, {float(r.max()):.2f})" for r in received]

    out = {}
    for label, kind, query_roles, key_roles in task.attended:
        q_side, k_side = task.sides[kind]
        names = {side: [task.roles[side][r] for r in example["role_ids"][side]] for side in (q_side, k_side)}
        out[label] = most_read(kind, [i for i, r in enumerate(names[q_side]) if query_roles is None or r in query_roles],
                               [i for i, r in enumerate(names[k_side]) if key_roles is None or r in key_roles])
    for focus in example.get("focus", []):
        out[focus["label"]] = most_read(focus["kind"], [focus["query"]], list(range(len(example["tokens"][task.sides[focus["kind"]][1]]))))
    return out


def explain(run_dir: Path, given: dict, out_dir: Path | None = None, heads: list[tuple[int, int]] | None = None,
            command: str = "explain") -> dict:
    """One given example of any task: the model's answer (with what the task reports: the grader's
    verdict, the answer's score, the label's probabilities), for each layer the token attended to
    most (`task.attended`), and the per-head figures; the lines to print are under "lines"."""
    from train.runs import analysis, figures_dir

    run_dir = Path(run_dir)
    task = analysis(run_dir, command, split=None)  # the given example only: the run's data need not be here
    check_given(task, given, run_dir)
    heads = heads or []
    check_heads(heads, task.model)
    example = example_maps(task.model, task.sides, task.example(given=given))
    result = {"input": example["input"], "output": example["output"], "answer": example["answer"], "attended": most_attended(task, example)}
    out_dir = Path(out_dir or figures_dir(run_dir) / command)
    written = write_example(example, command, out_dir, heads)
    return {**result, "lines": task.answer_lines(result), "figures": [str(out_dir / w["file"]) for w in written]}
