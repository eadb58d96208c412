"""One set of analysis tests for every task in the registry (train/tasks.py): each task gets a tiny
run, and maps, heads, explain and the captured batches must hold up on it alike."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from analyze.heads import analyze_heads, context_figure
from analyze.maps import explain, render_maps
from gen import QuadlabError
from gen.dataset import GenOptions, generate
from gen.equations import Ranges
from train import tasks
from train.runs import analysis

from conftest import GIVEN, TINY_DATA, tiny_run



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks-data")
    generate(GenOptions(rows=200, seed=5, ranges=Ranges(**TINY_DATA)), root / "quadratic", workers=1)
    return root


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """trained(name): a tiny run of task `name`, with its checkpoints kept (step-4, step-8), trained
    once for the module's tests (which only read it)."""
    runs = {}

    def get(name: str) -> Path:
        if name not in runs:
            runs[name] = tiny_run(name, data / "quadratic", tmp_path_factory.mktemp(name), max_steps=8, eval_every=4, keep_checkpoints=1)
        return runs[name]

    return get


@pytest.fixture(scope="module", params=list(tasks.TASKS))
def run(request, trained):
    return request.param, trained(request.param)


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_every_task_provides_the_interface(name):
    module = tasks.module(name)
    assert callable(module.train_run) and callable(module.evaluate_run) and callable(module.metric_lines) and callable(module.reads_data)
    task = module.Analysis
    for attribute in ("name", "kinds", "sides", "roles", "symbols", "control_roles", "control_name", "metrics", "class_name", "inputs",
                      "averaged_on", "batch_size", "attended", "batches", "example", "answer_lines", "query_masks", "gradient_batches",
                      "row_losses", "evaluate", "ablate", "load_model"):
        assert hasattr(task, attribute), f"{name}: Analysis has no {attribute}"
    assert task.name == name and set(task.sides) == set(task.kinds)
    for kind, sides in task.sides.items():
        assert set(sides) <= set(task.roles)
    for _, kind, queries, keys in task.attended:
        assert kind in task.kinds
    assert tasks.TASKS[name].train_command.startswith("python cli.py")


def test_captured_batches_follow_the_contract(run):
    name, run_dir = run
    task = analysis(run_dir, "maps", limit=6)
    masks = {"encoder": "attention_mask", "decoder": "decoder_attention_mask"}
    examples = 0
    for batch in task.batches(4):
        width = {side: batch["inputs"][masks[side]].shape[1] for side in batch["roles"]}
        assert len(batch["classes"]) == len(batch["rows"]) == batch["inputs"]["input_ids"].shape[0]
        assert all(0 <= r < task.n_rows for r in batch["rows"])
        for side, roles in batch["roles"].items():
            mask = batch["inputs"][masks[side]].bool()
            assert roles.shape == mask.shape == batch["segments"][side].shape
            assert torch.equal(roles >= 0, mask) and torch.equal(batch["segments"][side] >= 0, mask)
            assert int(roles.max()) < len(task.roles[side])
            assert [len(t) for t in batch["tokens"][side]] == mask.sum(dim=1).tolist() and max(map(len, batch["tokens"][side])) == width[side]
            assert all(np.all(np.diff(s[m].numpy()) >= 0) for s, m in zip(batch["segments"][side], mask))  # segments only begin
        examples += len(batch["classes"])
    assert examples >= task.n_rows == 6  # SQuAD: a long context makes several windows


