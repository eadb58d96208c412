"""`cli.py maps` and `cli.py explain`: attention figures and numbers for a run directory.

figures/<run>/
    index.html            offline report: every figure, and a viewer to pick kind, layer, head, example
    index.json            what every figure and array is
    maps.npz              the numbers behind every figure
    example-<name>/       per-head grids, single heads, layer x token summaries for one example
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
from analyze.attention import (
    EQUATION_ROLES, KINDS, SOLUTION_ROLES, AttentionAverage, capture, equation_roles, layer_token_summary, solution_roles,
)
from gen import QuadlabError, swap_in

ROLES = {"encoder": (EQUATION_ROLES, EQUATION_ROLES), "decoder": (SOLUTION_ROLES, SOLUTION_ROLES), "cross": (SOLUTION_ROLES, EQUATION_ROLES)}


def _display(tokens: list[str]) -> list[str]:
    return ["<start>" if t == "<pad>" else t for t in tokens]


def teacher_forced_batch(tokenizer, equations: list[str], solutions: list[str]) -> dict:
    """Tensors for one teacher-forced pass (decoder input = start token + solution; labels = solution
    + </s>), with the tokens and role indices of every position (-1 for padding)."""
    pad = tokenizer.pad_token_id
    enc = tokenizer(equations)["input_ids"]
    targets = tokenizer(solutions)["input_ids"]
    dec = [[pad] + ids[:-1] for ids in targets]  # drop the final </s>: it is only predicted
    width_enc, width_dec = max(map(len, enc)), max(map(len, dec))

    def pad_to(rows, width, value):
        return torch.tensor([r + [value] * (width - len(r)) for r in rows])

    enc_tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in enc]
    dec_tokens = [_display(tokenizer.convert_ids_to_tokens(ids)) for ids in dec]
    enc_roles = [[EQUATION_ROLES.index(r) for r in equation_roles(t)] for t in enc_tokens]
    dec_roles = [[SOLUTION_ROLES.index(r) for r in solution_roles(t)] for t in dec_tokens]
    input_ids, decoder_input_ids = pad_to(enc, width_enc, pad), pad_to(dec, width_dec, pad)
    return {
        "input_ids": input_ids, "attention_mask": pad_to([[1] * len(r) for r in enc], width_enc, 0),
        "decoder_input_ids": decoder_input_ids, "decoder_attention_mask": pad_to([[1] * len(r) for r in dec], width_dec, 0),
        "encoder_tokens": enc_tokens, "decoder_tokens": dec_tokens,
        "encoder_roles": pad_to(enc_roles, width_enc, -1), "decoder_roles": pad_to(dec_roles, width_dec, -1),
        "labels": pad_to(targets, width_dec, -100),  # what each decoder position predicts
    }


def _capture_batch(model, batch: dict) -> dict:
    device = next(model.parameters()).device
    return capture(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                   batch["decoder_input_ids"].to(device), batch["decoder_attention_mask"].to(device))


def example_maps(model, tokenizer, equation: str, solution: str) -> dict:
    """Per-head maps (L, H, Q, K) of each kind for one example, cropped to its tokens."""
    batch = teacher_forced_batch(tokenizer, [equation], [solution])
    captured = _capture_batch(model, batch)
    tokens = {"encoder": batch["encoder_tokens"][0], "decoder": batch["decoder_tokens"][0]}
    out = {"input": equation, "output": solution, "tokens": tokens, "maps": {}, "summaries": {}}
    for kind, (attention, _, _) in captured.items():
        q_side, k_side = ("encoder", "encoder") if kind == "encoder" else ("decoder", "decoder" if kind == "decoder" else "encoder")
        q, k = len(tokens[q_side]), len(tokens[k_side])
        maps = attention[:, 0, :, :q, :k].cpu().numpy()
        out["maps"][kind] = maps
        out["summaries"][kind] = layer_token_summary(attention[:, 0], q, k)
    return out


def check_encodable(tokenizer, equation: str) -> None:
    ids = tokenizer(equation)["input_ids"]
    if tokenizer.unk_token_id in ids:
        bad = sorted({ch for ch in equation if tokenizer.convert_tokens_to_ids(ch) == tokenizer.unk_token_id})
        raise QuadlabError(f"the model's tokenizer cannot encode {''.join(bad)!r} in {equation!r}; write it like 7x^2+3556x+451612=0")


def dataset_average(model, tokenizer, equations: list[str], solutions: list[str], batch_size: int, progress: bool = False) -> dict:
    """{kind: AttentionAverage} over the rows, streamed batch by batch in order of length."""
    from tqdm import tqdm

    averages = {kind: AttentionAverage(*ROLES[kind]) for kind in KINDS}
    order = sorted(range(len(equations)), key=lambda i: len(solutions[i]))
    for start in tqdm(range(0, len(order), batch_size), desc="average", unit="batch", disable=None if progress else True):
        idx = order[start : start + batch_size]
        batch = teacher_forced_batch(tokenizer, [equations[i] for i in idx], [solutions[i] for i in idx])
        captured = _capture_batch(model, batch)
        roles = {"encoder": batch["encoder_roles"], "decoder": batch["decoder_roles"]}
        for kind, (attention, q_mask, k_mask) in captured.items():
            q_side = "encoder" if kind == "encoder" else "decoder"
            k_side = "decoder" if kind == "decoder" else "encoder"
            device = attention.device
            averages[kind].add(attention, q_mask, k_mask, roles[q_side].to(device), roles[k_side].to(device))
    return averages


def check_heads(heads: list[tuple[int, int]], layers: dict, n_heads: int) -> None:
    for layer, head in heads:
        if not 0 <= head < n_heads or any(not 0 <= layer < n for n in layers.values()):
            raise QuadlabError(f"layer {layer} head {head} is out of range: this model has layers 0..{min(layers.values()) - 1} "
                               f"and heads 0..{n_heads - 1}")


def render_example(example: dict, name: str, out_dir: Path, heads: list[tuple[int, int]], arrays: dict) -> list[dict]:
    """Per-head grids, chosen single heads and layer x token summaries of one example."""
    folder = out_dir / f"example-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    tokens = example["tokens"]
    written = []
    for kind, maps in example["maps"].items():
        q_labels = tokens["encoder"] if kind == "encoder" else tokens["decoder"]
        k_labels = tokens["decoder"] if kind == "decoder" else tokens["encoder"]
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


def render_maps(run_dir: Path, out_dir: Path | None = None, split: str = "test", limit: int = 0, examples: list[int] | None = None,
                equation: str | None = None, heads: list[tuple[int, int]] | None = None, batch_size: int = 256,
                bertviz: bool = False, progress: bool = True, question: str | None = None, context: str | None = None) -> dict:
    """The standard set for a run (quadratic or SQuAD): maps of chosen examples, averages over a
    split by position and by role, the report."""
    from analyze.report import write_report
    from train.runs import open_run

    run_dir = Path(run_dir)
    task = open_run(run_dir, "maps").task
    if task == "squad" and equation:
        raise QuadlabError(f"{run_dir} is a SQuAD run; --equation is for quadratic runs (give --question and --context)")
    if task != "squad" and (question or context):
        raise QuadlabError(f"{run_dir} is a quadratic run; --question and --context are for SQuAD runs (give --equation)")
    out_dir = Path(out_dir or Path("figures") / run_dir.name)
    heads = heads or []
    if task == "squad":
        from analyze import squad_maps

        material = squad_maps.material(run_dir, limit, examples, question, context, heads, batch_size, progress)
    else:
        material = _quadratic_material(run_dir, split, limit, examples, equation, heads, batch_size, progress)

    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        arrays, written, shown = {}, [], []
        for example in material["examples"]:
            written += render_example(example, example["name"], tmp, heads, arrays)
            shown.append({k: example[k] for k in ("name", "input", "output", "tokens")} |
                         {"maps": {k: np.round(v, 3).tolist() for k, v in example["maps"].items()}})
        written += render_average(material["averages"], material["roles"], tmp, arrays, material["split"])
        if bertviz and shown:
            written += export_bertviz(material["examples"][0], tmp)
        np.savez_compressed(tmp / "maps.npz", **arrays)
        index = {
            "run": str(run_dir), "task": task, "split": material["split"], "examples_averaged": material["examples_averaged"],
            "average_seconds": material["average_seconds"], "averaged_on": material["averaged_on"],
            "examples": [{k: e[k] for k in ("name", "input", "output")} for e in shown],
            "roles": {kind: {"query": list(q), "key": list(k)} for kind, (q, k) in material["roles"].items()},
            "figures": written, "arrays": {name: list(a.shape) for name, a in arrays.items()},
        }
        (tmp / "index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "viewer.json").write_text(json.dumps({"examples": shown}, separators=(",", ":")))
        if (out_dir / "heads" / "heads.json").exists():  # `cli.py heads` output stays, and stays in the report
            shutil.copytree(out_dir / "heads", tmp / "heads")  # a copy: a failure below leaves the old folder whole
        write_report(tmp)
        swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out_dir": str(out_dir), **index}


def _quadratic_material(run_dir, split, limit, examples, equation, heads, batch_size, progress) -> dict:
    from train.quadratic import decode, load_run, load_splits

    model, tokenizer, config = load_run(run_dir, "maps")
    if torch.cuda.is_available():
        model = model.to("cuda")
    check_heads(heads, {"encoder": model.config.num_layers, "decoder": model.config.num_decoder_layers}, model.config.num_heads)
    dataset = load_splits(config)[split]
    if limit:
        dataset = dataset.select(range(min(limit, len(dataset))))
    columns = dataset.select_columns(["equation", "solution"]).to_dict()
    chosen = [] if equation else (examples if examples is not None else [0])
    for index in chosen:
        if not 0 <= index < len(dataset):
            raise QuadlabError(f"example {index} is out of range: the {split} split has {len(dataset)} rows here")
    if equation:
        check_encodable(tokenizer, equation)
    to_show = [(str(i), columns["equation"][i]) for i in chosen] + ([("given", equation)] if equation else [])
    predictions = decode(model, tokenizer, [eq for _, eq in to_show], batch_size=64)
    shown = []
    for (name, eq), candidates in zip(to_show, predictions):
        shown.append({"name": name, **example_maps(model, tokenizer, eq, candidates[0])})  # the model's own answer, teacher-forced
    start = time.perf_counter()
    averages = dataset_average(model, tokenizer, columns["equation"], columns["solution"], batch_size, progress)
    return {"examples": shown, "averages": averages, "roles": ROLES, "split": split, "examples_averaged": len(dataset),
            "average_seconds": round(time.perf_counter() - start, 2), "averaged_on": "the split's reference solutions, teacher-forced"}


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


def explain(run_dir: Path, equation: str, out_dir: Path | None = None, heads: list[tuple[int, int]] | None = None) -> dict:
    """The model's solution, the grader's verdict, the most attended input token per layer, and
    the per-head figures for the equation."""
    from gen.grader import GradeError, grade, parse_equation
    from train.quadratic import decode, load_run

    run_dir = Path(run_dir)
    model, tokenizer, _ = load_run(run_dir, "explain")
    from gen.equations import write_equation

    try:
        a, b, c = parse_equation(equation)
    except GradeError as err:
        raise QuadlabError(f"cannot read the equation: {err}") from None
    equation = write_equation(a, b, c)  # the form the model was trained on: `x^2 - 5x + 6 = 0` -> 1x^2-5x+6=0
    check_encodable(tokenizer, equation)
    heads = heads or []
    check_heads(heads, {"encoder": model.config.num_layers, "decoder": model.config.num_decoder_layers}, model.config.num_heads)
    solution = decode(model, tokenizer, [equation], batch_size=1)[0][0]
    verdict = grade(a, b, c, solution)
    example = example_maps(model, tokenizer, equation, solution)
    enc_tokens = example["tokens"]["encoder"]
    most = {kind: [enc_tokens[int(np.argmax(row))] + f" (position {int(np.argmax(row))}, {float(row.max()):.2f})"
                   for row in example["summaries"][kind]] for kind in ("encoder", "cross")}
    out_dir = Path(out_dir or Path("figures") / run_dir.name / "explain")
    written = write_example(example, "explain", out_dir, heads)
    return {"equation": equation, "solution": solution, "verdict": verdict.as_dict(), "most_attended_input_token": most,
            "figures": [str(out_dir / w["file"]) for w in written]}
