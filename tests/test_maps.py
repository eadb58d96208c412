import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from analyze.attention import AttentionAverage, AttentionUnavailable, batch_slices, capture
from analyze.interventions import shape
from analyze import maps
from analyze.maps import dataset_average, example_maps, explain, most_attended, render_maps
from conftest import offline_dom, quadlab
from gen import QuadlabError
from gen.dataset import GenOptions, build_splits, generate
from gen.equations import Ranges
from train.config import resolve
from train.quadratic import Analysis, build_model, build_tokenizer, captured_batches, equation_roles, solution_roles, teacher_forced_batch, train_run

SMALL = Ranges(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)


@pytest.fixture(scope="module")
def rows():
    columns = build_splits(GenOptions(rows=60, seed=2, ranges=SMALL), workers=1)["train"]
    return columns["equation"], columns["solution"]


@pytest.fixture(scope="module")
def model_and_tokenizer(rows):
    equations, solutions = rows
    tokenizer = build_tokenizer(equations + solutions + ["0123456789x^+-=()*/;Dnoe"])
    model = build_model(resolve("tiny", None, {"num_layers": 2, "num_decoder_layers": 3, "num_heads": 2, "d_kv": 8, "d_model": 16, "d_ff": 32}), tokenizer)
    return model.eval(), tokenizer


def test_equation_roles_on_hand_made_examples():
    tokens = list("-7x^2+3556x+451612=0") + ["</s>"]
    assert equation_roles(tokens) == ["-", "a", "x", "^", "exp", "+", "b", "b", "b", "b", "x", "+", "c", "c", "c", "c", "c", "c", "=", "rhs", "</s>"]
    assert equation_roles(list("1x^2+0x-4=0")) == ["a", "x", "^", "exp", "+", "b", "x", "-", "c", "=", "rhs"]
    assert equation_roles(list("12x^2-30x+0=0")) == ["a", "a", "x", "^", "exp", "-", "b", "b", "x", "+", "c", "=", "rhs"]


def test_solution_roles_on_hand_made_examples():
    tokens = ["<start>"] + list("D=(3^2-4*5*7)=-131;x=none;") + ["</s>"]
    roles = solution_roles(tokens)
    assert roles[:6] == ["<start>", "D", "=", "(", "digit", "^"]
    assert roles[-8:] == ["x", "=", "none", "none", "none", "none", ";", "</s>"]
    assert solution_roles(list("sqrt(D)")) == ["sqrt", "sqrt", "sqrt", "sqrt", "(", "D", ")"]
    assert solution_roles(list("4*a*c")) == ["digit", "*", "name", "*", "name"]


def _naive(model, tokenizer, equations, solutions):
    """Every example alone (no padding), every map kept, averaged at the end."""
    per_kind = {k: {"maps": [], "q_roles": [], "k_roles": []} for k in Analysis.kinds}
    for eq, sol in zip(equations, solutions):
        batch = teacher_forced_batch(tokenizer, [eq], [sol])
        captured = capture(model, **batch["inputs"])
        roles = {side: batch["roles"][side][0].numpy() for side in ("encoder", "decoder")}
        for kind, (attention, _, _) in captured.items():
            per_kind[kind]["maps"].append(attention[:, 0].double().numpy())
            per_kind[kind]["q_roles"].append(roles["encoder" if kind == "encoder" else "decoder"])
            per_kind[kind]["k_roles"].append(roles["decoder" if kind == "decoder" else "encoder"])
    out = {}
    for kind, kept in per_kind.items():
        maps = kept["maps"]
        L, H = maps[0].shape[:2]
        Q, K = max(m.shape[2] for m in maps), max(m.shape[3] for m in maps)
        position, queries = np.zeros((L, H, Q, K)), np.zeros(Q)
        q_names, k_names = (Analysis.roles[side] for side in Analysis.sides[kind])
        role, role_queries = np.zeros((L, H, len(q_names), len(k_names))), np.zeros(len(q_names))
        for m, qr, kr in zip(maps, kept["q_roles"], kept["k_roles"]):
            position[:, :, : m.shape[2], : m.shape[3]] += m
            queries[: m.shape[2]] += 1
            for i in range(m.shape[2]):
                role_queries[qr[i]] += 1
                for j in range(m.shape[3]):
                    role[:, :, qr[i], kr[j]] += m[:, :, i, j]
        out[kind] = (position / np.maximum(queries, 1)[None, None, :, None], role / np.maximum(role_queries, 1)[None, None, :, None])
    return out


def _average(model, tokenizer, equations, solutions, batch_size):
    batches = captured_batches(tokenizer, equations, solutions, ["?"] * len(equations), batch_size)
    return dataset_average(model, batches, Analysis.sides, Analysis.roles)


def test_streaming_average_equals_the_naive_reference(model_and_tokenizer, rows):
    model, tokenizer = model_and_tokenizer
    equations, solutions = rows[0][:23], rows[1][:23]
    averages = _average(model, tokenizer, equations, solutions, batch_size=5)  # padded batches
    reference = _naive(model, tokenizer, equations, solutions)
    for kind, (position, role) in reference.items():
        assert averages[kind].examples == 23
        np.testing.assert_allclose(averages[kind].position_mean, position, atol=1e-6)
        np.testing.assert_allclose(averages[kind].role_mean, role, atol=1e-6)