def test_maps_on_every_task(run, tmp_path):
    name, run_dir = run
    result = render_maps(run_dir, tmp_path / "figs", limit=6, examples=[1], heads=[(0, 1)], batch_size=4, progress=False)
    task = tasks.module(name).Analysis
    assert result["task"] == name and result["examples_averaged"] == 6 and set(result["roles"]) == set(task.kinds)
    arrays = np.load(tmp_path / "figs" / "maps.npz")
    for kind in task.kinds:
        np.testing.assert_allclose(arrays[f"average/{kind}-role-share"].sum(axis=-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(arrays[f"example-1/{kind}"].sum(axis=-1), 1.0, atol=1e-5)  # every query's row over its keys
    for figure in result["figures"]:
        assert (tmp_path / "figs" / figure["file"]).stat().st_size > 0
    assert {f["what"] for f in result["figures"]} >= {"per-head maps", "single head", "layer x token summary", "average by role", "symbol statistics"}
    with pytest.raises(QuadlabError, match="does not apply"):
        render_maps(run_dir, tmp_path / "other", given={"unknown_field": "x"}, progress=False)
    assert not (tmp_path / "other").exists()


def test_explain_on_every_task(run, tmp_path):
    name, run_dir = run
    result = explain(run_dir, GIVEN[name], tmp_path / "explain")
    task = tasks.module(name).Analysis
    layers = analysis(run_dir, "explain").model.config
    assert result["lines"] and all(isinstance(line, str) for line in result["lines"])
    assert {label for label, *_ in task.attended} <= set(result["attended"])  # and any single query the example points at (`focus`)
    n_layers = getattr(layers, "num_layers", None) or layers.num_hidden_layers
    assert all(len(found) in (0, n_layers) for found in result["attended"].values())
    assert (tmp_path / "explain" / "example-explain" / "encoder-heads.png").exists()


def test_explain_and_serve_need_none_of_the_runs_data(run, tmp_path):
    """A run moved away from its data (a tracked or unpacked run/) still answers given inputs;
    the analyses of a split say what is missing."""
    import shutil

    import yaml

    from analyze.serve import load_runs

    name, run_dir = run
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("checkpoint*", "step-*"))
    config = yaml.safe_load((moved / "config.yaml").read_text())
    for key in ("data", "train_file"):
        if config.get(key):
            config[key] = str(tmp_path / "gone" / key)
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(QuadlabError, match="gone"):
        analysis(moved, "maps")
    result = explain(moved, GIVEN[name], tmp_path / "explain")
    assert result["lines"] and (tmp_path / "explain" / "example-explain" / "encoder-heads.png").exists()
    assert load_runs([moved])["moved"].task.n_rows == 0


def test_data_gives_a_moved_run_its_rows_and_leaves_its_config_as_it_was(run, data, tmp_path, capsys, monkeypatch):
    """--data: eval and the analyses of a run trained elsewhere (its `data:` gone) read a dataset made
    here, without an edit of its config.yaml; a task that reads no dataset of `cli.py gen` refuses it."""
    import shutil

    import yaml

    from test_bad_inputs import quadlab, snapshot

    name, run_dir = run
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("checkpoint*", "step-*"))
    config = yaml.safe_load((moved / "config.yaml").read_text())
    if config.get("data"):
        config["data"] = str(tmp_path / "gone")
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    before = snapshot(moved)
    here = data / "quadratic"
    if name == "squad":  # reads its SQuAD files
        for command in (("eval", moved), ("maps", "--run", moved), ("heads", moved), ("probe", moved), ("patch", moved)):
            status, _, err = quadlab(capsys, monkeypatch, *command, "--data", here, "--out", tmp_path / "out")
            assert status == 2 and "--data is for runs that read a dataset of `cli.py gen`" in err and len(err.strip().splitlines()) == 1
        assert snapshot(moved) == before and not (tmp_path / "out").exists()
        return
    status, _, err = quadlab(capsys, monkeypatch, "eval", moved, "--limit", 3, "--out", tmp_path / "without")
    assert status == 2 and "gone" in err and "--data" in err
    status, printed, err = quadlab(capsys, monkeypatch, "eval", moved, "--limit", 3, "--out", tmp_path / "with", "--data", here)
    assert status == 0, err
    status, _, err = quadlab(capsys, monkeypatch, "eval", run_dir, "--limit", 3, "--out", tmp_path / "original")
    assert status == 0, err  # the same rows and answers as the run where it was trained
    assert (tmp_path / "with" / "predictions.jsonl").read_text() == (tmp_path / "original" / "predictions.jsonl").read_text() != ""
    task = analysis(moved, "maps", limit=4, data=here)
    assert task.n_rows == 4 and task.config.data == str(here)
    reference = analysis(run_dir, "maps", limit=4)  # the same rows as from the run's own data:
    assert json.dumps(task.rows, sort_keys=True, default=str) == json.dumps(reference.rows, sort_keys=True, default=str)
    assert snapshot(moved) == before  # config.yaml still names the data it was trained on


