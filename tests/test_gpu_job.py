"""`cli.py gpu-job` at miniature size on the CPU, and the engine's GPU speed options where a CPU
can run them (torch.compile, through dynamo's eager backend: the same graph capture without
compiling kernels, which takes minutes on a CPU)."""

import collections
import functools
import json
import tarfile

import pytest
import torch

from transformers import T5ForConditionalGeneration

import cli
from gen.dataset import GenOptions, generate
from gen.equations import Ranges
from gen import QuadlabError
from train.config import pad_width_rungs, resolve
from train import engine
from train.engine import bucket_width, pad_to_buckets, read_log
from train import job
from train.job import ARCHIVE_LIMIT, STAGES
from train.quadratic import train_run

RECIPE = """\
gen:
  rows: 120
  seed: 3
  a_range: "-2:2"
  root_range: "-5:5"
  extra_train_rows: 40
  extra_mix: "1,0,0"
preset: tiny
d_model: 32
d_ff: 64
d_kv: 8
num_layers: 1
num_decoder_layers: 1
num_heads: 2
batch_size: 16
max_steps: 8
warmup_steps: 2
train_seconds: 100000  # counted at step 2, on the second call: the ceiling, 8 steps, fits
eval_every: 4
val_size: 8
eval_batch_size: 64
"""