def test_batches_too_large_for_memory_are_averaged_in_slices_cut_to_their_rows_with_the_same_result(model_and_tokenizer, rows, monkeypatch):
    model, tokenizer = model_and_tokenizer
    equations, solutions = rows[0][:23], rows[1][:23]
    whole = _average(model, tokenizer, equations, solutions, batch_size=23)
    forwards = []
    monkeypatch.setattr(maps, "capture", lambda model, **inputs: forwards.append(tuple(inputs["decoder_input_ids"].shape)) or capture(model, **inputs))
    batch = next(captured_batches(tokenizer, equations, solutions, ["?"] * 23, 23))
    layout = shape(model)
    assert layout == {"encoder": (2, 2), "decoder": (3, 2), "cross": (3, 2)}
    maps_bytes = lambda q, k: 4 * (2 * 2 * k * k + 3 * 2 * q * q + 3 * 2 * q * k)  # noqa: E731 - float32 maps of one row, every kind and layer
    length = {side: [int((r >= 0).sum()) for r in batch["roles"][side]] for side in ("encoder", "decoder")}  # sorted: shortest solution first
    limit = 5 * maps_bytes(batch["roles"]["decoder"].shape[1], batch["roles"]["encoder"].shape[1]) + 1  # five of the longest rows
    monkeypatch.setattr("analyze.attention.ATTENTION_BYTES", limit)
    slices, start = list(batch_slices(batch, Analysis.sides, layout)), 0
    for part in slices:
        inputs, roles = part["inputs"], part["roles"]
        n, (q, k) = len(roles["decoder"]), (roles["decoder"].shape[1], roles["encoder"].shape[1])
        rows_here = range(start, start + n)
        # cut to its longest row: no token lost, no column of padding alone
        assert (q, k) == (max(length["decoder"][i] for i in rows_here), max(length["encoder"][i] for i in rows_here))
        assert torch.equal(inputs["decoder_input_ids"], batch["inputs"]["decoder_input_ids"][start : start + n, :q])
        assert torch.equal(inputs["attention_mask"], batch["inputs"]["attention_mask"][start : start + n, :k])
        assert torch.equal(roles["encoder"], batch["roles"]["encoder"][start : start + n, :k])
        # every field of a captured batch comes along, cut alike
        assert torch.equal(part["segments"]["decoder"], batch["segments"]["decoder"][start : start + n, :q])
        assert torch.equal(part["labels"], batch["labels"][start : start + n, :q])
        assert part["rows"] == batch["rows"][start : start + n] and part["classes"] == batch["classes"][start : start + n]
        assert part["tokens"]["decoder"] == batch["tokens"]["decoder"][start : start + n]
        assert n == 1 or n * maps_bytes(q, k) <= limit  # within the limit, and as many rows as fit
        if start + n < 23:
            more = range(start, start + n + 1)
            assert (n + 1) * maps_bytes(max(length["decoder"][i] for i in more), max(length["encoder"][i] for i in more)) > limit
        start += n
    assert start == 23 and len(slices) < 5  # every row once; short rows take more to a slice than the five longest
    assert slices[0]["roles"]["decoder"].shape[1] < batch["roles"]["decoder"].shape[1]  # the short rows' slice is narrower
    sliced = _average(model, tokenizer, equations, solutions, batch_size=23)
    assert forwards == [tuple(part["inputs"]["decoder_input_ids"].shape) for part in slices]
    for kind, average in whole.items():
        assert sliced[kind].examples == 23
        np.testing.assert_allclose(sliced[kind].position_mean, average.position_mean, atol=1e-6)
        np.testing.assert_allclose(sliced[kind].role_mean, average.role_mean, atol=1e-6)
    assert len(list(batch_slices(batch, Analysis.sides, layout, limit=1))) == 23  # at least a row a slice
    # a batch of model inputs alone (an encoder task's gradient batches): widths from the masks, labels by rows
    inputs = {"input_ids": torch.arange(12).reshape(3, 4), "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]),
              "labels": torch.tensor([5, 6, 7])}
    parts = list(batch_slices({"inputs": inputs}, {"encoder": ("encoder", "encoder")}, {"encoder": (1, 1)}, limit=4 * 2 * 3 * 3))
    assert [tuple(p["inputs"]["input_ids"].shape) for p in parts] == [(2, 3), (1, 4)]
    assert [p["inputs"]["labels"].tolist() for p in parts] == [[5, 6], [7]]