def test_the_default_figures_folder_is_named_after_the_run(run, tmp_path, monkeypatch):
    """figures/<run>: the directory's name, or NAME for NAME/run (gpu-job's and figures/results/' layout),
    so that two unpacked runs do not write into one folder."""
    import shutil

    from train.runs import figures_dir

    name, run_dir = run
    unpacked = tmp_path / "results" / f"{name}-job" / "run"
    shutil.copytree(run_dir, unpacked, ignore=shutil.ignore_patterns("checkpoint*", "step-*"))
    monkeypatch.chdir(tmp_path)
    assert figures_dir(Path("runs/quadratic-tiny-seed0/")) == Path("figures/quadratic-tiny-seed0")
    assert figures_dir(Path("results") / f"{name}-job" / "run") == Path("figures") / f"{name}-job"
    monkeypatch.chdir(unpacked.parent)
    assert figures_dir(Path("run")) == figures_dir(Path(".").resolve() / "run") == Path("figures") / f"{name}-job"
    monkeypatch.chdir(unpacked)
    assert figures_dir(Path(".")) == Path("figures") / f"{name}-job"  # "." is the run's directory: named, not ""
    monkeypatch.chdir(tmp_path)
    explain(Path("results") / f"{name}-job" / "run", GIVEN[name])
    assert (tmp_path / "figures" / f"{name}-job" / "explain" / "example-explain" / "encoder-heads.png").exists()
    assert not (tmp_path / "figures" / "run").exists()


def test_eval_out_writes_elsewhere_and_leaves_the_run_as_it_was(run, tmp_path, capsys, monkeypatch):
    """`eval --out DIR`: a quick --limit check must not replace the run's full test results."""
    from test_bad_inputs import quadlab, snapshot

    name, run_dir = run
    before = snapshot(run_dir)
    status, printed, err = quadlab(capsys, monkeypatch, "eval", run_dir, "--limit", 3, "--out", tmp_path / "check" / "here")
    assert status == 0, err
    assert snapshot(run_dir) == before
    written = json.loads((tmp_path / "check" / "here" / "metrics.json").read_text())
    found = written if name == "squad" else written["test"]  # SQuAD has one evaluation set, its metrics at the top
    assert set(found) >= {"quadratic": {"rows", "greedy"}, "squad": {"f1", "exact_match"}, "classify": {"accuracy"}}[name], found
    predictions = {"squad": "predictions.json"}.get(name, "predictions.jsonl")
    assert (tmp_path / "check" / "here" / predictions).stat().st_size > 0 and printed
    if name == "quadratic":
        assert written["test"]["rows"] == 3 and (tmp_path / "check" / "here" / "diagnosis.png").exists()
    (tmp_path / "file").write_text("")
    status, _, err = quadlab(capsys, monkeypatch, "eval", run_dir, "--limit", 3, "--out", tmp_path / "file" / "x")
    assert status == 2 and "--out" in err and snapshot(run_dir) == before


