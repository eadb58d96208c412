"""The neuron view (analyze/neuron.py) against the models' own attention, on tiny random models of
every supported architecture (float32), and `cli.py maps --neuron` end to end on a tiny trained run."""

import json
import shutil

import numpy as np
import pytest
import torch

from analyze.attention import capture
from analyze.maps import render_maps
from analyze.neuron import neuron_view
from conftest import offline_dom
from gen import QuadlabError
from gen.dataset import GenOptions, generate
from gen.equations import Ranges
from test_architectures import ARCHITECTURES, HEADS, build
from train.config import resolve
from train.quadratic import train_run

LOWEST = torch.finfo(torch.float32).min


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch(request):
    return build(request.param)


def _pre_softmax(model, inputs, monkeypatch) -> dict:
    """{kind: [per layer (B, H, Q, K)]}: what enters each softmax of the model's own forward pass (in
    eager attention the softmax runs once per attention layer: the encoder's, then per decoder block
    self- and cross-attention)."""
    seen, softmax = [], torch.nn.functional.softmax

    def recording(x, *args, **kwargs):
        seen.append(x.detach().clone())
        return softmax(x, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(torch.nn.functional, "softmax", recording)
        capture(model, **inputs)
    if not model.config.is_encoder_decoder:
        assert len(seen) == 2
        return {"encoder": [s.view(2, HEADS, *s.shape[-2:]) for s in seen]}  # DeBERTa-v2's come as (B * H, Q, K)
    assert len(seen) == 6
    return {"encoder": seen[:2], "decoder": seen[2::2], "cross": seen[3::2]}


def _queries(inputs, kind):
    """(row, query): the first and last token of the full row, the last real token of the padded one."""
    mask = inputs["attention_mask" if kind == "encoder" else "decoder_attention_mask"]
    return [(0, 0), (0, int(mask[0].sum()) - 1), (1, int(mask[1].sum()) - 1)]


def test_products_scores_and_logits_are_the_models_own(arch, monkeypatch):
    model, inputs = arch
    attention = capture(model, **inputs)
    pre_softmax = _pre_softmax(model, inputs, monkeypatch)
    for kind, per_layer in pre_softmax.items():
        for layer, head in ((0, 0), (1, HEADS - 1)):
            for row, query in _queries(inputs, kind):
                view = neuron_view(model, inputs, kind, layer, head, query, row=row)
                where = f"{kind} L{layer} H{head} row {row} query {query}"
                np.testing.assert_allclose(view["products"], view["query"][None, :] * view["keys"], atol=1e-6, err_msg=where)
                np.testing.assert_allclose(view["products"].sum(-1) * view["scaling"], view["scores"], atol=1e-5, err_msg=where)
                np.testing.assert_allclose(view["scores"] + view["bias"], view["logits"], atol=1e-5, err_msg=where)
                model_attention = attention[kind][0][layer, row, head, query].numpy()
                np.testing.assert_allclose(torch.softmax(torch.from_numpy(view["logits"]), -1).numpy(), model_attention,
                                           atol=1e-5, err_msg=where)
                np.testing.assert_allclose(view["attention"], model_attention, atol=1e-6, err_msg=where)
                own = per_layer[layer][row, head, query].numpy()
                hidden = own <= LOWEST / 2
                assert np.array_equal(view["masked"], hidden), where
                np.testing.assert_allclose(view["logits"][~hidden], own[~hidden], atol=1e-5, err_msg=where)
                assert (view["logits"][hidden] <= LOWEST / 2).all(), where


def test_scaling_and_bias_per_architecture(arch):
    model, inputs = arch
    kind_type = model.config.model_type
    encoder = neuron_view(model, inputs, "encoder", 1, 2, 3)
    d = encoder["query"].shape[0]
    if kind_type in ("t5", "mt5"):  # no scaling; a relative position bias in self-attention, none in cross-attention
        assert encoder["scaling"] == 1.0 and np.abs(encoder["bias"]).max() > 1e-3
        assert np.abs(neuron_view(model, inputs, "decoder", 1, 2, 3)["bias"][:4]).max() > 1e-3
        assert np.abs(neuron_view(model, inputs, "cross", 1, 2, 3)["bias"]).max() == 0
    elif kind_type == "deberta-v2":  # both disentangled terms: 1/sqrt(3d), and their bias
        assert encoder["scaling"] == pytest.approx((3 * d) ** -0.5) and np.abs(encoder["bias"]).max() > 1e-3
    else:
        assert encoder["scaling"] == pytest.approx(d ** -0.5) and np.abs(encoder["bias"]).max() == 0
    padded = neuron_view(model, inputs, "encoder", 0, 0, 0, row=1)  # the second row has 2 padding keys
    assert padded["masked"].tolist() == [False] * 5 + [True] * 2 and padded["attention"][5:].max() < 1e-6


@pytest.mark.parametrize("args, message", [
    (("encoder", 2, 0, 0, 0), "layer 2 is out of range"),
    (("encoder", -1, 0, 0, 0), "layer -1 is out of range"),
    (("encoder", 0, HEADS, 0, 0), f"head {HEADS} is out of range"),
    (("encoder", 0, 0, 7, 0), "query token 7 is out of range"),
    (("encoder", 0, 0, 5, 1), "query token 5 is out of range"),  # padding of row 1
    (("encoder", 0, 0, 0, 2), "row 2 is out of range"),
    (("decoder", 0, 0, 0, 0), "no decoder attention"),
], ids=["layer", "negative layer", "head", "token", "padding token", "row", "kind"])
def test_bad_input_is_one_line(args, message):
    model, inputs = build("bert")
    kind, layer, head, query, row = args
    with pytest.raises(QuadlabError, match=message) as err:
        neuron_view(model, inputs, kind, layer, head, query, row=row)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("neuron")
    generate(GenOptions(rows=120, seed=3, ranges=Ranges(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)), root / "data")
    config = resolve("tiny", None, {"data": str(root / "data"), "run_dir": str(root / "run"), "max_steps": 10, "eval_every": 10,
                                    "val_size": 10, "batch_size": 16})
    train_run(config, progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def rendered(run_dir, run_cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("rendered") / "figs"
    result = run_cli("maps", "--run", run_dir, "--limit", 5, "--neuron", "1:2:3", "--neuron", "cross:0:1:4", "--out", out, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def test_maps_neuron_writes_the_figure_and_the_arrays(rendered):
    index = json.loads((rendered / "index.json").read_text())
    views = [f for f in index["figures"] if f["what"] == "neuron view"]
    assert [(f["kind"], f["layer"], f["head"], f["query"]) for f in views] == [("encoder", 1, 2, 3), ("cross", 0, 1, 4)]
    for figure in views:
        assert (rendered / figure["file"]).stat().st_size > 0 and (rendered / figure["svg"]).read_text().lstrip().startswith("<?xml")
    arrays = np.load(rendered / "maps.npz")
    for kind, name in (("encoder", "neuron-encoder-L1H2Q3"), ("cross", "neuron-cross-L0H1Q4")):
        view = {key: arrays[f"example-0/{name}/{key}"] for key in ("query", "keys", "products", "scores", "bias", "logits", "attention")}
        maps = arrays[f"example-0/{kind}"]  # (L, H, Q, K): the model's attention, as the maps show it
        assert view["keys"].shape == (maps.shape[3], view["query"].shape[0])
        layer, head, query = (1, 2, 3) if kind == "encoder" else (0, 1, 4)
        np.testing.assert_allclose(view["attention"], maps[layer, head, query], atol=1e-6)
        np.testing.assert_allclose(torch.softmax(torch.from_numpy(view["logits"]), -1).numpy(), maps[layer, head, query], atol=1e-5)
    assert "neuron view" in (rendered / "index.html").read_text()
    viewer = json.loads((rendered / "viewer.json").read_text())["examples"][0]["neuron"]
    assert set(viewer) == {"encoder", "decoder", "cross"}
    assert viewer["encoder"]["bias"]["by"] == "distance" and viewer["cross"]["bias"]["by"] == "none"
    assert viewer["decoder"]["masked"][0] == "0" + "1" * (len(viewer["decoder"]["masked"]) - 1)  # causal
    # q and k in integer thousandths of the model's vectors (neuron_view's arrays, floats)
    encoder = viewer["encoder"]
    assert encoder["unit"] == 1000 and all(isinstance(x, int) for x in encoder["q"][1][2][3])
    np.testing.assert_allclose(np.array(encoder["k"][1][2]) / 1000, arrays["example-0/neuron-encoder-L1H2Q3/keys"], atol=0.0005 + 1e-6)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium on this machine")
def test_the_reports_viewer_draws_the_neuron_view_offline(rendered, tmp_path):
    dom = offline_dom(rendered / "index.html", tmp_path / "profile")
    canvas = dom.split('id="neuron"')[1].split(">")[0]
    assert 'data-drawn="encoder/0/0/0"' in canvas
    drawn = np.array(json.loads(canvas.split('data-attention="')[1].split('"')[0].replace("&quot;", '"')))
    # the page's own softmax of its q.k (vectors rounded to 3 decimals) and bias against the model's attention
    np.testing.assert_allclose(drawn, np.load(rendered / "maps.npz")["example-0/encoder"][0, 0, 0], atol=0.02)


@pytest.mark.parametrize("spec, message", [(("encoder", 2, 0, 0), "layer 2 is out of range"), (("decoder", 0, 4, 0), "head 4 is out of range"),
                                           (("cross", 0, 0, 999), "query token 999 is out of range"),
                                           (("encoder", 0, 0, 0), "drawn on an example")], ids=["layer", "head", "token", "no example"])
def test_maps_refuses_a_neuron_out_of_range_before_writing(run_dir, tmp_path, spec, message):
    with pytest.raises(QuadlabError, match=message):
        render_maps(run_dir, tmp_path / "f", limit=2, neurons=[spec], examples=[] if "example" in message else None, progress=False)
    assert not (tmp_path / "f").exists()


def test_bad_neuron_specs_from_the_command_line_are_one_line_exit_2(run_dir, tmp_path, capsys):
    import cli

    for spec, message in (("2:0:0", "layer 2 is out of range"), ("sideways:0:0:0", "is not [KIND:]LAYER:HEAD:QUERY"),
                          ("1:2", "is not [KIND:]LAYER"), ("1:2:3:4:5", "is not [KIND:]LAYER"), ("1:x:3", "is not [KIND:]LAYER"),
                          ("cross:1:2", "is not [KIND:]LAYER")):
        with pytest.raises(SystemExit) as stop:
            cli.main(["maps", "--run", str(run_dir), "--limit", "2", "--neuron", spec, "--out", str(tmp_path / "f")])
        stderr = capsys.readouterr().err
        assert stop.value.code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, (spec, stderr)
        assert not (tmp_path / "f").exists()
