"""The neuron view (bertviz's third view, Vig 2019): how one query token's attention comes about.

For a layer, head and query token of one example: the query vector q, every key vector k_j, their
elementwise products q*k_j, the scores s_j = scaling * sum(q*k_j), the bias b_j that the model adds
before the softmax, the logits s_j + b_j and the attention softmax(logits), which is the model's own.

- scaling: T5 and mT5 do not scale (1); BERT, RoBERTa, ELECTRA and DistilBERT use 1/sqrt(d);
  DeBERTa-v2 1/sqrt(d * (1 + number of disentangled terms)).
- bias: T5's relative position bias (computed by each stack's first layer and shared by the others;
  none in cross-attention), DeBERTa-v2's content-to-position and position-to-content terms (the
  module's own `disentangled_attention_bias` on the caught q and k), and the attention mask (padding;
  the decoder's causal mask), which puts the lowest float on hidden keys (`masked`).

q and k are the outputs of the attention module's query and key projections, caught by forward hooks
during one pass of `analyze.attention.capture`, which also gives the model's attention weights.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch

from analyze.attention import capture
from analyze.interventions import sites
from analyze.report import VIEWER_SCALE, thousandths
from gen import QuadlabError

# the query and key projections of each supported attention module: T5, BERT-style, DistilBERT, DeBERTa-v2
PROJECTIONS = (("q", "k"), ("query", "key"), ("q_lin", "k_lin"), ("query_proj", "key_proj"))


def _projections(attention: torch.nn.Module) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    for q, k in PROJECTIONS:
        if isinstance(getattr(attention, q, None), torch.nn.Linear) and isinstance(getattr(attention, k, None), torch.nn.Linear):
            return getattr(attention, q), getattr(attention, k)
    raise QuadlabError(f"the neuron view cannot find the query and key projections of {type(attention).__name__}")


def _deberta_scale_factor(attention) -> int:
    return 1 + sum(term in attention.pos_att_type for term in ("c2p", "p2c"))


def _scaling(model_type: str, attention, head_dim: int) -> float:
    if model_type == "deberta-v2":
        return float(head_dim * _deberta_scale_factor(attention)) ** -0.5
    return float(attention.scaling)


def attention_parts(model, inputs: dict, chosen: dict[str, list[int]]) -> dict:
    """One forward pass (`capture`) that also catches, for the chosen layers of each kind,
    {kind: {layer: {"q": (B, H, Q, d), "k": (B, H, K, d), "scaling": float, "bias": (B or 1, H, Q, K)
    (position terms + mask, as the model adds them), "masked": (B or 1, 1 or H, Q, K) bool,
    "attention": (B, H, Q, K) the model's own}}}, all float32 on the CPU."""
    model_type = model.config.model_type
    found = sites(model)
    parts: dict = {kind: {layer: {} for layer in layers} for kind, layers in chosen.items()}
    handles = []

    def keep_first(slot: dict, name: str):
        # DeBERTa-v2 with shared keys runs the projections again on its position embeddings: keep the
        # first call, the one on the hidden states
        def hook(module, args, output):
            slot.setdefault(name, output.detach())
        return hook

    for kind, layers in chosen.items():
        for layer in layers:
            site, slot = found[kind][layer], parts[kind][layer]
            q_proj, k_proj = _projections(site.attention)
            handles += [q_proj.register_forward_hook(keep_first(slot, "q_out")), k_proj.register_forward_hook(keep_first(slot, "k_out"))]
            # the mask comes by name (BERT, T5) or by position (DeBERTa-v2)
            position = list(inspect.signature(site.attention.forward).parameters).index(site.mask_argument)

            def hook(module, args, kwargs, output, site=site, slot=slot, position=position):
                mask = args[position] if len(args) > position else kwargs.get(site.mask_argument)
                slot["mask"] = None if mask is None else mask.detach()
                slot["keeps"] = site.mask_keeps or (mask is not None and mask.dtype == torch.bool)
                if model_type in ("t5", "mt5"):
                    slot["position"] = output[1].detach()  # (1 or B, H, Q, K): T5Attention returns it
                elif model_type == "deberta-v2" and module.relative_attention:
                    heads = site.heads
                    q = module.transpose_for_scores(slot["q_out"], heads)
                    k = module.transpose_for_scores(slot["k_out"], heads)
                    bias = module.disentangled_attention_bias(q, k, kwargs.get("relative_pos"), kwargs.get("rel_embeddings"),
                                                              _deberta_scale_factor(module))
                    slot["position"] = bias.view(-1, heads, *bias.shape[-2:]).detach()

            handles.append(site.attention.register_forward_hook(hook, with_kwargs=True))
    device = next(model.parameters()).device
    try:
        captured = capture(model, **{name: value.to(device) for name, value in inputs.items()})
    finally:
        for handle in handles:
            handle.remove()

    for kind, layers in parts.items():
        for layer, slot in layers.items():
            site = found[kind][layer]
            heads, d = site.heads, slot["q_out"].shape[-1] // site.heads
            q = slot["q_out"].float().view(*slot["q_out"].shape[:2], heads, d).transpose(1, 2)
            k = slot["k_out"].float().view(*slot["k_out"].shape[:2], heads, d).transpose(1, 2)
            lowest, full = torch.finfo(torch.float32).min, (q.shape[2], k.shape[2])
            mask = slot["mask"]
            if mask is None:
                masked, additive = torch.zeros((1, 1, *full), dtype=torch.bool), torch.zeros((1, 1, *full))
            elif slot["keeps"]:  # 1 / True where attention is allowed: the model fills the rest with the lowest float
                masked = ~mask.bool().cpu()
                additive = torch.zeros(masked.shape)
            else:  # added to the scores: the lowest float where a key is hidden
                additive = mask.float().cpu()
                masked = additive <= lowest / 2
            position = slot.get("position")
            bias = additive + (position.float().cpu() if position is not None else 0.0)
            masked = masked.expand(-1, -1, *full)
            bias = bias.expand(-1, heads, *full).masked_fill(masked, lowest)
            parts[kind][layer] = {"q": q.cpu(), "k": k.cpu(), "scaling": _scaling(model_type, site.attention, d), "bias": bias.cpu(),
                                  "masked": masked.cpu(), "attention": captured[kind][0][layer].cpu()}
    return parts


def _query_side(inputs: dict, kind: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The query side's ids and mask of a kind."""
    if kind == "encoder":
        return inputs["input_ids"], inputs.get("attention_mask")
    return inputs["decoder_input_ids"], inputs.get("decoder_attention_mask")


def check_neuron(model, inputs: dict, kind: str, layer: int, head: int, query: int, row: int = 0) -> None:
    """A one-line QuadlabError unless the model has that kind, layer and head, and the inputs that
    row and query token (a real token, not padding)."""
    found = sites(model)
    if kind not in found:
        raise QuadlabError(f"this model has no {kind} attention; its kinds are {', '.join(found)}")
    layers, heads = len(found[kind]), found[kind][0].heads
    if not 0 <= layer < layers:
        raise QuadlabError(f"layer {layer} is out of range: the {kind} attention of this model has layers 0..{layers - 1}")
    if not 0 <= head < heads:
        raise QuadlabError(f"head {head} is out of range: this model has heads 0..{heads - 1}")
    ids, mask = _query_side(inputs, kind)
    if not 0 <= row < ids.shape[0]:
        raise QuadlabError(f"row {row} is out of range: the inputs hold rows 0..{ids.shape[0] - 1}")
    tokens = int(mask[row].sum()) if mask is not None else ids.shape[1]
    if not 0 <= query < tokens or (mask is not None and not mask[row, query]):
        side = "input" if kind == "encoder" else "output"
        raise QuadlabError(f"query token {query} is out of range: the {side} of row {row} has tokens 0..{tokens - 1}")


def neuron_view(model, inputs: dict, kind: str, layer: int, head: int, query: int, row: int = 0) -> dict:
    """The neuron view of one query token (module docstring): {"query" (d,), "keys" (K, d), "products"
    (K, d), "scores" (K,), "bias" (K,), "logits" (K,), "attention" (K,), "masked" (K,) bool, "scaling"},
    numpy float32; K counts the row's padding keys too (masked). `inputs` are the model's keyword
    arguments as `analyze.attention.capture` takes them."""
    check_neuron(model, inputs, kind, layer, head, query, row)
    part = attention_parts(model, inputs, {kind: [layer]})[kind][layer]
    q, keys = part["q"][row, head, query], part["k"][row, head]
    products = q[None, :] * keys
    scores = products.sum(dim=-1) * part["scaling"]
    bias = part["bias"][min(row, part["bias"].shape[0] - 1), head, query]
    masked = part["masked"][min(row, part["masked"].shape[0] - 1), 0 if part["masked"].shape[1] == 1 else head, query]
    return {"query": q.numpy(), "keys": keys.numpy(), "products": products.numpy(), "scores": scores.numpy(), "bias": bias.numpy(),
            "logits": (scores + bias).numpy(), "attention": part["attention"][row, head, query].numpy(), "masked": masked.numpy(),
            "scaling": part["scaling"]}


def viewer_vectors(model, example: dict) -> dict:
    """What the report's viewer needs to draw the neuron view of any kind, layer, head and query token
    of one shown example (`analyze.maps.example_maps`, which keeps its model inputs), per kind:
    "scaling"; "unit" (VIEWER_SCALE: "q", "k" and the bias's "values" are integers of 1/unit);
    "q" [L][H][Q][d] and "k" [L][H][K][d] cropped to the example's tokens; "bias" without the mask:
    {"by": "none"}, {"by": "distance", "values": [L or 1][H][Q+K-1]} when it depends on the key's
    distance j - i alone (T5; index j - i + Q - 1) or {"by": "pair", "values": [L or 1][H][Q][K]}
    (DeBERTa-v2), one layer when every layer has the same;
    "masked": one string of 0/1 per query, 1 where the mask hides the key (empty when none is hidden)."""
    found = sites(model)
    parts = attention_parts(model, example["inputs"], {kind: list(range(len(layers))) for kind, layers in found.items()})
    out = {}
    for kind, layers in parts.items():
        n_q, n_k = (len(example["tokens"][side]) for side in example["sides"][kind])
        ordered = [layers[l] for l in range(len(layers))]
        masked = ordered[0]["masked"][0, 0, :n_q, :n_k].numpy()
        bias = np.stack([np.where(masked, 0.0, p["bias"][0, :, :n_q, :n_k].numpy()) for p in ordered])  # (L, H, Q, K)
        if all(np.array_equal(b, bias[0]) for b in bias):
            bias = bias[:1]
        distance = np.arange(n_k)[None, :] - np.arange(n_q)[:, None] + n_q - 1  # (Q, K): index of j - i
        by_distance = np.zeros((*bias.shape[:2], n_q + n_k - 1))
        by_distance[:, :, distance] = bias
        if not bias.any():
            described = {"by": "none"}
        elif np.allclose(by_distance[:, :, distance], bias, rtol=0, atol=1e-6):
            described = {"by": "distance", "values": thousandths(by_distance).tolist()}
        else:
            described = {"by": "pair", "values": thousandths(bias).tolist()}
        out[kind] = {"scaling": ordered[0]["scaling"],
                     "unit": VIEWER_SCALE, "q": thousandths(torch.stack([p["q"][0, :, :n_q] for p in ordered]).numpy()).tolist(),
                     "k": thousandths(torch.stack([p["k"][0, :, :n_k] for p in ordered]).numpy()).tolist(),
                     "bias": described, "masked": ["".join("1" if m else "0" for m in row) for row in masked] if masked.any() else []}
    return out


def render_neurons(model, example: dict, specs: list[tuple[str, int, int, int]], out_dir: Path, arrays: dict) -> list[dict]:
    """A figure (PNG and SVG) and the arrays of the neuron view for each (kind, layer, head, query) of
    one shown example, in out_dir/example-NAME/; arrays under example-NAME/neuron-KIND-LlHhQq/."""
    from analyze import figures

    name, written = example["name"], []
    folder = out_dir / f"example-{name}"
    folder.mkdir(parents=True, exist_ok=True)
    for kind, layer, head, query in specs:
        q_tokens, k_tokens = (example["tokens"][side] for side in example["sides"][kind])
        view = neuron_view(model, example["inputs"], kind, layer, head, query)
        view = {key: value[: len(k_tokens)] if key not in ("query", "scaling") else value for key, value in view.items()}
        stem = f"neuron-{kind}-L{layer}H{head}Q{query}"
        title = f"Neuron view: {figures.KIND_TITLES[kind]}, layer {layer} head {head}, query token {query} {q_tokens[query]!r}; example {name}"
        files = _draw(view, k_tokens, title, folder / stem)
        written.append({"file": f"example-{name}/{files[0]}", "svg": f"example-{name}/{files[1]}", "kind": kind, "example": name,
                        "layer": layer, "head": head, "query": query, "what": "neuron view"})
        for key in ("query", "keys", "products", "scores", "bias", "logits", "attention", "masked"):
            arrays[f"example-{name}/{stem}/{key}"] = view[key]
    return written


def _draw(view: dict, k_tokens: list[str], title: str, path: Path) -> list[str]:
    """Keys as rows: the query vector above the key vectors, their products, then the score, bias and
    attention of each key as bars (masked keys marked, their bias left out). Fixed margins: constrained
    layout took most of the time with many keys."""
    import matplotlib.pyplot as plt

    from analyze.figures import save, wrapped

    keys, products, masked = view["keys"], view["products"], view["masked"]
    n, d = keys.shape
    bar = 1.9  # inches a bar panel gets: its title (up to two lines) fits over it whatever d is
    width, height = min(30.0, 0.16 * 2 * max(d, 4) + 3 * bar + 1.8), max(4.0, 0.15 * n + 2.4)
    fig = plt.figure(figsize=(width, height))
    grid = fig.add_gridspec(2, 5, height_ratios=[1, max(n, 1)], width_ratios=[0.16 * max(d, 4)] * 2 + [bar] * 3, hspace=0.9 / (height - 1.3),
                            wspace=0.12, left=1.0 / width, right=1 - 0.2 / width, top=1 - 0.75 / height, bottom=0.55 / height)
    size = max(4.0, min(8.0, 600 / max(n, 1)))
    rows = np.arange(n)

    def heatmap(ax, values, bound, label):
        ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
        ax.set_title(f"{label} (colour: -{bound:.2g} blue .. {bound:.2g} red)", fontsize=7)
        ax.tick_params(labelsize=6)

    bound = max(float(np.abs(keys).max(initial=0)), float(np.abs(view["query"]).max(initial=0)), 1e-9)
    top = fig.add_subplot(grid[0, 0])
    heatmap(top, view["query"][None, :], bound, "query vector q")
    top.set_xticks([])
    top.set_yticks([0], ["q"], fontsize=size)
    left = fig.add_subplot(grid[1, 0])
    heatmap(left, keys, bound, "key vectors k")
    left.set_yticks(rows, k_tokens, fontsize=size)
    left.set_xlabel("dimension", fontsize=7)
    middle = fig.add_subplot(grid[1, 1])
    heatmap(middle, products, max(float(np.abs(products).max(initial=0)), 1e-9), "q × k")
    middle.set_yticks([])
    middle.set_xlabel("dimension", fontsize=7)
    bias = np.where(masked, 0.0, view["bias"])
    bars = ((f"score = {view['scaling']:.3g} × Σ q×k", view["scores"], "#4c72b0"), ("bias (position terms; x: masked)", bias, "#dd8452"),
            ("attention = softmax(score + bias)", view["attention"], "#55a868"))
    for column, (label, values, colour) in enumerate(bars):
        ax = fig.add_subplot(grid[1, 2 + column])
        ax.barh(rows, values, color=colour, height=0.8)
        ax.axvline(0, color="#888", linewidth=0.6)
        if column == 1 and masked.any():
            ax.plot(np.zeros(int(masked.sum())), rows[masked], "x", color="#888", markersize=min(size, 5))
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_yticks([])
        ax.tick_params(labelsize=6)
        ax.set_title(wrapped(label, 7, bar - 0.1)[0], fontsize=7)
        if column == 2:
            ax.set_xlim(0, 1)
    # at the top in inches: suptitle's default place, 2% of a tall figure down, fell into the panels
    fig.suptitle(wrapped(title, 9, width - 0.2)[0], y=1 - 0.1 / height, va="top", fontsize=9)
    return save(fig, path)