def test_average_rows_sum_to_one_and_padding_never_leaks(model_and_tokenizer, rows):
    model, tokenizer = model_and_tokenizer
    averages = _average(model, tokenizer, rows[0], rows[1], batch_size=16)
    for kind, avg in averages.items():
        queries = avg.sums.position_queries.numpy()
        sums = avg.position_mean.sum(axis=-1)
        np.testing.assert_allclose(sums[:, :, queries > 0], 1.0, atol=1e-6)
        seen = avg.query_role_counts > 0
        np.testing.assert_allclose(avg.role_mean.sum(axis=-1)[:, :, seen], 1.0, atol=1e-6)
        np.testing.assert_allclose(avg.role_share.sum(axis=-1), 1.0, atol=1e-6)
        assert "other" not in [Analysis.roles[Analysis.sides[kind][1]][i] for i, v in enumerate(avg.key_role_baseline) if v > 0]
    # one long example padded next to a short one: the short one's padded keys get nothing
    short, long_ = min(zip(*rows), key=lambda r: len(r[1])), max(zip(*rows), key=lambda r: len(r[1]))
    batch = teacher_forced_batch(tokenizer, [short[0], long_[0]], [short[1], long_[1]])
    attention, q_mask, k_mask = capture(model, **batch["inputs"])["decoder"]
    n = int(k_mask[0].sum())
    assert n < k_mask.shape[1] and float(attention[:, 0, :, :n, n:].abs().max()) == 0.0


def test_memory_does_not_grow_with_examples(model_and_tokenizer, rows):
    model, tokenizer = model_and_tokenizer
    small = _average(model, tokenizer, rows[0][:6], rows[1][:6], batch_size=3)
    large = _average(model, tokenizer, rows[0][:6] * 10, rows[1][:6] * 10, batch_size=3)
    for kind in Analysis.kinds:
        assert small[kind].sums.position.shape == large[kind].sums.position.shape
        np.testing.assert_allclose(small[kind].position_mean, large[kind].position_mean, atol=1e-6)


def test_capture_fails_loudly_without_attention_weights(model_and_tokenizer, rows, monkeypatch):
    import analyze.attention as attention_module

    model, tokenizer = model_and_tokenizer
    batch = teacher_forced_batch(tokenizer, rows[0][:2], rows[1][:2])
    monkeypatch.setattr(attention_module, "use_eager_attention", lambda m: None)
    attention_module.set_attention_implementation(model, "sdpa")
    try:
        with pytest.raises(AttentionUnavailable, match="eager"):
            capture(model, **batch["inputs"])
    finally:
        attention_module.set_attention_implementation(model, "eager")


def test_capture_switches_the_stacks_to_eager_too(model_and_tokenizer, rows):
    """transformers 5.17 switches only the outer model's attention: a T5 left with eager outside and
    sdpa in its encoder and decoder stacks must still give every map."""
    model, tokenizer = model_and_tokenizer
    batch = teacher_forced_batch(tokenizer, rows[0][:2], rows[1][:2])
    model.encoder.set_attn_implementation("sdpa")
    model.decoder.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "eager"
    try:
        captured = capture(model, **batch["inputs"])
    finally:
        model.encoder.set_attn_implementation("eager")
        model.decoder.set_attn_implementation("eager")
    assert set(captured) == {"encoder", "decoder", "cross"}
    for kind, (maps, query_mask, key_mask) in captured.items():
        layers = model.config.num_layers if kind == "encoder" else model.config.num_decoder_layers
        assert maps.shape[:2] == (layers, 2)
        # each real query's weights over the keys sum to one
        sums = maps.sum(-1).transpose(1, 2)[:, :, query_mask.bool()]
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-4), kind


