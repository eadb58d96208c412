"""`cli.py heads`: every statistic on hand-made attention, the pattern templates on synthetic maps,
the gates and blocks, rollout, the correlation, and the command end to end."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from analyze import head_stats, interventions
from analyze.attention import capture
from analyze.head_stats import FEATURES, PATTERNS, classify, js_divergence_sums, map_features, mean_ci, pearson, rollout, symbol_share
from conftest import quadlab
from train import tasks


def _features(maps: np.ndarray, q_len=None, segments=None, positional=True, causal=False) -> dict:
    """Features of one-layer, one-head maps (B, Q, K) given as arrays."""
    a = torch.tensor(maps, dtype=torch.float32)[None, :, None]
    b, q, k = maps.shape
    q_len = q_len or [q] * b
    q_mask = torch.tensor([[i < n for i in range(q)] for n in q_len])
    k_mask = torch.tensor([[j < n for j in range(k)] for n in q_len]) if q == k else torch.ones(b, k, dtype=torch.bool)
    seg = torch.tensor(segments if segments is not None else [[0] * k] * b)
    out = map_features(a, q_mask, k_mask, seg, positional, causal)[0, :, 0].numpy()  # (B, F)
    return [{name: float(row[i]) for i, name in enumerate(FEATURES)} for row in out]


def test_statistics_of_identity_uniform_and_previous_token_maps():
    n = 4
    identity, uniform = np.eye(n), np.full((n, n), 1 / n)
    previous = np.eye(n, k=-1)
    previous[0, 0] = 1
    f_id, f_uni, f_prev = _features(np.stack([identity, uniform, previous]))
    assert f_id["entropy"] == pytest.approx(0, abs=1e-6) and f_id["confidence"] == pytest.approx(1)
    assert (f_id["same"], f_id["previous"], f_id["next"], f_id["distance"]) == pytest.approx((1, 0, 0, 0))
    assert f_uni["entropy"] == pytest.approx(math.log(4)) and f_uni["uniform_entropy"] == pytest.approx(math.log(4))
    assert f_uni["confidence"] == pytest.approx(0.25)
    assert f_uni["previous"] == pytest.approx(3 / 16) and f_uni["next"] == pytest.approx(3 / 16)  # query 0 has no previous token
    assert f_uni["distance"] == pytest.approx((1.5 + 1 + 1 + 1.5) / 4)
    assert f_prev["previous"] == pytest.approx(3 / 4) and f_prev["same"] == pytest.approx(1 / 4)


def test_padding_and_the_causal_baseline():
    padded = np.zeros((4, 4))
    padded[:2, :2] = 0.5
    padded[2:, :] = 0.25  # garbage in padded queries must not count
    (f,) = _features(padded[None], q_len=[2])
    assert f["entropy"] == pytest.approx(math.log(2)) and f["uniform_entropy"] == pytest.approx(math.log(2))
    causal = np.tril(np.ones((3, 3))) / np.arange(1, 4)[:, None]  # uniform over the allowed keys
    (f,) = _features(causal[None], causal=True)
    assert f["entropy"] == pytest.approx(f["uniform_entropy"]) == pytest.approx((0 + math.log(2) + math.log(3)) / 3)


def test_cross_attention_has_no_positional_statistics():
    (f,) = _features(np.full((3, 5), 0.2)[None], positional=False)
    assert all(math.isnan(f[name]) for name in head_stats.POSITIONAL)
    assert f["confidence"] == pytest.approx(0.2) and f["vertical_score"] == pytest.approx(0.4)


def _synthetic(kind: str, n: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    i, j = np.mgrid[:n, :n]
    if kind == "sharp diagonal":
        m = np.eye(n) * 0.8 + np.eye(n, k=-1) * 0.2
        m[0, 0] = 1
    elif kind == "blurred diagonal":
        m = np.exp(-((i - j) ** 2) / (2 * 2.5**2))
    elif kind == "vertical":
        m = np.full((n, n), 0.02)
        m[:, [0, 7]] = 1
    elif kind == "block":
        m = (i // 16 == j // 16).astype(float)
    else:
        m = rng.dirichlet(np.ones(n), size=n)
    return m / m.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_synthetic_pattern_gets_its_type(pattern):
    segments = [[j // 16 for j in range(32)]] if pattern == "block" else [[j // 8 for j in range(32)]]
    (f,) = _features(_synthetic(pattern)[None], segments=segments)
    vector = np.array([[f[name] for name in FEATURES]])
    assert PATTERNS[int(classify(vector)[0])] == pattern, f


def test_classification_ignores_undefined_scores():
    vector = np.full((1, len(FEATURES)), np.nan)
    vector[0, FEATURES.index("block_score")] = 0.9
    vector[0, FEATURES.index("vertical_score")] = 0.1
    assert PATTERNS[int(classify(vector)[0])] == "block"


def test_jensen_shannon_distance_between_heads():
    a = torch.zeros(1, 1, 3, 2, 2)  # heads 0 and 1 identical, head 2 disjoint from them
    a[0, 0, 0] = a[0, 0, 1] = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    a[0, 0, 2] = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    js = js_divergence_sums(a, torch.ones(1, 2, dtype=torch.bool)).numpy()
    assert js[0, 1] == pytest.approx(0, abs=1e-7) and js[0, 2] == pytest.approx(2 * math.log(2))  # summed over 2 queries
    np.testing.assert_allclose(js, js.T, atol=1e-7)


def test_jensen_shannon_sums_equal_the_textbook_formula_with_padding():
    torch.manual_seed(0)
    a = torch.softmax(torch.randn(2, 3, 4, 5, 5), dim=-1)
    q_mask = torch.ones(3, 5, dtype=torch.bool)
    q_mask[1, 3:] = False
    rows = a.permute(0, 2, 1, 3, 4).reshape(8, 3, 5, 5).double()

    def js(p, q):
        m = (p + q) / 2
        return 0.5 * (p * torch.log(p / m)).sum(-1) + 0.5 * (q * torch.log(q / m)).sum(-1)

    expected = torch.stack([torch.stack([(js(rows[i], rows[j]) * q_mask).sum() for j in range(8)]) for i in range(8)])
    np.testing.assert_allclose(js_divergence_sums(a, q_mask).numpy(), expected.numpy(), atol=1e-5)
    # causal maps (0 after each query): the chunks that skip those keys give the same sums
    causal = torch.softmax(torch.randn(2, 3, 4, 11, 11).masked_fill(~torch.ones(11, 11, dtype=torch.bool).tril(), float("-inf")), dim=-1)
    q_mask = torch.ones(3, 11, dtype=torch.bool)
    q_mask[2, 7:] = False
    np.testing.assert_allclose(js_divergence_sums(causal, q_mask, causal=True).numpy(), js_divergence_sums(causal, q_mask).numpy(), atol=1e-5)
    assert js_divergence_sums(causal, q_mask).max() > 1  # not all zeros
    short = causal[:, :, :, :2, :2] / causal[:, :, :, :2, :2].sum(dim=-1, keepdim=True)  # fewer queries than chunks
    np.testing.assert_allclose(js_divergence_sums(short, q_mask[:, :2], causal=True).numpy(), js_divergence_sums(short, q_mask[:, :2]).numpy(), atol=1e-6)


def test_rollout_on_a_two_layer_hand_example():
    # layer 1: two heads with mean [[.5,.5],[.5,.5]]; layer 2: two heads with mean [[1,0],[1,0]]
    a = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]], [[[1.0, 0.0], [1.0, 0.0]]] * 2])[:, None]
    r = rollout(a, torch.ones(1, 2, dtype=torch.bool))[:, 0].numpy()
    np.testing.assert_allclose(r[0], [[0.75, 0.25], [0.25, 0.75]])
    np.testing.assert_allclose(r[1], [[1, 0], [0.5, 0.5]] @ np.array([[0.75, 0.25], [0.25, 0.75]]))
    np.testing.assert_allclose(r[1], [[0.75, 0.25], [0.5, 0.5]])


def test_symbol_share_baseline_and_confidence_interval():
    a = torch.tensor([[0.5, 0.25, 0.25]] * 3)[None, None, None]  # (L=1, B=1, H=1, 3, 3)
    keys = torch.tensor([[True, False, False]])
    share, baseline = symbol_share(a, torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool), keys, causal=False)
    assert float(share[0, 0]) == pytest.approx(0.5) and float(baseline[0]) == pytest.approx(1 / 3)
    _, causal_baseline = symbol_share(a, torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool), keys, causal=True)
    assert float(causal_baseline[0]) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    mean, lo, hi = mean_ci(np.array([1.0, 2.0, 3.0, 4.0]))
    assert mean == 2.5 and hi - mean == pytest.approx(3.182446 * np.std([1, 2, 3, 4], ddof=1) / 2, rel=1e-5)


def test_pearson_on_known_data():
    assert pearson([1, 2, 3, 4], [3, 5, 7, 9])["r"] == pytest.approx(1)
    known = pearson([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert known["r"] == pytest.approx(0.8) and known["p"] == pytest.approx(0.104088, rel=1e-4)
    assert math.isnan(pearson([1, 2, 3], [1, 1, 1])["r"]) and "constant" in pearson([1, 2, 3], [1, 1, 1])["note"]
    assert math.isnan(pearson([1, 2], [1, 2])["p"])


def test_summary_changes_that_round_to_nothing_print_as_plus_zero():
    from analyze.report import summary_lines

    base = {"full_solution_accuracy": 0.3, "character_accuracy": 0.7}
    result = {"kinds": {}, "context_note": "no checkpoints", "symbol_blocking": {
        "baseline": base, "layers": [0],
        "control": {"full_solution_accuracy": 0.3 - 1e-9, "character_accuracy": 0.7 - 0.0012}}}
    line = next(line for line in summary_lines(result) if line.startswith("control"))
    assert line == "control: full-solution accuracy +0.000, character accuracy -0.001", line


# ---------------------------------------------------------------------------------------------
# Gates, blocks and context variance on real models


@pytest.fixture(scope="module")
def t5():
    from train.config import resolve
    from train.quadratic import build_model, build_tokenizer

    tokenizer = build_tokenizer(["0123456789x^+-=()*/;Dnoe"])
    model = build_model(resolve("tiny", None, {"num_layers": 2, "num_decoder_layers": 2, "num_heads": 2, "d_kv": 8, "d_model": 16, "d_ff": 32}),
                        tokenizer)
    model.set_attn_implementation("eager")
    batch = tokenizer(["7x^2+3x+1=0", "1x^2-5x+6=0"], padding=True, return_tensors="pt")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "decoder_input_ids": torch.tensor([[0, 5, 6, 7]] * 2)}
    return model.eval(), inputs


@pytest.fixture(scope="module")
def bert():
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                                                attn_implementation="eager"))
    return model.eval(), {"input_ids": torch.randint(5, 50, (2, 7)), "attention_mask": torch.tensor([[1] * 7, [1] * 5 + [0] * 2])}


def _out(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else torch.cat([out.start_logits, out.end_logits])


def _value_slice(site, head):
    """The value-projection weights of one head (rows of v / value)."""
    v = site.attention.v if hasattr(site.attention, "v") else site.attention.value
    return v.weight[head * site.head_dim : (head + 1) * site.head_dim]


@pytest.mark.parametrize("which", ["t5", "bert"])
def test_open_gates_change_nothing_and_a_closed_gate_removes_the_head(which, request):
    model, inputs = request.getfixturevalue(which)
    layout = interventions.shape(model)
    reference = _out(model, inputs)
    with interventions.gated(model, {k: torch.ones(1, *s) for k, s in layout.items()}):
        assert torch.equal(_out(model, inputs), reference)
    kind = "cross" if which == "t5" else "encoder"
    site = interventions.sites(model)[kind][1]
    closed = {kind: torch.ones(1, *layout[kind])}
    closed[kind][0, 1, 0] = 0
    with interventions.gated(model, closed):
        before = _out(model, inputs)
        with torch.no_grad():
            saved = _value_slice(site, 0).clone()
            _value_slice(site, 0).mul_(3).add_(0.5)  # change what head 0 of layer 1 writes
        try:
            assert torch.allclose(_out(model, inputs), before, atol=1e-6)  # closed: its contribution is gone
        finally:
            with torch.no_grad():
                _value_slice(site, 0).copy_(saved)
    with torch.no_grad():
        _value_slice(site, 0).mul_(3).add_(0.5)
    try:
        assert not torch.allclose(_out(model, inputs), reference, atol=1e-4)  # open: it matters
    finally:
        with torch.no_grad():
            _value_slice(site, 0).copy_(saved)
    seen = {}
    handle = site.projection.register_forward_hook(lambda m, a, o: seen.setdefault("out", o))
    with interventions.gated(model, {kind: torch.zeros(1, *layout[kind])}):
        _out(model, inputs)
    handle.remove()
    assert float(seen["out"].abs().max()) == 0  # every head of the layer closed: the sublayer adds nothing


def test_per_row_gates_act_on_their_own_row_only(t5):
    model, inputs = t5
    layout = interventions.shape(model)
    gates = {"encoder": torch.ones(2, *layout["encoder"])}
    gates["encoder"][1, 0, 1] = 0
    with interventions.gated(model, gates):
        both = _out(model, inputs)
    reference = _out(model, inputs)
    single = {"encoder": gates["encoder"][1:]}
    with interventions.gated(model, single):
        ablated = _out(model, inputs)
    assert torch.equal(both[0], reference[0]) and torch.allclose(both[1], ablated[1], atol=1e-6) and not torch.allclose(both[1], reference[1])


def test_blocked_keys_receive_no_attention_in_the_chosen_layers_only(t5):
    model, inputs = t5
    keys = torch.zeros(inputs["input_ids"].shape, dtype=torch.bool)
    keys[:, 2] = True
    with interventions.blocked(model, {"encoder": [1], "cross": [0]}, keys), torch.no_grad():
        out = model(**inputs, output_attentions=True)
    assert float(out.encoder_attentions[1][:, :, :, 2].abs().max()) == 0 and float(out.cross_attentions[0][:, :, :, 2].abs().max()) == 0
    assert float(out.encoder_attentions[0][:, :, :, 2].min()) > 0 and float(out.cross_attentions[1][:, :, :, 2].min()) > 0
    valid = inputs["attention_mask"].bool()
    sums = out.encoder_attentions[1].sum(dim=-1)[:, 0]
    np.testing.assert_allclose(sums[valid].numpy(), 1, atol=1e-5)


def test_context_variance_equals_the_variance_of_the_recorded_vectors(bert):
    model, inputs = bert
    site = interventions.sites(model)["encoder"][0]
    seen = {}
    handle = site.projection.register_forward_hook(lambda m, a, o: seen.update(x=a[0].detach(), o=o.detach()))
    recorder = interventions.ContextVariance(model)
    with recorder:
        recorder.query_masks = {"encoder": inputs["attention_mask"].bool()}
        _out(model, inputs)
    handle.remove()
    valid = inputs["attention_mask"].bool()
    heads = seen["x"][valid].view(-1, 2, 8).double().numpy()
    expected = heads.var(axis=0).sum(axis=-1)  # per head: sum over dimensions of the variance over tokens
    result = recorder.result()["encoder"]
    np.testing.assert_allclose(result["head"][0], expected, rtol=1e-6)
    np.testing.assert_allclose(result["layer"][0], seen["o"][valid].double().numpy().var(axis=0).sum(), rtol=1e-6)


def test_unsupported_models_fail_in_one_line():
    from transformers import GPT2Config, GPT2LMHeadModel

    from gen import QuadlabError

    with pytest.raises(QuadlabError, match="T5 and BERT-style"):
        interventions.sites(GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=20)))


# ---------------------------------------------------------------------------------------------
# The analysis of a run


@pytest.fixture(scope="module")
def run_with_checkpoints(tmp_path_factory):
    """Trained in this process (the `heads` command below runs in one of its own)."""
    import cli
    from gen.dataset import GenOptions, generate
    from gen.equations import Ranges

    root = tmp_path_factory.mktemp("heads")
    generate(GenOptions(rows=300, seed=5, ranges=Ranges(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)), root / "data", workers=1)
    cli.main(["train", "--data", str(root / "data"), "--run-dir", str(root / "run"), "--max-steps", "12", "--eval-every", "4", "--batch-size",
              "16", "--eval-limit", "10", "--patience", "0", "--keep-checkpoints", "--set", "val_size=10"])  # a refusal would raise SystemExit
    return root / "run"


def test_batched_ablation_equals_one_head_at_a_time(run_with_checkpoints):
    from train.runs import analysis

    task = analysis(run_with_checkpoints, "heads", limit=8, eval_limit=6)
    # float64: batches of other sizes round differently on some CPUs, and a barely trained model's
    # near-tied logits could then decode differently; in float64 such ties are far below the noise
    model = task.model.double().eval()
    layout = interventions.shape(model)
    specs = [None, ("encoder", 0, 1), ("decoder", 1, 2), ("cross", 0, 3), ("encoder", 1, 0)]
    batched = task.ablate(model, specs, batch_rows=12, progress=False)  # 2 ablations per call, encoder reused for decoder ones
    input_ids, mask = task.encoded()
    for spec, metrics in zip(specs, batched):
        gates = {}
        if spec:
            gates[spec[0]] = torch.ones(1, *layout[spec[0]])
            gates[spec[0]][0, spec[1], spec[2]] = 0
        with interventions.gated(model, gates), torch.no_grad():
            texts = task.tokenizer.batch_decode(model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False), skip_special_tokens=True)
        assert metrics == task.scores(texts), spec


def test_ablations_decode_fewer_copies_at_once_when_the_cache_would_not_fit(run_with_checkpoints, monkeypatch):
    from train import quadratic
    from train.runs import analysis

    task = analysis(run_with_checkpoints, "heads", limit=8, eval_limit=6)
    model = task.model.double().eval()  # float64 as above: the same decoding whatever the batch
    input_ids, _ = task.encoded()
    c, g = model.config, model.generation_config
    row = 2 * c.num_decoder_layers * c.num_heads * c.d_kv * (g.max_new_tokens or g.max_length) + 2 * c.num_decoder_layers * c.num_heads * c.d_kv * input_ids.shape[1]
    row *= 8  # float64
    assert quadratic.cache_rows(model, input_ids.shape[1]) == quadratic.CACHE_BYTES // row
    specs = [None, ("encoder", 0, 1), ("decoder", 1, 2), ("cross", 0, 3)]
    whole = task.ablate(model, specs, batch_rows=24, progress=False)  # the cache allows all copies at once
    copies = []
    generate = task.generate
    monkeypatch.setattr(task, "generate", lambda model, ids, mask, repeat, *rest, **keys: copies.append(repeat) or generate(model, ids, mask, repeat, *rest, **keys))
    monkeypatch.setattr(quadratic, "CACHE_BYTES", 7 * row)  # 7 rows: one copy of the 6 rows a call
    assert task.ablate(model, specs, batch_rows=24, progress=False) == whole
    assert copies == [1, 1, 1, 1]
    monkeypatch.setattr(quadratic, "CACHE_BYTES", 1)
    assert quadratic.cache_rows(model, input_ids.shape[1]) == 1


def test_gradient_importance_per_row_equals_one_example_at_a_time(run_with_checkpoints, monkeypatch):
    from analyze.heads import gradient_importance
    from train.runs import analysis

    task = analysis(run_with_checkpoints, "heads", limit=6, eval_limit=1)
    batched = gradient_importance(task, task.model, list(task.batches(6)), progress=False)
    singles = [gradient_importance(task, task.model, [b], progress=False) for b in list(task.batches(1))]
    for kind in batched:
        np.testing.assert_allclose(batched[kind], np.mean([s[kind] for s in singles], axis=0), rtol=1e-4, atol=1e-7)
    monkeypatch.setattr("analyze.attention.ATTENTION_BYTES", 1)  # a row a slice: the batch's six backward passes
    losses = []
    row_losses = task.row_losses
    monkeypatch.setattr(task, "row_losses", lambda model, batch: losses.append(batch["labels"].shape) or row_losses(model, batch))
    sliced = gradient_importance(task, task.model, list(task.batches(6)), progress=False)
    assert len(losses) == 6 and all(shape[0] == 1 for shape in losses)
    for kind in batched:
        np.testing.assert_allclose(sliced[kind], batched[kind], rtol=1e-4, atol=1e-7)


def test_the_statistics_pass_in_slices_equals_whole_batches(run_with_checkpoints, monkeypatch):
    from analyze import heads
    from train.runs import analysis

    task = analysis(run_with_checkpoints, "heads", limit=12, eval_limit=1)
    model = task.model.eval()
    batches = list(task.batches(12))
    forwards = []
    monkeypatch.setattr(heads, "capture", lambda model, **inputs: forwards.append(inputs["input_ids"].shape[0]) or capture(model, **inputs))
    whole = heads.stream(task, model, batches, progress=False)
    assert forwards == [12]
    layout = interventions.shape(model)
    widths = {side: r.shape[1] for side, r in batches[0]["roles"].items()}
    monkeypatch.setattr("analyze.attention.ATTENTION_BYTES", 3 * sum(4 * l * h * widths[task.sides[k][0]] * widths[task.sides[k][1]] for k, (l, h) in layout.items()))
    forwards.clear()
    sliced = heads.stream(task, model, batches, progress=False)
    assert sum(forwards) == 12 and 3 <= len(forwards) < 12  # three of the longest rows a slice, more of the short ones
    assert sliced["classes"] == whole["classes"]
    for kind in task.kinds:
        a, b = sliced[kind], whole[kind]
        np.testing.assert_allclose(a["features"], b["features"], atol=1e-5)  # row by row, in the same order
        np.testing.assert_array_equal(a["queries"], b["queries"])
        np.testing.assert_allclose(a["js"], b["js"], atol=1e-6)
        for name in b["shares"]:
            np.testing.assert_allclose(a["shares"][name], b["shares"][name], atol=1e-6)
            np.testing.assert_allclose(a["baselines"][name], b["baselines"][name], atol=1e-6)
        np.testing.assert_allclose(a["average"].role_mean, b["average"].role_mean, atol=1e-6)
        for name, value in whole["variance"][kind].items():
            np.testing.assert_allclose(sliced["variance"][kind][name], value, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sliced["rollout_average"].position_mean, whole["rollout_average"].position_mean, atol=1e-6)
    np.testing.assert_allclose(sliced["rollout_example"]["rollout"], whole["rollout_example"]["rollout"], atol=1e-6)


@pytest.fixture(scope="module")
def analysed(run_with_checkpoints, run_cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads-out") / "figs"
    done = run_cli("heads", str(run_with_checkpoints), "--limit", "24", "--eval-limit", "8", "--batch-size", "8", "--out", str(out), timeout=600)
    return out, done


def test_heads_writes_tables_figures_and_report(analysed, run_with_checkpoints):
    out, done = analysed
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "heads" / "heads.json").read_text())
    assert set(result["kinds"]) == {"encoder", "decoder", "cross"} and result["rows"] == 24
    for kind, r in result["kinds"].items():
        layers, heads = result["layout"][kind]
        with open(out / "heads" / f"head-stats-{kind}.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == layers * heads and {"entropy", "confidence", "type", "drop_full_solution_accuracy", "gradient_importance"} <= set(rows[0])
        assert sum(sum(c.values()) for c in r["type_counts_per_layer"]) == layers * heads
        assert all(0 <= float(row["confidence"]) <= 1 and float(row["entropy"]) <= float(row["uniform_entropy"]) + 1e-6 for row in rows)
        made_up = sum(c["maps"] for c in r["map_clusters"]["clusters"])
        assert made_up == 24 * layers * heads  # every per-example map is in one cluster
        assert sum(sum(c["by_class"].values()) for c in r["map_clusters"]["clusters"]) == made_up
        shares = np.array(list(r["role_attention"].values())).sum(axis=0)
        np.testing.assert_allclose(shares, 1, atol=1e-4)
    assert len(result["importance"]) == sum(l * h for l, h in result["layout"].values())
    assert set(result["symbol_blocking"]) >= {"symbols blocked (both)", "control: as many digits blocked (both)"}
    metrics = set(tasks.module("quadratic").Analysis.metrics)  # the contract tests/test_tasks.py checks for the other tasks
    assert set(result["baseline_metrics"]) == metrics and all(0 <= v <= 1 for v in result["baseline_metrics"].values())
    for key, values in result["symbol_blocking"].items():
        if key not in ("baseline", "layers"):
            assert set(values) == metrics and all(0 <= v <= 1 for v in values.values()), key
    assert all(np.all(np.isfinite(r["context_variance"]["head"])) for r in result["kinds"].values())
    assert (out / "heads" / "context-variance-accuracy.png").stat().st_size > 0
    points = result["context_points"]
    assert [p["model"] for p in points] == ["step-4", "step-8", "step-12"]
    assert set(result["context_correlation"]["encoder/character_accuracy"]) >= {"r", "p", "n"}
    arrays = np.load(out / "heads" / "heads.npz")
    assert arrays["encoder/map-features"].shape[:1] == (24,) and arrays["rollout/position"].shape[0] == result["layout"]["encoder"][0]
    for figure in result["figures"]:
        assert (out / figure["file"]).stat().st_size > 0
    page = (out / "index.html").read_text()
    assert "Head analysis" in page and "heads/encoder-pattern-types.png" in page and "http" not in page
    assert "important head:" in done.stdout and "encoder layer 0:" in done.stdout and "context variance vs" in done.stdout


def test_maps_after_heads_keeps_the_head_analysis(analysed, run_with_checkpoints):
    from analyze.maps import render_maps

    out, _ = analysed
    render_maps(run_with_checkpoints, out, limit=8, batch_size=8, progress=False)
    assert (out / "heads" / "heads.json").exists()
    page = (out / "index.html").read_text()
    assert "Head analysis" in page and "Per-head maps of one example" in page


def test_heads_bad_input_is_one_line_and_exit_2(run_with_checkpoints, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default --out would be written
    for args, message in ((["heads", str(tmp_path / "nothing")], "is not a directory"),
                          (["heads", str(run_with_checkpoints), "--limit", "-3"], "--limit"),
                          (["heads", str(run_with_checkpoints), "--compare", str(tmp_path)], "--compare")):
        status, _, err = quadlab(capsys, monkeypatch, *args)
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "figures").exists()


def test_compare_correlates_across_runs(run_with_checkpoints, tmp_path):
    from analyze.heads import analyze_heads
    from gen import QuadlabError

    result = analyze_heads(run_with_checkpoints, tmp_path / "figs", limit=4, eval_limit=2, batch_size=4, compare=[run_with_checkpoints] * 2,
                           skip_importance=True, progress=False)
    assert [p["model"] for p in result["context_points"]] == [str(run_with_checkpoints)] * 3
    # what the figure writes by each point: NAME, for a run kept as NAME/run as this one is
    assert run_with_checkpoints.name == "run" and [p["label"] for p in result["context_points"]] == [run_with_checkpoints.parent.name] * 3
    assert result["context_correlation"]["encoder/character_accuracy"]["note"] == "one series is constant"  # the same model three times
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text((run_with_checkpoints / "config.yaml").read_text())
    (other / "tokenizer.json").write_text("{}")
    with pytest.raises(QuadlabError, match="another tokenizer"):
        analyze_heads(run_with_checkpoints, tmp_path / "figs2", compare=[other], progress=False)