def test_a_limited_eval_does_not_replace_a_fuller_result_in_the_run(run, tmp_path, capsys, monkeypatch):
    """`eval RUN --limit N` without --out writes into the run: refused, before decoding, where the run
    holds a result of more rows; a check of as many rows (or one with --out) goes ahead."""
    import shutil

    from test_bad_inputs import quadlab, snapshot

    name, run_dir = run
    recorded = json.loads((run_dir / "metrics.json").read_text())
    rows = recorded["total"] if name == "squad" else recorded["test"]["rows" if name == "quadratic" else "n"]
    assert rows > 2, recorded  # the fixture's run was tested on more rows than the check below
    before = snapshot(run_dir)
    status, printed, err = quadlab(capsys, monkeypatch, "eval", run_dir, "--limit", 2)
    assert status == 2 and printed == "" and len(err.strip().splitlines()) == 1, err
    assert f"of {rows:,} rows" in err and "--limit 2 check of 2" in err and "--out DIR" in err
    assert snapshot(run_dir) == before
    copy = shutil.copytree(run_dir, tmp_path / "copy", ignore=shutil.ignore_patterns("checkpoint*", "step-*"))
    status, printed, err = quadlab(capsys, monkeypatch, "eval", copy, "--limit", rows)
    assert status == 0 and printed, err


# quadratic's is tests/test_heads.py's end-to-end `cli.py heads` (the same checks, and its figures'
# three attention kinds take half a minute more each time)
@pytest.mark.parametrize("run", [name for name in tasks.TASKS if name != "quadratic"], indirect=True)
def test_heads_on_every_task(run, tmp_path):
    name, run_dir = run
    task = tasks.module(name).Analysis
    result = analyze_heads(run_dir, tmp_path / "figs", limit=6, eval_limit=4, batch_size=4, progress=False)
    assert set(result["kinds"]) == set(task.kinds)
    assert len(result["importance"]) == sum(l * h for l, h in result["layout"].values())
    assert set(result["baseline_metrics"]) == set(task.metrics) and all(0 <= v <= 1 for v in result["baseline_metrics"].values())
    blocking = result["symbol_blocking"]
    assert any(k.startswith("control: as many") for k in blocking) and sum(k.startswith("symbols blocked") for k in blocking) >= 1
    for key, metrics in blocking.items():
        if key not in ("baseline", "layers"):
            assert set(metrics) == set(task.metrics) and all(0 <= v <= 1 for v in metrics.values())
    assert [(p["model"], p["label"]) for p in result["context_points"]] == [("step-4", "step-4"), ("step-8", "step-8")]
    for kind in task.kinds:
        assert np.all(np.isfinite(result["kinds"][kind]["context_variance"]["head"]))
    assert (tmp_path / "figs" / "heads" / "context-variance-accuracy.png").exists() and (tmp_path / "figs" / "index.html").exists()


def test_context_variance_of_two_tasks_side_by_side(trained, tmp_path):
    """Issue 13, item 4: the checkpoint series of a SQuAD and a classification run in one figure."""
    folders = []
    for name in ("squad", "classify"):
        analyze_heads(trained(name), tmp_path / name, limit=4, eval_limit=4, batch_size=4, skip_importance=True, progress=False)
        folders.append(tmp_path / name)
    result = context_figure(folders, tmp_path / "together")
    panels = json.loads((tmp_path / "together" / "context-variance-tasks.json").read_text())
    assert [p["task"] for p in panels] == ["squad", "classify"] and [p["metric"] for p in panels] == ["f1", "accuracy"]
    assert all(p["models"] == 2 and p["correlation"]["n"] == 2 for p in panels)
    assert (tmp_path / "together" / "context-variance-tasks.png").stat().st_size > 0 and result["figures"]
    with pytest.raises(QuadlabError, match="no context-variance points"):
        context_figure([tmp_path], tmp_path / "nothing")
    found = json.loads((tmp_path / "squad" / "heads" / "heads.json").read_text())  # a run that kept no checkpoints
    (tmp_path / "none" / "heads").mkdir(parents=True)
    (tmp_path / "none" / "heads" / "heads.json").write_text(json.dumps({**found, "context_points": []}))
    with pytest.raises(QuadlabError, match="no context-variance points"):
        context_figure([tmp_path / "squad", tmp_path / "none"], tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