def test_example_maps_cover_the_whole_answer(model_and_tokenizer, rows):
    model, tokenizer = model_and_tokenizer
    batch = teacher_forced_batch(tokenizer, [rows[0][0]], [rows[1][0]])
    example = example_maps(model, Analysis.sides, {"name": "0", "input": rows[0][0], "output": rows[1][0], "answer": {}, "batch": batch})
    n_in, n_out = len(rows[0][0]) + 1, len(rows[1][0]) + 1  # + </s>; the decoder sees <start> + the answer
    assert example["maps"]["encoder"].shape[2:] == (n_in, n_in)
    assert example["maps"]["decoder"].shape[2:] == (n_out, n_out)
    assert example["maps"]["cross"].shape[2:] == (n_out, n_in)
    assert example["tokens"]["decoder"][0] == "<start>" and "".join(example["tokens"]["decoder"][1:]) == rows[1][0]
    assert example["summaries"]["cross"].shape == (3, n_in)
    np.testing.assert_allclose(example["summaries"]["cross"].sum(axis=1), 2.0, atol=1e-5)  # heads, each row sums to 1


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("maps")
    generate(GenOptions(rows=120, seed=3, ranges=SMALL), root / "data")
    config = resolve("tiny", None, {"data": str(root / "data"), "run_dir": str(root / "run"), "max_steps": 10, "eval_every": 10,
                                    "val_size": 10, "batch_size": 16})
    train_run(config, progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def rendered(run_dir, tmp_path_factory):
    """One rendering shared by the tests that read it (rendering is the slow part)."""
    import importlib.util

    out = tmp_path_factory.mktemp("rendered") / "figs"
    has_bertviz = importlib.util.find_spec("bertviz") is not None
    result = render_maps(run_dir, out, limit=20, examples=[0, 3], heads=[(1, 2)], batch_size=8, bertviz=has_bertviz, progress=False)
    return out, result


def test_probes_and_patching_join_the_report_and_outlive_a_new_maps(run_dir, capsys, monkeypatch, tmp_path):
    from test_bad_inputs import quadlab  # the commands in this process: a process each spent 7 s importing and loading

    out = tmp_path / "figs"
    render_maps(run_dir, out, limit=20, examples=[0], batch_size=8, progress=False)
    status, _, err = quadlab(capsys, monkeypatch, "probe", run_dir, "--split", "train", "--limit", 40, "--target", "root class", "--out", out / "probes")
    assert status == 0, err
    status, _, err = quadlab(capsys, monkeypatch, "patch", run_dir, "--split", "train", "--pairs", 4, "--out", out / "patching")
    assert status == 0, err

    def shown(page):
        return {"cli.py probe": "cli.py probe" in page, "probe figure": 'src="probes/probe-root-class.png"' in page,
                "probe summary": "root class: best at layer" in page, "patch summary": "D digits: " in page and "dropped: clean and corrupted within" in page,
                "cli.py patch": "cli.py patch</h2>" in page, "patch figure": 'src="patching/patching-roles.png"' in page,
                "maps": "Per-head maps of one example" in page}

    assert all(shown((out / "index.html").read_text()).values())
    assert (out / "probes" / "probe-root-class.png").exists() and (out / "patching" / "patching-roles.png").exists()
    render_maps(run_dir, out, limit=20, examples=[0], batch_size=8, progress=False)  # rewrites the directory
    assert (out / "probes" / "probes.json").exists() and (out / "patching" / "patching.json").exists()
    assert all(shown((out / "index.html").read_text()).values())
    elsewhere = tmp_path / "elsewhere"  # an analysis written outside a figures directory makes no report there
    assert quadlab(capsys, monkeypatch, "probe", run_dir, "--split", "train", "--limit", 40, "--target", "root class", "--out", elsewhere / "probes")[0] == 0
    assert not (elsewhere / "index.html").exists()


def test_maps_writes_figures_numbers_and_report(rendered):
    out, result = rendered
    index = json.loads((out / "index.json").read_text())
    assert index["examples_averaged"] == 20 and [e["name"] for e in index["examples"]] == ["0", "3"]
    for figure in index["figures"]:
        assert (out / figure["file"]).stat().st_size > 0
        if "svg" in figure:
            assert (out / figure["svg"]).read_text().lstrip().startswith("<?xml")
    arrays = np.load(out / "maps.npz")
    assert sorted(arrays.files) == sorted(index["arrays"])
    assert arrays["example-0/cross"].shape[:2] == (2, 4)
    assert any(f["what"] == "single head" and f["layer"] == 1 and f["head"] == 2 for f in index["figures"])
    page = (out / "index.html").read_text()
    assert "<script src" not in page and "http" not in page
    assert f"<h1>Attention in {Path(index['run']).parent.name}</h1>" in page  # a run in NAME/run is NAME, as in figures/NAME
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == sum(not f["file"].endswith(".html") for f in index["figures"]) and all(f'<a href="{src}"><img src="{src}"' in page for src in images)  # full size on a click
    assert result["out_dir"] == str(out) and not list(out.parent.glob(".figs.partial*"))


def test_viewer_maps_are_the_saved_maps_in_thousandths_with_the_trailing_zeros_cut(rendered):
    out, _ = rendered
    viewer, arrays = json.loads((out / "viewer.json").read_text()), np.load(out / "maps.npz")
    assert viewer["map_scale"] == 1000
    for example in viewer["examples"]:
        for kind, layers in example["maps"].items():
            saved = arrays[f"example-{example['name']}/{kind}"]
            full = np.zeros(saved.shape)
            for index in np.ndindex(saved.shape[:3]):
                row = layers[index[0]][index[1]][index[2]]
                assert all(isinstance(v, int) for v in row) and (not row or row[-1] != 0)
                full[index][: len(row)] = row
            assert np.abs(full / 1000 - saved).max() <= 0.0005 + 1e-6, kind
    rows = viewer["examples"][0]["maps"]["decoder"][0][0]
    assert len(rows[0]) == 1 and len(rows[-1]) > len(rows[0])  # causal: the first token sees only itself


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on this machine")
def test_report_opens_offline_in_headless_chromium(rendered, tmp_path):
    out, _ = rendered
    dom = offline_dom(out / "index.html", tmp_path / "profile")
    status = dom.split('id="status">')[1].split("<")[0]
    shown, total = status.split("figures shown: ")[1].split(";")[0].split(" of ")
    assert int(shown) == int(total) > 0, status
    assert "viewer: encoder/0/0" in status


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on this machine")
def test_viewer_sizes_each_axis_by_its_tokens_and_a_click_picks_the_row(rendered):
    """Cross-attention of a solution over its shorter equation: the key columns are as wide as the
    equation's tokens allow (each labelled), the rows as tall as the solution's; a click on a row
    shows that query token in the neuron view."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[test]')")
    out, _ = rendered
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto((out / "index.html").as_uri())
        page.select_option("#kind", "cross")
        view = page.evaluate("""() => {
            const c = document.getElementById('view'), tokens = data.examples[0].tokens;
            return {width: c.width, height: c.height, cell: +c.dataset.cellWidth, row: +c.dataset.rowHeight, top: +c.dataset.top,
                    keys: tokens.encoder.length, queries: tokens.decoder.length, drawn: c.dataset.drawn};
        }""")
        assert view["drawn"] == "cross/0/0" and view["queries"] > 2 * view["keys"], view
        assert view["cell"] >= 9 and view["cell"] > view["row"] and view["height"] > view["top"] + view["queries"] * view["row"], view
        box = page.locator("#view").bounding_box()
        row = view["queries"] // 2
        page.mouse.click(box["x"] + box["width"] - 20, box["y"] + view["top"] + (row + 0.5) * view["row"])
        assert page.eval_on_selector("#neuron", "c => c.dataset.drawn") == f"cross/0/0/{row}"
        # decoder self-attention: the first token sees only itself (1.000, the scale's top colour);
        # the rest of its row is cut from the page's data and drawn as 0 (the bottom colour)
        page.select_option("#kind", "decoder")
        pixels = page.evaluate("""() => {
            const c = document.getElementById('view'), ctx = c.getContext('2d'), cw = +c.dataset.cellWidth, rh = +c.dataset.rowHeight;
            const left = c.width - 10 - cw * data.examples[0].tokens.decoder.length, top = +c.dataset.top;
            const at = (i, j) => Array.from(ctx.getImageData(left + j * cw + cw / 2, top + i * rh + rh / 2, 1, 1).data.slice(0, 3));
            return {first: at(0, 0), cut: at(0, data.examples[0].tokens.decoder.length - 1), drawn: c.dataset.drawn};
        }""")
        assert pixels["drawn"] == "decoder/0/0" and pixels["first"] == [253, 231, 37] and pixels["cut"] == [68, 1, 84], pixels
        assert not errors, errors
        browser.close()


def test_bertviz_export_handles_different_input_and_output_lengths(rendered):
    pytest.importorskip("bertviz")
    out, _ = rendered
    page = (out / "bertviz-model-view.html").read_text()
    assert "attention" in page and len(page) > 1000


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda run, out: render_maps(run.parent / "nothing", out), "not a directory"),
        (lambda run, out: render_maps(run, out, heads=[(9, 0)]), "out of range"),
        (lambda run, out: render_maps(run, out, examples=[100_000]), r"example 100000 is out of range: the test split has (\d+) rows here; give --example 0 to \d+$"),
        (lambda run, out: render_maps(run, out, given={"equation": "7x^2+3x+1=0 ;"}), "cannot read the equation"),
        (lambda run, out: render_maps(run, out, given={"text": "7x^2+3x+1=0"}), "--text does not apply"),
        (lambda run, out: explain(run, {"equation": "7y^2=0"}, out), "cannot read the equation"),
        (lambda run, out: explain(run, {"equation": "7x^2+3x+1=0"}, out, heads=[(0, 99)]), "out of range"),
    ],
    ids=["unknown run", "layer", "example", "unreadable in maps", "field of another task", "unreadable", "head"],
)
def test_maps_and_explain_bad_inputs(run_dir, tmp_path, call, message):
    with pytest.raises(QuadlabError, match=message):
        call(run_dir, tmp_path / "f")
    assert not (tmp_path / "f").exists()


def test_bad_input_from_the_command_line_is_one_line_exit_2(run_dir, tmp_path, capsys, monkeypatch):
    status, _, err = quadlab(capsys, monkeypatch, "maps", "--run", run_dir, "--head", "9:0", "--out", tmp_path / "f")
    assert status == 2 and "out of range" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "f").exists()


def test_explain_prints_solution_verdict_and_most_attended_tokens(run_dir, tmp_path, capsys, monkeypatch):
    status, out, err = quadlab(capsys, monkeypatch, "explain", "x^2 - 5x + 6 = 0", "--run", run_dir, "--out", tmp_path / "e")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "equation: 1x^2-5x+6=0" and lines[1].startswith("solution: ") and lines[2].startswith("verdict:  ok ")
    assert lines[3].startswith("answer:   ") and lines[3].endswith(" (true: 2, 3)")
    tested = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    like = [r for r in tested if r["num_roots"] == 2 and abs_d(r["equation"]) < 10]  # as x^2-5x+6, D = 1
    solved = sum(r["exact"] for r in like)
    assert lines[4] == (f"like it:  {len(like)} of the {len(tested)} test equations the run was evaluated on have two real roots and a |D| "
                        f"of 1 digit, as this one; it solved {solved} of them ({solved / max(len(like), 1):.3f})" if like else
                        f"like it:  none of the {len(tested)} test equations the run was evaluated on has two real roots and a |D| "
                        f"of 1 digit, as this one: it was not tested on such equations"), lines[4]
    from gen.equations import write_solution
    from train.metrics import diagnose

    solution, correct, target = lines[1].removeprefix("solution: "), lines[2].endswith("answer_correct True"), write_solution(1, -5, 6)
    named = diagnose(target, solution, correct)["first_wrong"]  # the run is in the published format
    assert lines[5].startswith(f"wrong at: {named}" if named else "wrong at: nothing"), lines[5]
    t = next((i for i, (x, y) in enumerate(zip(solution, target)) if x != y), min(len(solution), len(target)))
    at_wrong = [line for line in lines if " at the first wrong token, layer " in line]
    if solution != target:  # 10 training steps: nearly always
        assert re.fullmatch(rf"at token: decoder position {t} \(as in the maps\), which writes the solution's character {t + 1}: the model "
                            rf"wrote '.+' \(probability [01]\.\d\d\), where the reference has '.+' \([01]\.\d\d\)", lines[6]), lines[6]
        assert len(at_wrong) == 4  # cross and decoder self-attention, 2 layers each
    else:
        assert not at_wrong and not any(line.startswith("at token:") for line in lines)
    least = next(line for line in lines if line.startswith("least sure: "))
    # the run's eval recorded each test output's least_sure: as many as the tenth holds, and how many were solved
    as_sure = next(line for line in lines if line.startswith("as sure:  "))
    assert re.fullmatch(rf"as sure:  (\d+ of the {len(tested)} test outputs the run was evaluated on had their least sure token from "
                        rf"\d\.\d to \d\.\d( \(included\))?, as this one; it solved \d+ of them \([01]\.\d{{3}}\)|none of the {len(tested)} .+)",
                        as_sure), as_sure
    assert all("least_sure" in r for r in tested)
    assert re.fullmatch(r"least sure: probability [01]\.\d\d, at decoder position \d+: '.+' (in statement \d+ `[^`]*`|ending the solution); "
                        r"its other choice there '.+' \([01]\.\d\d\)", least), least
    attended = [line for line in lines if ": most attended " in line]
    assert len(attended) == 4 + len(at_wrong)  # 2 encoder + 2 cross layers
    assert all(re.search(r"token '[^']+' \(position \d+, [01]\.\d\d\)$", line) for line in attended), attended
    # the keys of the decoder's self-attention are the solution's tokens, those of the others the equation's
    for line in attended:
        side = "output" if line.startswith("decoder self-attention") else "input"
        assert f": most attended {side} token '" in line, line
    assert (tmp_path / "e" / "example-explain" / "cross-heads.png").exists()


def test_first_wrong_token_is_where_the_solution_parts_from_the_reference_with_both_probabilities(run_dir):
    from train.quadratic import first_wrong_token, reference

    task = Analysis(run_dir, "explain", split=None)
    equation, target = "1x^2-5x+6=0", reference(1, -5, 6, "published")
    for solution, t in ((target[:9] + "7" + target[10:], 9), (target[:20], 20), (target + "x", len(target))):  # a digit; stopped; went on
        batch = teacher_forced_batch(task.tokenizer, [equation], [solution])
        found = first_wrong_token(task.model, task.tokenizer, batch, target, solution)
        with torch.inference_mode():
            p = task.model(**batch["inputs"]).logits[0, t].float().softmax(-1)
        ids = {ch: task.tokenizer.convert_tokens_to_ids(ch) for ch in "7x" + target[t:t + 1]}
        wrote = "</s>" if t == len(solution) else solution[t]
        want = "</s>" if t == len(target) else target[t]
        p_wrote, p_want = (float(p[ids.get(ch, task.tokenizer.eos_token_id)]) for ch in (wrote, want))
        rank = int((p > p_want).sum()) + 1
        assert found == {"position": t, "wrote": wrote, "reference": want, "p_wrote": pytest.approx(p_wrote, abs=1e-5),
                         "p_reference": pytest.approx(p_want, abs=1e-5), "reference_rank": rank}
        assert 1 <= rank <= len(p) and (rank == 1) == (p_want >= float(p.max()))


def test_least_sure_token_is_the_lowest_probability_of_a_written_token_and_its_statement(run_dir):
    from train.quadratic import decode_greedy, least_sure_token, reference

    task = Analysis(run_dir, "explain", split=None)
    equation, target = "1x^2-5x+6=0", reference(1, -5, 6, "published")
    own, (sure,) = decode_greedy(task.model, task.tokenizer, [equation], batch_size=1)
    budget = task.model.generation_config.max_new_tokens
    # the last: as long as the budget, as an output cut off there, before any </s>
    for solution in (target, target[:9] + "7" + target[10:], (target * 20)[:budget], own[0]):
        batch = teacher_forced_batch(task.tokenizer, [equation], [solution])
        ended = len(solution) < budget  # the model's own output may be cut off at the budget, before its </s>
        found = least_sure_token(task.model, task.tokenizer, batch, solution, ended)
        with torch.inference_mode():
            p = task.model(**batch["inputs"]).logits[0].float().softmax(-1)
        ids = task.tokenizer(solution)["input_ids"][: None if ended else -1]  # the characters and </s>
        written = [float(p[i, token]) for i, token in enumerate(ids)]
        t = int(np.argmin(written))
        second = sorted(range(p.shape[1]), key=lambda j: -float(p[t, j]))[:2]
        other = next(j for j in second if j != ids[t])
        assert found["position"] == t and found["p"] == pytest.approx(written[t], abs=1e-5) and (ended or t < len(solution))
        assert found["token"] == ("</s>" if t == len(solution) else solution[t])
        assert found["other"] == task.tokenizer.convert_ids_to_tokens(other) and found["p_other"] == pytest.approx(float(p[t, other]), abs=1e-5)
        if t < len(solution):
            statement = solution.split(";")[found["statement"] - 1]
            start = len(";".join(solution.split(";")[: found["statement"] - 1])) + (found["statement"] > 1)
            assert statement == found["statement_text"] and start <= t <= start + len(statement)
    # on its own output, the least sure token is the one that eval's decoding records
    assert found["p"] == pytest.approx(sure, abs=1e-4)


def test_most_attended_also_reads_the_single_queries_an_example_points_at():
    class Task:
        attended = [("cross-attention", "cross", None, None)]
        sides = {"cross": ("decoder", "encoder")}
        roles = {"decoder": ("d",), "encoder": ("e",)}

    maps = np.full((2, 2, 3, 4), 0.25)  # (layers, heads, queries, keys)
    maps[0, :, 1] = [0.1, 0.1, 0.7, 0.1]  # query 1 reads key 2 in layer 0, key 3 in layer 1
    maps[1, :, 1] = [0.1, 0.1, 0.1, 0.7]
    example = {"maps": {"cross": maps}, "role_ids": {"decoder": [0] * 3, "encoder": [0] * 4},
               "tokens": {"decoder": ["<start>", "1", "2"], "encoder": ["a", "b", "c", "</s>"]},
               "focus": [{"label": "at query 1", "kind": "cross", "query": 1}]}
    found = most_attended(Task, example)
    assert found["at query 1"] == ["'c' (position 2, 0.70)", "'</s>' (position 3, 0.70)"]
    assert list(found) == ["cross-attention", "at query 1"] and len(found["cross-attention"]) == 2
    del example["focus"]
    assert list(most_attended(Task, example)) == ["cross-attention"]


def abs_d(equation: str) -> int:
    from gen.grader import parse_equation

    a, b, c = parse_equation(equation)
    return abs(b * b - 4 * a * c)


def test_like_it_counts_the_runs_test_equations_of_the_same_class_and_size(tmp_path):
    import gzip

    from train.quadratic import as_sure, like_it, tested_groups

    assert like_it(tested_groups(tmp_path), 1, -5, 6) == f"not known: the run has no predictions.jsonl (`cli.py eval {tmp_path}` writes it)"
    rows = [{"equation": "1x^2-5x+6=0", "exact": True},      # two real roots, D = 1: one digit
            {"equation": "1x^2-7x+12=0", "exact": False},    # D = 1
            {"equation": "1x^2-21x+20=0", "exact": True},    # D = 361: three digits
            {"equation": "1x^2-4x+4=0", "exact": True},      # D = 0, |b| of one digit
            {"equation": "1x^2-40x+400=0", "exact": False},  # D = 0, |b| of two
            {"equation": "2x^2+1x+1=0", "exact": True},      # no real roots, D = -7
            {"equation": "x^3=1", "exact": True}]            # not an equation the grader reads: left out
    with gzip.open(tmp_path / "predictions.jsonl.gz", "wt") as out:  # the compact file that tracked results keep
        out.write("".join(json.dumps(r) + "\n" for r in rows))
    tested = tested_groups(tmp_path)
    head = "of the 6 test equations the run was evaluated on"
    assert like_it(tested, 1, -3, 2) == f"2 {head} have two real roots and a |D| of 1 digit, as this one; it solved 1 of them (0.500)"
    assert like_it(tested, 1, -19, 18) == f"1 {head} have two real roots and a |D| of 3 digits, as this one; it solved 1 of them (1.000)"  # D = 289
    assert like_it(tested, 1, 6, 9) == f"1 {head} have one real root (D = 0) and a |b| of 1 digit, as this one; it solved 1 of them (1.000)"
    assert like_it(tested, 1, 20, 100) == f"1 {head} have one real root (D = 0) and a |b| of 2 digits, as this one; it solved 0 of them (0.000)"
    assert like_it(tested, 1, 1, 2) == f"1 {head} have no real roots and a |D| of 1 digit, as this one; it solved 1 of them (1.000)"
    assert like_it(tested, 1, 2, 5) == "none of the 6 test equations the run was evaluated on has no real roots and a |D| of 2 digits, as this one: " \
                                       "it was not tested on such equations"  # D = -16
    # equations the generator never draws, whatever the counts: their sizes say nothing
    assert like_it(tested, 3, -7, 2) == ("unlike every equation the run was trained and tested on: b and c are not multiples of a, as in every "
                                         "equation of the datasets, a(x^2 - s x + p) with whole s and p")
    assert like_it(tested, 1, -3, 2, Ranges(a_lo=-5, a_hi=5, root_lo=-1, root_hi=1)) == (
        "unlike every equation the run was trained and tested on: a root is outside the ranges it was drawn from (a in -5:5, roots in -1:1)")
    (tmp_path / "predictions.jsonl").write_text("not json\n")  # eval's own file comes first; a damaged one says so
    assert like_it(tested_groups(tmp_path), 1, -3, 2).startswith(f"not known: {tmp_path / 'predictions.jsonl'} line 1")

    assert as_sure(tested, 0.5) == "not known: the run's predictions have no least_sure (eval records it since 2026-12-07: `cli.py eval RUN` again)"


def test_as_sure_counts_the_runs_test_outputs_as_unsure_and_how_many_were_right(tmp_path):
    from train.quadratic import as_sure, tested_groups

    rows = [{"equation": "1x^2-5x+6=0", "exact": True, "least_sure": 0.55},
            {"equation": "1x^2-7x+12=0", "exact": False, "least_sure": 0.5},   # a tenth's lower end is in it
            {"equation": "1x^2-21x+20=0", "exact": False, "least_sure": 0.599},
            {"equation": "1x^2-4x+4=0", "exact": True, "least_sure": 1.0},     # the last tenth includes 1
            {"equation": "1x^2-40x+400=0", "exact": True, "least_sure": 0.93},
            {"equation": "2x^2+1x+1=0", "exact": True}]                        # none recorded: counted as read only
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tested = tested_groups(tmp_path)
    head = "of the 6 test outputs the run was evaluated on had their least sure token"
    assert as_sure(tested, 0.52) == f"3 {head} from 0.5 to 0.6, as this one; it solved 1 of them (0.333)"
    assert as_sure(tested, 0.999) == f"2 {head} from 0.9 to 1.0 (included), as this one; it solved 2 of them (1.000)"
    assert as_sure(tested, 0.31) == "none of the 6 test outputs the run was evaluated on had its least sure token from 0.3 to 0.4, as this one"
    assert as_sure(tested_groups(tmp_path / "none"), 0.5).startswith("not known: the run has no predictions.jsonl")


REVERSED_EXAMPLE = ("~4*a=82;216154*2=422309;216154*8=6982163;0422309+6982163=63154621;6553*3=86601;6553*5=08771;086601+08771=064421;"
                    "6553*5=08771;0064421+08771=0832621;6553*6=63312;00832621+63312=63154621;D=63154621-63154621=00000000=0;sqrt(D)=0;"
                    "2*a=41;-6553-0=-6553;53-41*2=7;57-41*5=5;65-41*4=0;x=-6553/41=-452;-6553+0=-6553;53-41*2=7;57-41*5=5;65-41*4=0;"
                    "x=-6553/41=-452;x=-452;x=-452;")  # the best model's padded-d-plain solution of the published example


@pytest.mark.parametrize("coefficients, solution, expected", [
    ((7, 3556, 451612), REVERSED_EXAMPLE, "answer:   -254, -254 (true: -254)"),  # digits written reversed, read plain
    ((7, 3556, 451612), REVERSED_EXAMPLE.replace("x=-452;x=-452;", "x=-453;x=-452;"), "answer:   -354, -254 (true: -254)"),
    ((1, -5, 6), "D=((-5)^2-4*1*6)=1;x=(-(-5)-1)/(2*1)=2;x=(-(-5)+1)/(2*1)=3;x=2;x=3;", "answer:   2, 3 (true: 2, 3)"),
    ((5, 3, 7), "D=(3^2-4*5*7)=-131;x=none;", "answer:   no real roots (true: no real roots)"),
    ((1, -5, 6), "x=none;", "answer:   no real roots (true: 2, 3)"),
    ((1, -5, 6), "D=(", "answer:   unreadable (true: 2, 3)"),
])
def test_explain_states_the_answer_as_the_grader_reads_it(coefficients, solution, expected):
    from gen.grader import grade, true_roots

    result = {"answer": {"equation": "e", "solution": solution, "verdict": grade(*coefficients, solution).as_dict(),
                         "true_roots": true_roots(*coefficients)}, "attended": {}}
    assert Analysis.answer_lines(result)[3] == expected


def test_the_same_capture_and_average_serve_an_encoder_only_model():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32))
    input_ids = torch.randint(5, 50, (3, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0  # a padded row
    captured = capture(model, input_ids, attention_mask)
    assert set(captured) == {"encoder"}
    attention, q_mask, k_mask = captured["encoder"]
    assert attention.shape == (3, 3, 2, 9, 9)
    assert float(attention[:, 1, :, :, 6:].abs().max()) == 0.0  # padded keys get nothing
    roles = torch.tensor([[0, 1, 1, 1, 2, 2, 2, 2, 3]] * 3)
    roles[1, 6:] = -1
    average = AttentionAverage(("cls", "question", "context", "sep"), ("cls", "question", "context", "sep"))
    average.add(attention, q_mask, k_mask, roles, roles)
    np.testing.assert_allclose(average.role_mean.sum(axis=-1), 1.0, atol=1e-6)
    assert average.examples == 3


def test_an_interrupted_explain_or_ask_leaves_the_previous_figures_whole(monkeypatch, tmp_path):
    from analyze import maps

    (tmp_path / "example-explain").mkdir()
    (tmp_path / "example-explain" / "cross-heads.png").write_bytes(b"old")

    def interrupted(example, name, out_dir, heads, arrays):  # Ctrl-C after the first figure
        (out_dir / f"example-{name}").mkdir(parents=True)
        (out_dir / f"example-{name}" / "cross-heads.png").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(maps, "render_example", interrupted)
    with pytest.raises(KeyboardInterrupt):
        maps.write_example({}, "explain", tmp_path, [])
    assert [p.name for p in tmp_path.iterdir()] == ["example-explain"]  # no hidden .partial or .old folder
    assert (tmp_path / "example-explain" / "cross-heads.png").read_bytes() == b"old"
