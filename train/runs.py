"""Opening a run directory, for every command that reads one (eval, maps, explain, heads, ask,
train --resume): the one place that checks it and turns every way it can be wrong (not a run,
another task's run, unfinished, damaged) into a one-line QuadlabError that says how to fix it.

The task of a run is the `task` key of its config.yaml.
"""

from __future__ import annotations

from pathlib import Path

from gen import QuadlabError
from train import tasks
from train.config import TrainConfig, load_yaml, run_name

def first_line(err: Exception) -> str:
    """An exception from a library as one short line, for a QuadlabError."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}".rstrip(": ")


def _damaged(run_dir: Path, config_readable: bool = True) -> str:
    again = (f"`python cli.py train --config {run_dir}/config.yaml --run-dir {run_dir} --overwrite`" if config_readable
             else f"`python cli.py train` with its options and `--run-dir {run_dir} --overwrite`")
    return f"restore {run_dir} from a copy, or train it again ({again})"


def read_config(run_dir: Path) -> TrainConfig:
    """The configuration of a run directory (finished or not)."""
    import yaml

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        why = "it is a file" if run_dir.exists() else "it does not exist"
        raise QuadlabError(f"{run_dir} is not a directory ({why}), so not a run directory made by `cli.py train`; "
                           f"give one, e.g. runs/quadratic-tiny-seed0")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise QuadlabError(f"{run_dir} is not a run directory made by `cli.py train` (missing config.yaml); "
                           f"give a run directory, e.g. runs/quadratic-tiny-seed0")
    try:
        values = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise QuadlabError(f"{path} cannot be read ({first_line(err)}); {_damaged(run_dir, False)}") from None
    if not isinstance(values, dict) or values.get("task") not in tasks.TASKS:
        what = "is empty" if values is None else f"names no task ({' or '.join(tasks.TASKS)})"
        raise QuadlabError(f"{path} {what}, so it is not the configuration `cli.py train` writes; {_damaged(run_dir, False)}")
    try:
        return load_yaml(path)
    except QuadlabError as err:
        raise QuadlabError(f"{path} is not a usable configuration ({err}); {_damaged(run_dir, False)}") from None


def open_run(run_dir: Path, command: str, task: str | None = None, data: str | Path | None = None) -> TrainConfig:
    """The configuration of a finished run, checked to be of `task` (any task when None) and to
    hold its model and tokenizer files; with `data` (--data), a dataset directory that replaces its
    `data:` for this command (a run trained elsewhere, on a dataset made here), config.yaml untouched."""
    import dataclasses

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if data is not None:
        if not tasks.module(config.task).reads_data(config):
            reads = f"--train-file {config.train_file}" if config.train_file else f"hub_dataset {config.hub_dataset}"
            raise QuadlabError(f"--data is for runs that read a dataset of `cli.py gen`; {run_dir} is a {tasks.TASKS[config.task].title} "
                               f"run that reads {reads} (its config.yaml): drop --data")
        config = dataclasses.replace(config, data=str(data))
    if task and config.task != task:
        raise QuadlabError(f"{run_dir} is a {tasks.TASKS[config.task].title} run; `{command}` needs a {tasks.TASKS[task].title} run "
                           f"(train one with `{tasks.TASKS[task].train_command}`)")
    missing = [name for name in tasks.TASKS[config.task].run_files if not (run_dir / name).is_file()]
    if missing:
        fix = (f"finish it with `python cli.py train --resume --run-dir {run_dir}`" if (run_dir / "checkpoint").is_dir()
               else _damaged(run_dir))
        raise QuadlabError(f"{run_dir} is not a finished run directory (missing {', '.join(missing)}); {fix}")
    for name in tasks.TASKS[config.task].run_files:
        check_whole(run_dir / name, _damaged(run_dir))
    try:  # the model's type, before any work: `heads --compare` loads its models only at the end
        from transformers import AutoConfig

        AutoConfig.from_pretrained(str(run_dir))
    except Exception as err:
        raise QuadlabError(f"{run_dir} is damaged: its config.json is not a model's ({first_line(err)}); {_damaged(run_dir)}") from None
    return config


def check_whole(path: Path, fix: str) -> None:
    """A saved file that is cut short or empty, found before a library fails on it deep inside:
    safetensors and JSON are parsed (a safetensors header names the size of the data), and what
    torch.save wrote is a zip, whose directory sits at its end."""
    import json
    import zipfile

    from safetensors import safe_open

    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), "pt"):
                pass
        elif path.suffix == ".json":
            json.loads(path.read_bytes())
        elif path.suffix in (".bin", ".pkl", ".pt"):
            zipfile.ZipFile(path).close()
    except Exception as err:
        raise QuadlabError(f"{path.parent} is damaged: {path.name} cannot be read ({first_line(err)}); {fix}") from None


def check_checkpoint(run_dir: Path) -> None:
    """For --resume: the checkpoint is there and every file of it whole."""
    checkpoint = Path(run_dir) / "checkpoint"
    if not checkpoint.is_dir():
        raise QuadlabError(f"{run_dir} has no checkpoint to resume from; start it again without --resume (with --overwrite)")
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file():
            check_whole(path, f"start {run_dir} again without --resume (with --overwrite)")


def load_run(run_dir: Path, command: str, task: str | None = None, data: str | Path | None = None):
    """(model, tokenizer, config) of a finished run, with eager attention (it returns the maps);
    `data` as in open_run."""
    from train.engine import quiet_libraries

    run_dir = Path(run_dir)
    config = open_run(run_dir, command, task, data)
    quiet_libraries()
    tokenizer = load_tokenizer(run_dir)
    try:
        model = tasks.model_class(config.task).from_pretrained(str(run_dir), attn_implementation="eager")
    except Exception as err:
        raise QuadlabError(f"{run_dir} is damaged: its model cannot be loaded ({first_line(err)}); {_damaged(run_dir)}") from None
    return model, tokenizer, config


def guard_fuller_result(run_dir: Path, out_dir: Path | None, limit: int, recorded_rows: int | None, rows: int, result: str) -> None:
    """`eval --limit` writes into the run itself unless given --out: refused, before any decoding,
    where that would replace a result of more rows (the best model's 20,000 test rows took hours
    of CPU; `explain` and `serve` compare with the run's test predictions)."""
    if out_dir is None and limit and recorded_rows and recorded_rows > rows:
        raise QuadlabError(f"{run_dir} holds its {result} of {recorded_rows:,} rows; a --limit {limit} check of {rows:,} would replace it: "
                           f"give --out DIR to write the check elsewhere (or --limit 0 to evaluate every row again)")


def analysis(run_dir: Path, command: str, split: str | None = "test", limit: int = 0, eval_limit: int = 0,
             data: str | Path | None = None):
    """The `Analysis` (train/tasks.py) of a finished run's task, on its rows of `split` (None: no
    rows, for commands that read only given inputs), from `data` when given (open_run)."""
    config = open_run(run_dir, command, data=data)
    return tasks.module(config.task).Analysis(Path(run_dir), command, split=split, limit=limit, eval_limit=eval_limit, data=data)


def load_tokenizer(run_dir: Path):
    """The tokenizer saved in a run directory (also for --resume, before the run is finished)."""
    from transformers import AutoTokenizer

    if not (Path(run_dir) / "tokenizer.json").is_file():
        raise QuadlabError(f"{run_dir} is damaged: it has no tokenizer.json; {_damaged(run_dir)}")
    try:
        return AutoTokenizer.from_pretrained(str(run_dir))
    except Exception as err:  # whatever a damaged file raises inside the library
        raise QuadlabError(f"{run_dir} is damaged: its tokenizer cannot be loaded ({first_line(err)}); {_damaged(run_dir)}") from None


def figures_dir(run_dir: Path) -> Path:
    """Where the analyses write by default: figures/<the run's name>."""
    return Path("figures") / run_name(run_dir)


def _task_of(run_dir: Path) -> str | None:
    try:
        return read_config(run_dir).task
    except QuadlabError:
        return None


def newest_run(command: str, task: str | None = None, root: Path = Path("runs")) -> Path:
    """The most recently finished run under `root` (of `task`, when given)."""
    runs = [p.parent for p in Path(root).glob("*/config.yaml") if (p.parent / "model.safetensors").is_file()]
    if task:
        runs = [run for run in runs if _task_of(run) == task]
    if not runs:
        kind = f"{tasks.TASKS[task].title} " if task else ""
        raise QuadlabError(f"no finished {kind}run under {root}/ for `{command}`; train one with "
                           f"`{tasks.TASKS[task or 'quadratic'].train_command}` or pass --run DIR")
    return max(runs, key=lambda p: (p / "model.safetensors").stat().st_mtime)