@pytest.fixture
def one_thread():
    """A model this small runs fastest on one thread (and the test does not fight other work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gpu_job(recipe, work, out, *options):
    cli.main(["gpu-job", str(recipe), "--work", str(work), "--out", str(out), *map(str, options)])


def skip_figures(monkeypatch) -> list:
    """Stand-ins for the maps and heads stages (half a minute of figures each time; the first test
    below runs them for real): the runs they were given, in order."""
    given = []
    monkeypatch.setattr("analyze.maps.render_maps", lambda run_dir, out, **_: given.append(("maps", run_dir)))
    monkeypatch.setattr("analyze.heads.analyze_heads", lambda run_dir, out, **_: given.append(("heads", run_dir)))
    return given


def test_gpu_job_trains_across_calls_and_packs_the_results(tmp_path, one_thread, capsys, monkeypatch):
    recipe, work, out = tmp_path / "mini.yaml", tmp_path / "work", tmp_path / "out"
    recipe.write_text(RECIPE)
    archive = out / "mini.tar.gz"

    gpu_job(recipe, work, out, "--budget-seconds", 0)  # the budget is spent at once: one training step
    state = json.loads((work / "job.json").read_text())
    assert state["stages"]["gen"]["done"] and state["stages"]["train"] == {"done": False, "step": 1, "max_steps": 8}
    assert not state["done"] and "maps" not in state["stages"]
    assert (work / "run" / "checkpoint" / "trainer_state.json").is_file() and archive.is_file()
    assert "not done (train next); run the same command again" in capsys.readouterr().out
    (work / "run" / "left-by-call-1").touch()  # a fresh start would empty the run directory

    gpu_job(recipe, work, out, "--budget-seconds", 600)
    state = json.loads((work / "job.json").read_text())
    assert state["done"] and all(state["stages"][stage]["done"] for stage in STAGES) and state["calls"] == 2
    assert (work / "run" / "left-by-call-1").exists()  # resumed
    assert [r["step"] for r in read_log(work / "run")[0]] == list(range(1, 9))
    printed = capsys.readouterr().out
    assert "train: 8 steps fit train_seconds=100000" in printed and printed.rstrip().endswith("gpu-job: mini: done")
    saved = resolve(yaml_path=str(work / "run" / "config.yaml"))
    assert (saved.max_steps, saved.train_seconds) == (8, 0)

    assert archive.stat().st_size <= ARCHIVE_LIMIT
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("mini/job.json"))
        metrics = json.load(tar.extractfile("mini/run/metrics.json"))
    with tarfile.open(archive) as tar:
        card = json.load(tar.extractfile("mini/data/card.json"))
    assert card["counts"]["train"]["total"] == 96 + 40 and card["counts"]["test"]["total"] == 24
    for name in ("recipe.yaml", "data/card.json", "run/metrics.json", "run/predictions.jsonl", "run/config.yaml",
                 "run/environment.json", "run/log.jsonl", "run/training_curve.png", "run/diagnosis.png", "run/config.json",
                 "run/tokenizer.json", "figures/index.html", "figures/heads/heads.json", "figures/average/encoder-roles.png"):
        assert f"mini/{name}" in names, name
    assert not any("/checkpoint/" in name or "/best/" in name or name.endswith(".safetensors") for name in names)
    assert manifest["done"] and manifest["archive"]["left_out"] == []
    assert manifest["archive"]["weights"] == "float32, in mini.model.safetensors"
    # the weights beside the archive make the unpacked run a model that from_pretrained loads
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "back", filter="data")
    (tmp_path / "back" / "mini" / "run" / "model.safetensors").write_bytes((out / "mini.model.safetensors").read_bytes())
    back = T5ForConditionalGeneration.from_pretrained(tmp_path / "back" / "mini" / "run")
    trained = T5ForConditionalGeneration.from_pretrained(work / "run")
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), trained.state_dict().values()))
    assert metrics["recipe"]["recipe_text"] == RECIPE and metrics["test"]["rows"] == 24 and metrics["test"]["diagnosis"]["n"] == 24

    archive.unlink()
    gpu_job(recipe, work, out)  # a finished job packs again
    assert archive.is_file() and json.loads((work / "job.json").read_text())["calls"] == 3

    with pytest.raises(SystemExit) as stop:  # the work directory belongs to the job as it was started
        gpu_job(recipe, work, out, "--set", "max_steps=9")
    assert stop.value.code == 2
    assert "holds the job of another recipe or other --set keys" in capsys.readouterr().err

    # a later job trains on from the weights that came back; resumed, it keeps their architecture,
    # not the one its keys give (d_model=48 here)
    figures = skip_figures(monkeypatch)
    more, start = tmp_path / "more", tmp_path / "back" / "mini" / "run"
    with pytest.raises(SystemExit) as stop:  # a start that holds no model is refused before the data is made
        gpu_job(recipe, more, out, "--set", f"init_from={tmp_path / 'back' / 'mini'}")
    assert stop.value.code == 2 and "holds no trained model" in capsys.readouterr().err and not more.exists()
    gpu_job(recipe, more, out, "--budget-seconds", 0, "--set", f"init_from={start}", "--set", "d_model=48")
    assert resolve(yaml_path=str(more / "run" / "config.yaml")).d_model == 32
    gpu_job(recipe, more, out, "--budget-seconds", 600, "--set", f"init_from={start}", "--set", "d_model=48")
    assert json.loads((more / "job.json").read_text())["done"]  # resumed from its config.yaml: a d_model=48 model would not load
    assert figures == [("maps", more / "run"), ("heads", more / "run")]


def test_gpu_job_leaves_the_test_to_the_next_call_when_training_ends_late(tmp_path, one_thread, capsys, monkeypatch):
    """--test-seconds: a call that trains to the end with less than that left stops before the test,
    with the finished checkpoint; the next call tests without a training step (so nothing compiles)."""
    recipe, work, out = tmp_path / "mini.yaml", tmp_path / "work", tmp_path / "out"
    recipe.write_text(RECIPE)

    gpu_job(recipe, work, out, "--budget-seconds", 600, "--test-seconds", 601)  # never enough left
    state = json.loads((work / "job.json").read_text())
    assert state["stages"]["train"] == {"done": False, "step": 8, "max_steps": 8} and "maps" not in state["stages"]
    assert "training done at step 8, with less than --test-seconds=601 left for the test; call again to test it" in capsys.readouterr().out
    assert not (work / "run" / "metrics.json").exists() and not (work / "run" / "predictions.jsonl").exists()
    with tarfile.open(out / "mini.tar.gz") as tar:  # the best model comes back already
        assert json.load(tar.extractfile("mini/job.json"))["archive"]["weights"] == "float32, in mini.model.safetensors"
    assert (out / "mini.model.safetensors").read_bytes() == (work / "run" / "best" / "model.safetensors").read_bytes()
    logged = (work / "run" / "log.jsonl").read_text()

    figures = skip_figures(monkeypatch)
    gpu_job(recipe, work, out, "--budget-seconds", 600, "--test-seconds", 601)  # the next call tests, whatever is left
    state = json.loads((work / "job.json").read_text())
    assert state["done"] and state["stages"]["train"]["done"] and state["calls"] == 2
    assert (work / "run" / "log.jsonl").read_text() == logged  # no step trained, no evaluation again
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["test"]["rows"] == 24 and metrics["training"]["steps"] == 8 and metrics["recipe"]["recipe"] == "mini"
    assert "gpu-job: test (24 rows)" in capsys.readouterr().out and figures == [("maps", work / "run"), ("heads", work / "run")]


def test_gpu_job_stopped_in_training_by_sigterm_packs_and_goes_on_next_call(tmp_path, one_thread, capsys, monkeypatch):
    """The device's time limit ends a call with SIGTERM (cli.main raises it as cli.Terminated where it
    lands): the call packs what it has, as one that ran out of budget, for the next to resume."""
    recipe, work, out = tmp_path / "mini.yaml", tmp_path / "work", tmp_path / "out"
    recipe.write_text(RECIPE)
    log = engine._log

    def terminated_at_step_6(path, record):
        log(path, record)
        if record.get("step") == 6 and "loss" in record:
            raise cli.Terminated

    monkeypatch.setattr(engine, "_log", terminated_at_step_6)
    gpu_job(recipe, work, out, "--budget-seconds", 600)
    state = json.loads((work / "job.json").read_text())
    assert state["stages"]["train"] == {"done": False, "step": 4, "max_steps": 8}  # the checkpoint of the evaluation at step 4
    assert "training stopped at step 4 of 8 with a checkpoint; call again to go on" in capsys.readouterr().out
    with tarfile.open(out / "mini.tar.gz") as tar:
        assert json.load(tar.extractfile("mini/job.json"))["stages"]["train"]["step"] == 4
    assert (work / "run" / "checkpoint" / "trainer_state.json").is_file()  # what the next call resumes from (as the test above)


def test_gpu_job_stopped_before_the_first_checkpoint_trains_again_on_the_next_call(tmp_path, one_thread, capsys, monkeypatch):
    recipe, work, out = tmp_path / "mini.yaml", tmp_path / "work", tmp_path / "out"
    recipe.write_text(RECIPE)
    log = engine._log

    def terminated_at_step_2(path, record):  # the first checkpoint is the evaluation's at step 4
        log(path, record)
        if record.get("step") == 2 and "loss" in record:
            raise cli.Terminated

    monkeypatch.setattr(engine, "_log", terminated_at_step_2)
    gpu_job(recipe, work, out, "--budget-seconds", 600)
    assert json.loads((work / "job.json").read_text())["stages"]["train"] == {"done": False, "step": 0, "max_steps": 8}
    assert "training stopped before its first checkpoint; call again to start it again" in capsys.readouterr().out
    assert not (work / "run" / "checkpoint").exists()

    monkeypatch.setattr(engine, "_log", log)
    figures = skip_figures(monkeypatch)
    gpu_job(recipe, work, out, "--budget-seconds", 600)
    state = json.loads((work / "job.json").read_text())
    assert state["done"] and state["calls"] == 2 and [r["step"] for r in read_log(work / "run")[0]] == list(range(1, 9))
    assert figures == [("maps", work / "run"), ("heads", work / "run")]


@pytest.mark.parametrize("change, message", [
    (("gen:", "gen:\n  colour: blue"), "gen: has no option 'colour'"),
    (('a_range: "-2:2"', "a_range: -2:2"), 'a_range must be quoted, e.g. a_range: "-30:30"'),
    (("rows: 120", "rows: many"), "gen: Invalid value for '--rows': 'many' is not an integer"),
    (("max_steps: 8", "max_steps: many"), "bad.yaml: config key 'max_steps' takes a whole number"),
    (("preset: tiny", "preset: tiny\ndata: elsewhere"), "the job keeps its data and run in its work directory"),
    (("gen:\n  rows: 120", "generate:\n  rows: 120"), "has no gen: section"),
])
def test_gpu_job_refuses_a_bad_recipe_in_one_line_before_any_work(tmp_path, capsys, change, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(RECIPE.replace(*change))
    with pytest.raises(SystemExit) as stop:
        gpu_job(recipe, tmp_path / "work", tmp_path / "out")
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("quadlab: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_weights_over_the_limit_travel_in_bfloat16_or_not_at_all(tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    model, target = tmp_path / "model.safetensors", tmp_path / "out" / "r.model.safetensors"
    weight = torch.randn(1000)
    save_file({"w": weight}, model)  # 4,000 bytes of float32 and a small header
    monkeypatch.setattr(job, "ARCHIVE_LIMIT", 3000)
    assert job.write_weights(model, target).startswith("bfloat16 (rounded from float32")
    back = load_file(target)["w"]
    assert back.dtype == torch.bfloat16 and torch.allclose(back.float(), weight, rtol=1e-2, atol=1e-2)
    target.unlink()
    monkeypatch.setattr(job, "ARCHIVE_LIMIT", 1000)
    assert job.write_weights(model, target) == "left out: over 16 MiB even in bfloat16" and not target.exists()
    assert job.write_weights(tmp_path / "none.safetensors", target) == "none"


def test_recipes_in_the_repository_resolve():
    from train.job import RECIPES, read_recipe

    for path in sorted(RECIPES.glob("*.yaml")):
        _, _, gen_options = read_recipe(path.stem)
        config = resolve(yaml_path=str(path))
        assert config.preset == "small" and config.eval_limit == 0 and gen_options["rows"] == 100_000
        assert gen_options["format"] == path.stem.rsplit("-", 1)[0]


def test_compiled_training_matches_eager_training(tmp_path, one_thread, monkeypatch):
    """compile=true: the training forward goes through torch.compile, on batches padded to bucket
    widths and the epoch's short last batch to the batch size (the same losses as unpadded eager
    training), evaluation and the saved model do not."""
    from safetensors.torch import load_file

    data = tmp_path / "data"
    generate(GenOptions(rows=120, seed=3, ranges=Ranges(a_lo=-2, a_hi=2, root_lo=-5, root_hi=5)), data)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    widths = collections.defaultdict(set)  # the label widths each run's training forward saw
    padded = engine.pad_to_buckets

    def spy(batch, *args):
        out = padded(batch, *args)
        widths[run].add(out["labels"].shape[1])
        return out

    monkeypatch.setattr(engine, "pad_to_buckets", spy)
    losses = {}
    for run, compiled, pad_widths in (("eager", "false", ""), ("compiled", "true", ""), ("coarse", "true", "37,1000")):
        run_dir = tmp_path / run
        config = resolve("tiny", None, {"data": str(data), "run_dir": str(run_dir), "compile": compiled, "d_model": 32, "d_ff": 64,
                                        "d_kv": 8, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2, "batch_size": 16,
                                        "max_steps": 7, "eval_every": 3, "val_size": 8, "eval_limit": 8, "pad_widths": pad_widths})
        metrics = train_run(config, progress=False)
        assert metrics["training"]["compiled"] is (compiled == "true")
        assert not any(key.startswith("_orig_mod") for key in load_file(run_dir / "model.safetensors"))
        losses[run] = [r["loss"] for r in read_log(run_dir)[0]]
    # 88 training rows: an epoch is five batches of 16 and one of 8, which the compiled run fills up
    assert len(losses["compiled"]) == 7 and losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    # pad_widths: every batch over 32 wide padded to 37 or 1000, as the ladder never would; the same losses
    assert not widths["eager"] and widths["compiled"] <= {32, 48, 64, 96, 128} and widths["coarse"] <= {32, 37, 1000}
    assert 1000 in widths["coarse"] and losses["coarse"] == pytest.approx(losses["eager"], rel=1e-4)


def test_bucket_widths_are_few_and_hold_every_width():
    widths = {bucket_width(n) for n in range(1, 1025)}
    assert sorted(widths) == [32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
    for n in range(1, 1025):
        assert n <= bucket_width(n) and (n <= 32 or (bucket_width(n) - n) / bucket_width(n) < 1 / 3)


def test_pad_widths_replace_the_ladder_above_32():
    """pad_widths: fewer, coarser widths to compile; 32 and under and past the last rung, the ladder."""
    rungs = pad_width_rungs(resolve("tiny", None, {"pad_widths": " 448, 640"}))
    assert rungs == (448, 640)
    assert [bucket_width(n, rungs) for n in (1, 32, 33, 448, 449, 640, 641)] == [32, 32, 448, 448, 640, 640, 768]
    assert {bucket_width(n, rungs) for n in range(1, 641)} == {32, 448, 640}
    batch = {"input_ids": torch.ones(2, 21, dtype=torch.long), "labels": torch.ones(2, 300, dtype=torch.long)}
    padded = pad_to_buckets(batch, pad_token_id=0, rows=4, rungs=rungs)
    assert padded["input_ids"].shape == (4, 32) and padded["labels"].shape == (4, 448)
    assert (padded["labels"][:2, 300:] == -100).all() and (padded["labels"][2:] == -100).all()
    for value in ("448,448", "640,448", "32,640", "448;640", "448,", "448,100000", "４４８", "1," * 150):
        with pytest.raises(QuadlabError, match="pad_widths"):
            resolve("tiny", None, {"pad_widths": value})


def test_padding_to_buckets_leaves_the_loss_unchanged(one_thread):
    """What compiled training sees: the batch widened with -100 labels and masked pad tokens."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=20, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=2,
                                                dropout_rate=0.0, pad_token_id=0, decoder_start_token_id=0)).eval()
    input_ids = torch.randint(3, 20, (4, 21))
    input_ids[0, 15:] = 0  # a shorter row, padded as the collator pads it
    labels = torch.randint(3, 20, (4, 37))
    labels[1, 30:] = -100
    batch = {"input_ids": input_ids, "attention_mask": (input_ids != 0).long(), "labels": labels}
    padded = pad_to_buckets(batch, pad_token_id=0)
    assert padded["input_ids"].shape == (4, 32) and padded["labels"].shape == (4, 48)
    assert (padded["input_ids"][:, 21:] == 0).all() and (padded["attention_mask"][:, 21:] == 0).all()
    assert (padded["labels"][:, 37:] == -100).all() and torch.equal(padded["labels"][:, :37], labels)
    with torch.no_grad():
        loss, loss_padded = model(**batch).loss, model(**padded).loss
        # what padding would change if it were not masked: the pad label counted, or the pad keys seen
        unmasked = model(**{**padded, "attention_mask": torch.ones_like(padded["attention_mask"])}).loss
    assert loss_padded.item() == pytest.approx(loss.item(), rel=1e-5)
    assert abs(unmasked.item() - loss.item()) > 1e-3


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_rows_added_to_a_short_batch_change_neither_loss_nor_gradient(one_thread, attention):
    """An epoch's last batch, lengthened to the batch size with rows that are all padding: the
    gradient is the short batch's (no NaN from rows whose every key is masked)."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=20, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=2,
                                                dropout_rate=0.0, pad_token_id=0, decoder_start_token_id=0,
                                                attn_implementation=attention))
    input_ids = torch.randint(3, 20, (3, 21))
    labels = torch.randint(3, 20, (3, 37))
    labels[2, 25:] = -100
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    padded = pad_to_buckets(batch, pad_token_id=0, rows=8)
    assert padded["input_ids"].shape == (8, 32) and padded["labels"].shape == (8, 48)
    assert (padded["attention_mask"][3:] == 0).all() and (padded["labels"][3:] == -100).all()
    assert torch.equal(padded["input_ids"][:3, :21], input_ids)

    def loss_and_gradient(b):
        model.zero_grad()
        loss = model(**b).loss
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    (loss, grad), (loss_padded, grad_padded) = loss_and_gradient(batch), loss_and_gradient(padded)
    assert torch.isfinite(grad_padded).all()
    assert loss_padded == pytest.approx(loss, rel=1e-5)
    assert torch.allclose(grad_padded, grad, rtol=1e-4, atol=1e-6)
    # a batch with a 1-D tensor (a class label a row) keeps its rows: a padded row would be counted
    one_label = pad_to_buckets({"input_ids": input_ids, "labels": torch.tensor([1, 0, 1])}, pad_token_id=0, rows=8)
    assert one_label["input_ids"].shape == (3, 32) and one_label["labels"].shape == (3,)
