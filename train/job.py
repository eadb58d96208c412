"""The whole reference experiment of a recipe, on a machine that gives commands 10 minutes at a
time (`cli.py gpu-job`): each call does the stages still to do, and calling it again continues.

A recipe (`train/recipes/NAME.yaml`) holds the options of `cli.py gen` under `gen:` and the
training keys (`cli.py train --config` reads the same file and ignores `gen:`). The job's work
directory:
    job.json   the recipe's text, the --set keys and each stage's state; checked on every call
    data/      the dataset (cli.py gen)
    run/       the run (cli.py train), its best model evaluated on the whole test split
    figures/   cli.py maps, then cli.py heads
Training stops at the call's time budget with a checkpoint and the next call resumes it; a call
that finishes training with less than --test-seconds left leaves the test to the next; maps
and heads cannot be resumed, so they start only with half the budget left. After every stage the
results are packed into OUT/NAME.tar.gz, at most 16 MiB: what a stage cut off by the time limit
leaves undone, the archive of the stages before it still holds. The trained model's weights go
beside it as OUT/NAME.model.safetensors (in bfloat16 if float32 is over 16 MiB), so that they come
back whole however large the figures are: put the file in the unpacked run/ as model.safetensors.
Before the test, that file is the best model so far (run/best/), so a call cut off later loses no
training.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import zlib
from pathlib import Path
from typing import Callable

from gen import QuadlabError

STAGES = ("gen", "train", "maps", "heads")
RECIPES = Path(__file__).resolve().parent / "recipes"
ARCHIVE_LIMIT = 16 * 2**20  # what one file from the GPU machine's $OUT may weigh
HEADROOM = 2**19  # the archive is sized from each file compressed alone, plus a tar header each


def read_recipe(recipe: str) -> tuple[Path, str, dict]:
    """(path, text, gen options) of a recipe: a file, or a name in train/recipes/."""
    import yaml

    path = Path(recipe)
    if not path.is_file() and (RECIPES / f"{recipe}.yaml").is_file():
        path = RECIPES / f"{recipe}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
        raise QuadlabError(f"no recipe {recipe!r}: give a YAML file or one of {names}")
    try:
        text = path.read_bytes().decode("utf-8")
        values = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise QuadlabError(f"recipe {path} cannot be read as YAML ({type(err).__name__}); write KEY: VALUE lines and a gen: section") from None
    if not isinstance(values, dict) or not isinstance(values.get("gen"), dict):
        raise QuadlabError(f"recipe {path} has no gen: section; give the options of `cli.py gen` there, e.g. gen: {{format: long}}")
    fixed = sorted({"data", "run_dir"} & set(values))
    if fixed:
        raise QuadlabError(f"recipe {path} sets {', '.join(fixed)}; the job keeps its data and run in its work directory (--work): drop them")
    return path, text, values["gen"]


def run_job(recipe: Path, text: str, make_data: Callable[[], None], overrides: dict, work: Path, out: Path,
            deadline: float, budget: float, test_seconds: float = 0) -> dict:
    """The stages still to do, as far as the budget goes (`deadline`: time.monotonic()); the state.
    A call that trains tests the model only with `test_seconds` of the budget left; else the next
    call does, without training or compiling."""
    from train import engine
    from train.config import resolve
    from train.engine import Interrupted

    if {"data", "run_dir"} & set(overrides):
        raise QuadlabError("--set data and run_dir are not for the job: it keeps them in its work directory (--work)")
    run_dir, state_path = work / "run", work / "job.json"
    try:
        config = resolve(yaml_path=str(recipe), overrides={**overrides, "data": str(work / "data"), "run_dir": str(run_dir)})
    except QuadlabError as err:
        raise QuadlabError(f"recipe {recipe}: {err}") from None
    job = {"recipe": recipe.stem, "recipe_text": text, "set": overrides}
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
            same = {k: state[k] for k in job} == job
        except (ValueError, KeyError, TypeError):
            raise QuadlabError(f"{state_path} is damaged; delete {work} to start the job again") from None
        if not same:
            raise QuadlabError(f"{work} holds the job of another recipe or other --set keys ({state['recipe']}); "
                               f"give another --work, or delete {work} to start again")
    else:
        state = {**job, "stages": {}, "calls": 0, "done": False}
    if config.init_from and not state["stages"].get("train", {}).get("done"):
        from train.quadratic import check_init_from

        check_init_from(config.init_from)  # before minutes of data
    work.mkdir(parents=True, exist_ok=True)
    state["calls"] += 1
    engine.write_json(state_path, state)
    packed = []

    def finish(stage: str, **facts) -> None:
        state["stages"][stage] = facts
        state["done"] = all(state["stages"].get(s, {}).get("done") for s in STAGES)
        engine.write_json(state_path, state)
        packed.append(pack(work, out, state))

    for stage in STAGES:
        if state["stages"].get(stage, {}).get("done"):
            continue
        if stage in ("maps", "heads") and deadline - time.monotonic() < budget / 2:
            print(f"gpu-job: {stage} cannot be resumed and less than half the budget is left; call again", flush=True)
            break
        print(f"gpu-job: {stage}", flush=True)
        start = time.monotonic()
        if stage == "gen":
            make_data()
        elif stage == "train":
            from train.quadratic import train_run
            from train.runs import read_config

            resume = (run_dir / engine.CHECKPOINT / engine.STATE).exists()  # none yet: a call cut off early, start again
            if resume:  # as `train --resume`: the run's saved configuration (init_from's architecture, the steps that fit)
                config = read_config(run_dir)
            try:
                result = train_run(config, resume=resume, overwrite=not resume, deadline=deadline, evaluate_by=deadline - test_seconds)
            except Interrupted as stop:
                config = read_config(run_dir)  # the steps that fit train_seconds, recorded there (with init_from, not in ours)
                finish(stage, done=False, step=stop.step, max_steps=config.max_steps)
                if stop.finished:
                    print(f"gpu-job: training done at step {stop.step}, with less than --test-seconds={test_seconds:g} left for "
                          f"the test; call again to test it", flush=True)
                elif stop.step:
                    print(f"gpu-job: training stopped at step {stop.step} of {config.max_steps} with a checkpoint; call again to go on", flush=True)
                else:  # the next call starts the training again
                    print("gpu-job: training stopped before its first checkpoint; call again to start it again", flush=True)
                break
            metrics_path = run_dir / "metrics.json"  # the result names its recipe
            engine.write_json(metrics_path, {"recipe": {**job, "file": str(recipe)}, **json.loads(metrics_path.read_text())})
            greedy = result["test"]["greedy"]
            print(f"gpu-job: test ({result['test']['rows']} rows): full-solution accuracy {greedy['full_solution_accuracy']:.4f}, "
                  f"roots accuracy {greedy['roots_accuracy']:.4f}", flush=True)
        elif stage == "maps":
            from analyze.maps import render_maps

            render_maps(run_dir, work / "figures")
        else:
            from analyze.heads import analyze_heads

            analyze_heads(run_dir, work / "figures")
        finish(stage, done=True, seconds=round(time.monotonic() - start, 1))
    if not packed:  # a finished job, or one that waits for a fuller budget: the archive again
        pack(work, out, state)
    return state


def pack(work: Path, out: Path, state: dict) -> dict:
    """OUT/NAME.tar.gz: the job's results, in order of worth (metrics, configs, logs, tables and
    small figures; predictions; figures; SVG copies; arrays), each file while the archive stays
    under ARCHIVE_LIMIT; and OUT/NAME.model.safetensors, the model, in bfloat16 if float32 is over
    ARCHIVE_LIMIT. The archive's job.json is the state with the files packed and those left out."""
    def worth(rel: str) -> int:
        if rel.startswith("figures/") and not rel.endswith((".csv", "/index.json", "/heads.json")):
            return {".svg": 4, ".npz": 5}.get(Path(rel).suffix, 2)
        return 1 if rel == "run/predictions.jsonl" else 0

    model = work / "run" / "model.safetensors"
    if not model.is_file():  # training stopped or done, not yet tested: the best model so far comes back
        model = work / "run" / "best" / "model.safetensors"
    weights = write_weights(model, out / f"{state['recipe']}.model.safetensors")
    files = {"recipe.yaml": state["recipe_text"].encode()}
    for folder, pattern in (("run", "*"), ("data", "*.json"), ("data", "*.md"), ("figures", "**/*")):
        for path in sorted((work / folder).glob(pattern)):
            if path.is_file() and ".tmp" not in path.name and path.name != "model.safetensors":
                files[path.relative_to(work).as_posix()] = path.read_bytes()
    packed, left_out, room = {}, [], ARCHIVE_LIMIT - HEADROOM
    for rel in sorted(files, key=lambda r: (worth(r), r)):
        data = files[rel]
        size = len(zlib.compress(data, 6)) + 1024
        if size <= room:
            packed[rel], room = data, room - size
        else:
            left_out.append(rel)
    manifest = {**state, "archive": {"files": sorted(packed), "left_out": left_out, "weights": weights}}
    packed["job.json"] = (json.dumps(manifest, indent=2) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    archive = out / f"{state['recipe']}.tar.gz"
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        for rel, data in packed.items():
            info = tarfile.TarInfo(f"{state['recipe']}/{rel}")
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
    if tmp.stat().st_size > ARCHIVE_LIMIT:  # the estimate above leaves half a MiB spare: not expected
        tmp.unlink()
        raise QuadlabError(f"the archive of {work} came out over {ARCHIVE_LIMIT // 2**20} MiB; report this as a bug")
    os.replace(tmp, archive)
    print(f"gpu-job: packed {archive} ({archive.stat().st_size / 2**20:.1f} MiB, {len(packed)} files, "
          f"{len(left_out)} left out; weights {weights.split(' (')[0]})", flush=True)
    return manifest


def write_weights(model: Path, target: Path) -> str:
    """The model's safetensors at `target`, rounded to bfloat16 if float32 is over ARCHIVE_LIMIT;
    says what it wrote."""
    if not model.is_file():
        return "none"
    data, weights = model.read_bytes(), "float32"
    if len(data) > ARCHIVE_LIMIT:
        import torch
        from safetensors.torch import load, save

        data = save({k: v.to(torch.bfloat16) for k, v in load(data).items()}, metadata={"format": "pt"})
        weights = "bfloat16 (rounded from float32; from_pretrained loads them into float32)"
    if len(data) > ARCHIVE_LIMIT:
        return "left out: over 16 MiB even in bfloat16"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return f"{weights}, in {target.name}"
