"""quadlab command line: `python cli.py COMMAND --help` explains each command.

Every command reports bad input as one line on stderr and exits 2; `verify` also exits 1 when a
solution is wrong.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

import click

from gen import QuadlabError, ascii_float, ascii_int
from gen.equations import FORMATS
from train import tasks


class AsciiNumber:
    """Mixed into click's number types: typed text must be a number in the digits 0-9 (click's own
    types call int() and float(), which also read `١`, `１`, ` 1 `, `1_000`, `nan` and `inf`)."""

    parse = staticmethod(ascii_int)

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            try:
                value = self.parse(value)
            except ValueError as err:
                self.fail(str(err), param, ctx)
        return super().convert(value, param, ctx)


class Int(AsciiNumber, click.types.IntParamType):
    pass


class IntRange(AsciiNumber, click.IntRange):
    pass


class Float(AsciiNumber, click.types.FloatParamType):
    parse = staticmethod(ascii_float)


class FloatRange(AsciiNumber, click.FloatRange):
    parse = staticmethod(ascii_float)


INT, FLOAT = Int(), Float()
SEED = IntRange(min=0, max=2**32 - 1)  # numpy's seeds (train/config.py checks --set seed too)


class IntPair(click.ParamType):
    """Two integers written `A:B`: a range `LO:HI` with both ends included (`ordered`, e.g. `-30:30`),
    or a layer and a head `LAYER:HEAD` (e.g. `1:3`)."""

    def __init__(self, name: str, malformed: str, ordered: bool = False):
        self.name, self.malformed, self.ordered = name, malformed, ordered

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            first, second = (ascii_int(part) for part in str(value).split(":"))
        except ValueError:
            self.fail(self.malformed.format(value=value), param, ctx)
        if self.ordered and first > second:
            self.fail(f"{value!r} is empty; write {self.name} with LO <= HI", param, ctx)
        return first, second


class NeuronSpec(click.ParamType):
    """A query token of one head, `[KIND:]LAYER:HEAD:QUERY` (KIND encoder, decoder or cross; encoder
    when left out), as (kind, layer, head, query)."""

    name = "[KIND:]LAYER:HEAD:QUERY"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = str(value).split(":")
        kind = parts.pop(0) if len(parts) == 4 else "encoder"
        try:
            if kind not in ("encoder", "decoder", "cross") or len(parts) != 3:
                raise ValueError
            layer, head, query = (ascii_int(part) for part in parts)
        except ValueError:
            self.fail(f"{value!r} is not [KIND:]LAYER:HEAD:QUERY; write e.g. 1:3:5 or cross:1:3:5 (KIND encoder, decoder or cross)",
                      param, ctx)
        return kind, layer, head, query


INT_RANGE = IntPair("LO:HI", "{value!r} is not a range; write LO:HI with the digits 0-9, e.g. -30:30", ordered=True)
LAYER_HEAD = IntPair("LAYER:HEAD", "{value!r} is not LAYER:HEAD; write it with the digits 0-9, e.g. 1:3")


class Shares(click.ParamType):
    """Comma-separated shares, e.g. `0.5,0.3,0.2`."""

    name = "TWO,ONE,NONE"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(ascii_float(part) for part in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a list of finite numbers; write them with the digits 0-9, e.g. 0.5,0.3,0.2", param, ctx)


# eval and the analyses that read a run's rows: its dataset from elsewhere, config.yaml untouched (train.runs.open_run)
DATA_OPTION = click.option(
    "--data", type=click.Path(file_okay=False), default=None,
    help="Quadratic runs (and classification runs on equations): a dataset directory of `cli.py gen` to read instead of "
         "the one named by `data:` in RUN_DIR's config.yaml, e.g. one made here for a run trained elsewhere; the same "
         "options give the same rows.  [default: the run's data:]")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli():
    """quadlab: generate quadratic equations with worked solutions, train transformers on them,
    and analyse their attention."""


@cli.command()
@click.option("--rows", default=100_000, show_default=True, type=INT, help="Number of equations in all (train + test).")
@click.option("--seed", default=0, show_default=True, type=INT, help="Random seed; the same seed and options give the same bytes.")
@click.option("--mix", default="0.5,0.3,0.2", show_default=True, type=Shares(),
              help="Shares of equations with two, one and no real roots; must sum to 1.")
@click.option("--test-fraction", default=0.2, show_default=True, type=FLOAT,
              help="Share of each class that goes to the test split (the rest is train).")
@click.option("--extra-train-rows", default=0, show_default=True, type=INT,
              help="More training equations on top of --rows, none equal to any of them: the test split stays the "
                   "one that --rows and --seed give, row for row, while the model sees more distinct equations.")
@click.option("--extra-mix", default=None, type=Shares(), show_default="--mix",
              help="Shares of two, one and no real roots among the extra training equations (the one-root class "
                   "is small: 60,060 equations in the default ranges).")
@click.option("--a-range", default="-30:30", show_default=True, type=INT_RANGE,
              help="Leading coefficient a, LO:HI inclusive (0 is skipped).")
@click.option("--root-range", default="-500:500", show_default=True, type=INT_RANGE,
              help="Integer roots r, LO:HI inclusive; b and c follow from a and the roots.")
@click.option("--format", "fmt", default="published", show_default=True, type=click.Choice(FORMATS),
              help="Solution format: 'published' (the study's), 'steps' (every intermediate product), 'long' "
                   "(schoolbook steps: long multiplication, digit-by-digit square root, long division), 'reversed' "
                   "(long, with every number written least significant digit first after a leading '~'), "
                   "'magnitudes' (reversed, with each signed addition first worked on non-negative numbers), "
                   "'published-reversed' (published, with every number written least significant digit first), "
                   "'steps-reversed' (steps, the same way), 'padded' (reversed, with the result of every addition "
                   "and subtraction written with as many digits as its widest operand, zeros in front), "
                   "'padded-d' (reversed, with D's value written that way), 'padded-d-plain' (padded-d, with D's plain "
                   "value after the padded one, for the square root to read), 'padded-root' (padded-d-plain, with each "
                   "remainder of the square root written padded, then plain), 'root-r-first' (padded-d-plain, with "
                   "each trial of the square root written from its partial remainder: R-(20*P+d)*d=R-T=R') or 'monic' (the equation divided by a "
                   "first, x^2+(b/a)x+c/a=0, then padded-d's steps on its smaller numbers).")
@click.option("--out", default="data/quadratic", show_default=True, type=click.Path(file_okay=False),
              help="Output directory (a datasets.DatasetDict saved with save_to_disk, plus card.json and README.md).")
@click.option("--overwrite", is_flag=True, help="Replace the output directory if it exists.")
@click.option("--workers", default=os.cpu_count() or 1, show_default="all cores", type=IntRange(min=1),
              help="Processes that write and verify rows; the output does not depend on it.")
def gen(rows, seed, mix, test_fraction, extra_train_rows, extra_mix, a_range, root_range, fmt, out, overwrite, workers):
    """Generate the verified quadratic-equation dataset.

    Samples distinct equations of each class, writes each worked solution, verifies every row with
    the sympy grader (roots by exact substitution, the class by the discriminant, every printed
    equality re-evaluated from the written string), splits each class into train and test, and
    saves atomically."""
    import time

    from gen.dataset import GenOptions, generate
    from gen.equations import Ranges

    _check_out(out, "--out")
    options = GenOptions(
        rows=rows, seed=seed, mix=mix, test_fraction=test_fraction, format=fmt,
        extra_train_rows=extra_train_rows, extra_mix=extra_mix, ranges=Ranges(a_lo=a_range[0], a_hi=a_range[1], root_lo=root_range[0], root_hi=root_range[1]),
    )
    start = time.perf_counter()
    card = generate(options, out, overwrite=overwrite, workers=workers, progress=True)
    counts = ", ".join(f"{name} {c['total']} ({c['two']}/{c['one']}/{c['none']})" for name, c in card["counts"].items())
    click.echo(f"wrote {out}: {counts} rows (two/one/no real roots), verified, in {time.perf_counter() - start:.1f} s")


@cli.command()
@click.argument("equation")
@click.argument("solution")
def verify(equation, solution):
    """Grade SOLUTION for EQUATION and print one line of JSON (SOLUTION `-` reads standard input).

    EQUATION is like 7x^2+3556x+451612=0 (spaces, `*` and omitted 1s are accepted); SOLUTION is in
    any dataset format. The verdict says whether the solution is well formed, whether every
    stated equality is true (steps_valid), whether each formula was written out with this
    equation's coefficients (substitutions_valid) and whether the final answer is the set of real
    roots. Exit 0 when all of that holds, 1 when the solution is wrong, 2 when the equation cannot
    be read."""
    from gen.grader import MAX_SOLUTION_CHARS, GradeError, grade, parse_equation, true_roots

    if solution == "-":
        limit = 4 * MAX_SOLUTION_CHARS + 4  # bytes: enough UTF-8 to tell that it is too long
        data = sys.stdin.buffer.read(limit)
        try:  # a character cut at the limit is no error; the solution is too long anyway
            solution = codecs.getincrementaldecoder("utf-8")().decode(data, final=len(data) < limit)
        except UnicodeDecodeError:
            raise QuadlabError("standard input is not UTF-8 text; pipe in the solution, e.g. `echo 'x=1;' | quadlab verify EQUATION -`") from None
        if not solution.strip():
            raise QuadlabError("standard input is empty; pipe in the solution, e.g. `echo 'x=1;' | quadlab verify EQUATION -`")

    try:
        a, b, c = parse_equation(equation)
    except GradeError as err:
        raise QuadlabError(f"cannot read the equation: {err}") from None
    verdict = grade(a, b, c, solution)
    report = {"equation": {"a": a, "b": b, "c": c}, "true_roots": true_roots(a, b, c), **verdict.as_dict()}
    click.echo(json.dumps(report))
    sys.exit(0 if verdict.ok else 1)


@cli.command()
@click.argument("predictions", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="The format of the reference solutions, for rows without `target` (compact rows).  "
                   "[default: the format in dataset-card.json beside PREDICTIONS]")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write the rows with their new grades (under PREDICTIONS' name), metrics.json (PREDICTIONS' entry with "
                   "its greedy metrics and diagnosis graded again; other entries and keys kept) and diagnosis.png into this "
                   "directory, which may be PREDICTIONS' own.  [default: write nothing]")
@click.option("--compact", "compact_rows", is_flag=True,
              help="With --out: write each row's equation and grades, and its output only where it is wrong, gzipped "
                   "(how figures/results/ keeps 20,000 rows in 0.5 MB).")
def grade(predictions, fmt, out_dir, compact_rows):
    """Grade the outputs in PREDICTIONS again (eval's predictions.jsonl, or a .gz of it, full or
    compact) with today's grader, print the metrics and the diagnosis, and say whether they give
    again every grade that its rows record and the entry of metrics.json beside it that its name
    names (predictions.jsonl: test; predictions-NAME.jsonl: NAME). Exit 0 when they do, 1 when not
    (the first 20 differences listed), 2 on input that cannot be read; with --out, 0 once written.

    Each row needs `equation` and `prediction`; a row without `prediction` and with `exact`: true
    was right, and is graded as its reference, `target` or the solution of --format."""
    from train.quadratic import grade_file

    if compact_rows and out_dir is None:
        raise QuadlabError("--compact says how to write the rows; give --out DIR too")
    _check_out(out_dir, "--out")
    lines, differences = grade_file(Path(predictions), fmt, Path(out_dir) if out_dir else None, compact_rows)
    for line in lines:
        click.echo(line)
    sys.exit(1 if differences and out_dir is None else 0)


def _overrides(pairs: tuple[str, ...]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise QuadlabError(f"--set takes KEY=VALUE, not {pair!r}")
        out[key.strip()] = value.strip()
    return out


@cli.command()
@click.option("--task", type=click.Choice(list(tasks.TASKS)), default="quadratic", show_default=True,
              help="quadratic: a T5 from scratch on data/quadratic; squad: fine-tune an encoder for question answering; "
                   "classify: sequence classification with an encoder (see --model, --train-file).")
@click.option("--model", "model_name", default=None, help="squad, classify: a hub model name or a local directory with its tokenizer.  "
              "[default: squad: microsoft/deberta-v3-base; classify: an encoder from scratch, --set encoder=bert|deberta-v2]")
@click.option("--init-from", default=None, metavar="RUN_DIR",
              help="quadratic: start from the weights of this trained run (or a GPU job's unpacked run/), with its tokenizer "
                   "and architecture, a fresh optimiser and the schedule of this run: to train a finished model on without its "
                   "checkpoint, or on other data of the same format.  [default: random weights]")
@click.option("--train-file", default=None, help="squad: SQuAD v1.1/v2.0 JSON to train on (split by article when --eval-file is not given); "
              "classify: CSV or JSONL with text, optional text_pair and label columns (--set text_column=... label_column=...; "
              "eval_fraction held out when --eval-file is not given). classify without it: the equations of --data.")
@click.option("--eval-file", default=None, help="squad: SQuAD JSON to evaluate on; classify: CSV or JSONL to test on.")
@click.option("--preset", default=None, help="Named preset: tiny (CPU, minutes), small or base (GPU).  [default: tiny; squad and classify: their own]")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML file of configuration keys; applied after the preset, before the options here.")
@click.option("--data", default=None, help="Dataset directory from `cli.py gen`.  [default: data/quadratic]")
@click.option("--run-dir", default=None, help="Where the run goes.  [default: runs/<task>-<preset>-seed<seed>]")
@click.option("--seed", type=SEED, default=None, help="Seed for initialisation, data order and the validation split.  [default: 0]")
@click.option("--max-steps", type=INT, default=None, help="Optimiser steps (0: use --epochs). With --resume: train a finished run on to this step.")
@click.option("--epochs", type=FLOAT, default=None, help="Epochs, when --max-steps is 0.")
@click.option("--batch-size", type=INT, default=None, help="Rows per optimiser step (per device, before accumulation).")
@click.option("--lr", "learning_rate", type=FLOAT, default=None, help="Peak learning rate.")
@click.option("--eval-every", type=INT, default=None, help="Steps between validation evaluations (and checkpoints).")
@click.option("--patience", type=INT, default=None, help="Evaluations without improvement before stopping (0: never).")
@click.option("--eval-limit", type=INT, default=None, help="Test rows evaluated at the end (0: all).")
@click.option("--num-beams", type=INT, default=None, help="Also decode the test split with this many beams, reranked by the grader.")
@click.option("--keep-checkpoints", is_flag=True, default=None,
              help="Also keep the model at every evaluation in checkpoints/step-N/, for `cli.py heads` to correlate with accuracy.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other configuration key (see config.yaml of a run), e.g. --set d_model=128, or --max-steps 100000 "
                   "--set train_seconds=600 --set warmup_steps=200 to train ten minutes (the steps that fit, counted at the end of "
                   "the warm-up, --max-steps the ceiling). Repeatable.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --run-dir exactly, with its saved configuration. "
              "With --max-steps N, a finished run trains on to step N at the rates a run of N steps has there "
              "(a re-warm; recorded as rewarm_after in config.yaml).")
@click.option("--overwrite", is_flag=True, help="Delete an existing run directory and start again.")
def train(task, model_name, init_from, train_file, eval_file, preset, config_path, data, run_dir, seed, max_steps, epochs, batch_size,
          learning_rate, eval_every, patience, eval_limit, num_beams, keep_checkpoints, settings, resume, overwrite):
    """Train a model and evaluate it on the test split.

    quadratic: a T5 from scratch (character tokenizer, relative attention buckets sized for these
    sequences) learns to write worked solutions. squad: a pretrained encoder is fine-tuned with
    AutoModelForQuestionAnswering (sliding windows, n-best post-processing, official EM/F1). classify:
    AutoModelForSequenceClassification labels a text or a text pair (accuracy, macro-F1, the
    majority-class baseline); by default an encoder from scratch on the equations of --data, labelled
    with their number of real roots. Configuration: the preset, then --config, then the
    options here. The run directory holds the best model and tokenizer in Hugging Face format,
    config.yaml, environment.json, log.jsonl, training_curve.png, metrics.json and predictions.jsonl.
    Ctrl-C stops; --resume continues from the last checkpoint with the same result as an
    uninterrupted run, and --resume --max-steps N trains a finished run further."""
    from train.config import resolve
    from train.engine import Interrupted
    from train.runs import check_checkpoint, read_config

    options = {
        "task": task, "model_name": model_name, "init_from": init_from, "train_file": train_file, "eval_file": eval_file, "data": data, "run_dir": run_dir, "seed": seed, "max_steps": max_steps, "epochs": epochs,
        "batch_size": batch_size, "learning_rate": learning_rate, "eval_every": eval_every, "patience": patience,
        "eval_limit": eval_limit, "num_beams": num_beams, "keep_checkpoints": 1 if keep_checkpoints else None, **_overrides(settings),
    }
    if resume:
        if not run_dir:
            raise QuadlabError("--resume needs --run-dir, the run to continue")
        given = [k for k, v in options.items() if v is not None and k not in ("task", "run_dir", "max_steps")]
        if given or preset or config_path:
            raise QuadlabError("--resume continues with the run's saved configuration; drop the other options (all but --max-steps)")
        config = read_config(Path(run_dir))
        check_checkpoint(Path(run_dir))
        config.run_dir = run_dir  # the directory given, also when the run was moved or copied since
        if max_steps is not None:
            from train.engine import extend

            config = extend(config, Path(run_dir), max_steps)
    else:
        config = resolve(preset or "tiny", config_path, {**options, "preset": preset})
        _check_out(config.resolved_run_dir(), "--run-dir")
    task = tasks.module(config.task)
    try:
        result = task.train_run(config, resume=resume, overwrite=overwrite)
    except Interrupted as stop:
        click.echo(f"quadlab train: {stop}", err=True)
        sys.exit(128 + signal.SIGTERM if isinstance(stop.__context__, Terminated) else 130)
    if result is None:  # another process of `accelerate launch`: the main one evaluates and reports
        return
    for line in task.metric_lines(config.resolved_run_dir(), result, "test"):
        click.echo(line)


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path())
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test", show_default=True, help="Split to decode.")
@click.option("--limit", type=IntRange(min=0), default=0, show_default=True, help="Rows to decode (0: all).")
@click.option("--batch-size", type=IntRange(min=1), default=None, help="Decoding batch size.  [default: the run's eval_batch_size]")
@click.option("--num-beams", type=IntRange(min=0), default=0, show_default=True, help="Also decode with this many beams (0 or 1: greedy only): reports the most likely beam and the first the grader accepts; each row keeps its beams.")
@click.option("--beams-below", type=FloatRange(min=0, max=1, min_open=True), default=None, metavar="P",
              help="With --num-beams: beams only for the rows whose least sure token (the lowest probability the model gave a token of "
                   "its greedy output, each row's `least_sure`) is below P; the others keep their greedy output. 0.7 found 93% of the "
                   "best model's failures in 12% of the rows (RESULTS.md).  [default: beams for every row]")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Directory for metrics.json (this split's entry; others there are kept), the predictions and diagnosis.png.  "
                   "[default: RUN_DIR, whose results for the split are replaced; a --limit check that would replace a result of more rows is refused]")
@DATA_OPTION
def eval_command(run_dir, split, limit, batch_size, num_beams, beams_below, out_dir, data):
    """Evaluate a trained run. Quadratic: full-solution and character accuracy, roots accuracy and
    valid-steps rate (judged by the grader of `cli.py verify`), overall and by root count; writes
    metrics.json and predictions.jsonl. SQuAD: exact match and F1 on the evaluation set; writes
    predictions.json (official format) and metrics.json."""
    from train.runs import open_run

    if beams_below is not None and num_beams < 2:
        raise QuadlabError("--beams-below says which rows get beams; give --num-beams K (K >= 2) too")
    _check_out(out_dir, "--out")
    task = tasks.module(open_run(Path(run_dir), "eval").task)
    metrics = task.evaluate_run(Path(run_dir), split=split, limit=limit, batch_size=batch_size, num_beams=num_beams,
                                out_dir=Path(out_dir) if out_dir else None, data=data, beams_below=beams_below)
    for line in task.metric_lines(run_dir, metrics, split):
        click.echo(line)


def _check_out(path, option: str) -> None:
    """An output directory that a file stands in the way of, or that cannot be written, is refused
    before any work."""
    if path is None:
        return
    existing = next(p for p in (Path(path).absolute(), *Path(path).absolute().parents) if p.exists())
    if not existing.is_dir():
        raise QuadlabError(f"{option} {path} cannot be made: {existing} is a file; give a directory path")
    # asked, not tried: a trial write would change the directory's modification time
    read_only = hasattr(os, "statvfs") and os.statvfs(existing).f_flag & os.ST_RDONLY  # POSIX only
    why = "a read-only file system" if read_only else None if os.access(existing, os.W_OK | os.X_OK) else "permission denied"
    if why:
        raise QuadlabError(f"{option} {path} cannot be made: nothing can be written in {existing} ({why}); "
                           f"give a directory you can write to")


def _run_or_newest(run, command: str, task: str | None = None):
    from train.runs import newest_run

    return Path(run) if run else newest_run(command, task)


@cli.command()
@click.option("--run", "run_dir", type=click.Path(), default=None, help="Run directory.  [default: the newest finished run under runs/]")
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test", show_default=True, help="Split to average over.")
@click.option("--limit", type=IntRange(min=0), default=0, show_default=True, help="Rows of the split to average over (0: all).")
@click.option("--example", "examples", type=IntRange(min=0), multiple=True, help="Row of the split to draw per-head maps for (repeatable).  [default: 0]")
@click.option("--equation", default=None, help="Draw per-head maps for this equation instead of a row of the split.")
@click.option("--head", "heads", type=LAYER_HEAD, multiple=True, help="Also draw this head alone, large, with every token labelled (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output directory.  [default: figures/<run name>]")
@click.option("--batch-size", type=IntRange(min=1), default=256, show_default=True, help="Examples per forward pass when averaging.")
@click.option("--bertviz", is_flag=True, help="Also export bertviz head_view and model_view pages for the first example (they need a network).")
@click.option("--question", default=None, help="SQuAD runs: draw per-head maps for this question (with --context).")
@click.option("--context", default=None, help="SQuAD runs: the passage for --question.")
@click.option("--text", default=None, help="Classification runs: draw per-head maps for this text.")
@click.option("--neuron", "neurons", type=NeuronSpec(), multiple=True,
              help="Also draw the neuron view of the first example (repeatable): for head HEAD of layer LAYER and the query "
                   "token at position QUERY (0 is the first token; the rows of the maps), the query and key vectors, their "
                   "elementwise product, the scores, the bias added before the softmax and the attention. KIND is encoder "
                   "(the default), decoder or cross; decoder and cross queries are output tokens. E.g. 1:3:5, cross:0:2:7.")
@DATA_OPTION
def maps(run_dir, split, limit, examples, equation, heads, out_dir, batch_size, bertviz, question, context, text, neurons, data):
    """Render attention maps of a trained run (any task).

    For one example (its model-written answer; for a seq2seq model teacher-forced once, so that
    decoder and cross maps cover the whole answer): per-head grids of every attention kind (encoder
    self-, decoder self- and cross-attention), chosen single heads, layer x token summaries. Over a
    split (streamed; memory does not grow with its size): per-head maps averaged by absolute
    position and by token role, layer x role summaries, and per layer the share of attention each
    role receives. PNG, SVG, the numbers (maps.npz, index.json) and an offline index.html with an
    interactive viewer, under figures/<run>/. Roles: quadratic runs the equation's and the
    solution's parts; SQuAD runs [CLS], question, context, answer, [SEP], punct; classification
    runs [CLS], [SEP], punct and the text (on equations, the equation's parts)."""
    from analyze.maps import render_maps

    _check_out(out_dir, "--out")
    run = _run_or_newest(run_dir, "maps")
    given = {k: v for k, v in (("equation", equation), ("question", question), ("context", context), ("text", text)) if v is not None}
    result = render_maps(run, Path(out_dir) if out_dir else None, split=split, limit=limit,
                         examples=list(examples) or None, given=given or None, heads=list(heads), batch_size=batch_size, bertviz=bertviz,
                         neurons=list(neurons), data=data)
    click.echo(f"wrote {len(result['figures'])} figures, maps.npz and index.html to {result['out_dir']} "
               f"(averages over {result['examples_averaged']} {result['split']} examples in {result['average_seconds']} s)")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test", show_default=True,
              help="Quadratic runs: the split to analyse (SQuAD runs use their evaluation set).")
@click.option("--limit", type=IntRange(min=0), default=1000, show_default=True,
              help="Examples for the statistics, clustering, rollout, context variance and symbol shares (0: all).")
@click.option("--eval-limit", type=IntRange(min=1), default=300, show_default=True,
              help="Examples decoded (or answered) for head importance, symbol blocking and the accuracy of checkpoints.")
@click.option("--batch-size", type=IntRange(min=1), default=None,
              help="Examples (SQuAD: windows) per forward pass.  [default: 64; SQuAD 8, as a window's maps are large]")
@click.option("--clusters", type=IntRange(min=0), default=0, show_default=True,
              help="KMeans clusters of per-example maps (0: choose 2..8 by silhouette).")
@click.option("--compare", "compare", type=click.Path(), multiple=True,
              help="Another run directory (repeatable): correlate context variance with accuracy across these runs' final "
                   "models instead of across RUN_DIR's checkpoints.")
@click.option("--no-importance", is_flag=True, help="Skip head ablation, gradient importance and symbol blocking (the slow part).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Figures directory.  [default: figures/<run name>]")
@DATA_OPTION
def heads(run_dir, split, limit, eval_limit, batch_size, clusters, compare, no_importance, out_dir, data):
    """Head-level analysis of RUN_DIR (quadratic or SQuAD), written to <figures>/heads/ and added to
    its index.html.

    Per attention kind, layer and head: entropy against the uniform baseline, confidence, attention to
    the previous / same / next token, mean distance, attention to each token role (CSV, JSON,
    heatmaps); a pattern type (sharp diagonal, blurred diagonal, vertical, block, heterogeneous) by
    the thresholds in the README, counted per layer; heads clustered by Jensen-Shannon distance (MDS
    figure) and per-example maps clustered by KMeans, with each cluster's make-up by layer, head and
    example class; head importance by ablation (metric drop) and by gradient E|dL/dxi|; attention
    rollout of the encoder; context-vector variance, correlated with accuracy across the run's kept
    checkpoints (train with --keep-checkpoints) or across --compare runs; the attention that the
    special symbols (x, ^, = ; SQuAD: [CLS], [SEP], punctuation) receive against their share of the
    keys, with 95% confidence intervals, and the accuracy when attention to them is blocked."""
    from analyze.heads import analyze_heads
    from analyze.report import summary_lines

    _check_out(out_dir, "--out")
    result = analyze_heads(Path(run_dir), Path(out_dir) if out_dir else None, split=split, limit=limit, eval_limit=eval_limit,
                           batch_size=batch_size, clusters=clusters, compare=[Path(p) for p in compare], skip_importance=no_importance,
                           data=data)
    for line in summary_lines(result):
        click.echo(line)
    seconds = ", ".join(f"{k} {v} s" for k, v in result["seconds"].items())
    click.echo(f"wrote {len(result['figures'])} figures, heads.json and CSV tables to {result['out_dir']} ({seconds})")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--pairs", type=IntRange(min=1), default=200, show_default=True, help="Pairs of clean and corrupted inputs.")
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test", show_default=True,
              help="The split the pairs are drawn from.")
@click.option("--seed", type=IntRange(min=0), default=0, show_default=True, help="Which rows and which corruptions make the pairs.")
@click.option("--batch-size", type=IntRange(min=1), default=256, show_default=True,
              help="Patched copies per forward pass (each copy patches one layer and position).")
@click.option("--side", type=click.Choice(["encoder", "decoder"]), default="encoder", show_default=True,
              help="Patch the encoder (pairs of equations) or the decoder (one equation, its written work with one digit "
                   "of D's operand b^2 changed; formats that write D's operands, such as reversed).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output directory.  [default: figures/<run name>/patching, or patching-decoder with --side decoder]")
@DATA_OPTION
def patch(run_dir, pairs, split, seed, batch_size, side, out_dir, data):
    """Activation patching of RUN_DIR's encoder or decoder (a task that provides pairs: quadratic).

    Encoder: for pairs of equations that differ in one coefficient (same sign and number of
    digits, so the tokens align; the number of real roots differs), run the corrupted equation
    with the encoder's hidden state at one (layer, position) replaced by the clean run's, and
    measure how much of the clean answer returns: the log-probability of D's first digits and of
    the root class (D's first character), teacher-forced on the clean solution, normalised per
    pair so that 0 is the corrupted run and 1 the clean run. Decoder (--side decoder): the same
    equation, teacher-forced on its solution up to D's value with one digit of b^2 changed in D's
    statement `D=X-Y=`, patched at the decoder's positions from that digit to the `=`; scored on
    D's first digits. Layers: the embedding output and each layer's output. Writes patching.json
    (mean, 95% CI and n per layer and token role), patching.npz and heatmaps (layer x role over
    pairs; layer x position for one pair)."""
    from analyze.patching import analyze_patching, summary_lines
    from analyze.report import refresh_report

    _check_out(out_dir, "--out")
    result = analyze_patching(Path(run_dir), Path(out_dir) if out_dir else None, pairs=pairs, split=split, seed=seed, batch_size=batch_size,
                              side=side, data=data)
    refresh_report(Path(result["out_dir"]))
    for line in summary_lines(result):
        click.echo(line)
    seconds = ", ".join(f"{k} {v} s" for k, v in result["seconds"].items())
    click.echo(f"wrote {len(result['figures'])} figures, patching.json and patching.npz to {result['out_dir']} ({seconds})")


@cli.command(name="context-figure")
@click.argument("figure_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="figures/context-variance", show_default=True,
              help="Where the figure (PNG, SVG) and its numbers (JSON) go.")
def context_figure(figure_dirs, out_dir):
    """Context-vector variance against performance for several runs side by side (e.g. a SQuAD run
    and a classification run): each FIGURE_DIR is what `cli.py heads RUN_DIR --out FIGURE_DIR` wrote
    for a run trained with --keep-checkpoints (or analysed with --compare). One scatter plot per run:
    the encoder's mean layer context variance of each model against the task's main metric, with
    Pearson r and its p-value."""
    from analyze.heads import context_figure as draw

    _check_out(out_dir, "--out")
    result = draw([Path(d) for d in figure_dirs], Path(out_dir))
    for panel in result["panels"]:
        c = panel["correlation"]
        r = f"r = {c['r']:+.3f}, p = {c['p']:.3g}" if c.get("r") is not None and c["r"] == c["r"] else f"r undefined ({c.get('note', '')})"
        click.echo(f"{panel['task']} {panel['run']}: context variance vs {panel['metric']}: {r}, n = {panel['models']}")
    click.echo(f"figure: {result['figures'][0]}")


@cli.command()
@click.argument("text")
@click.option("--run", "run_dir", type=click.Path(), default=None, help="A run directory.  [default: the newest finished quadratic run under runs/]")
@click.option("--context", default=None, help="SQuAD runs: the passage that holds the answer to the question TEXT.")
@click.option("--head", "heads", type=LAYER_HEAD, multiple=True, help="Also draw this head alone (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output directory.  [default: figures/<run name>/explain]")
def explain(text, run_dir, context, heads, out_dir):
    """Run a trained model on TEXT and show how: an equation for a quadratic run (the solution, the
    grader's verdict, how the run did on its test equations like it, the first statement and token
    where the solution parts from the reference, with the probabilities of both tokens there), a
    question for a SQuAD run (with --context; the answer and its score), a text for a
    classification run (the label and its probabilities, and on equation runs the true label); for each layer the token attended to most
    (quadratic: any input token, by encoder self- and cross-attention, and what the first wrong
    token reads; SQuAD: the question token the answer span attends to; classification: the token
    [CLS] attends to), and the per-head figures. An equation that starts with a minus sign goes
    after `--`."""
    from analyze.maps import explain as explain_example
    from train.runs import open_run

    _check_out(out_dir, "--out")
    run = _run_or_newest(run_dir, "explain", "quadratic")
    fields = tasks.module(open_run(run, "explain").task).Analysis.inputs
    given = {fields[0]: text, **({"context": context} if context is not None else {})}
    _show(explain_example(run, given, Path(out_dir) if out_dir else None, list(heads)))


def _show(result: dict) -> None:
    for line in result["lines"]:
        click.echo(line)
    click.echo(f"figures: {Path(result['figures'][0]).parent}")


@cli.command()
@click.option("--run", "run_dir", type=click.Path(), required=True, help="A SQuAD run directory from `cli.py train --task squad`.")
@click.option("--question", required=True, help="The question.")
@click.option("--context", required=True, help="The passage that holds the answer.")
@click.option("--head", "heads", type=LAYER_HEAD, multiple=True, help="Also draw this head alone (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output directory.  [default: figures/<run name>/ask]")
def ask(run_dir, question, context, heads, out_dir):
    """Answer QUESTION from CONTEXT with a SQuAD run and show how (as `explain QUESTION --context
    CONTEXT`): the answer, its score, for each layer the question token that receives the most
    attention from the answer span, and the per-head figures."""
    from analyze.maps import explain as explain_example
    from train.runs import open_run

    _check_out(out_dir, "--out")
    open_run(Path(run_dir), "ask", task="squad")
    _show(explain_example(Path(run_dir), {"question": question, "context": context}, Path(out_dir) if out_dir else None, list(heads),
                          command="ask"))


@cli.command()
@click.argument("run_dirs", nargs=-1, type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (another than 127.0.0.1 opens the page to the network).")
@click.option("--port", type=IntRange(min=0, max=65535), default=8000, show_default=True, help="Port to listen on (0: a free one).")
@click.option("--threads", type=IntRange(min=1), default=1, show_default=True,
              help="CPU threads for each model call (torch). One call of one example gains little from more, and they wait on each "
                   "other when the cores are busy: on a loaded 2-core machine 2 threads made a call 10 times slower than 1.")
def serve(run_dirs, host, port, threads):
    """Serve a live page and a JSON API on the runs RUN_DIRS (default: every finished run under
    runs/): type an equation, a question and a context, or a text, and see the model's answer (the
    grader's verdict, the answer's score, the label's probabilities) and its attention: head view,
    model view, layer x token summary and neuron view, drawn in the page, which needs no network.
    The API is in the README ("Live page"). Ctrl-C stops."""
    from analyze.serve import address, create_app, finished_runs, listen, load_runs, server

    sock = listen(host, port)  # before loading models: a taken port fails at once
    import torch

    torch.set_num_threads(threads)
    runs = load_runs([Path(d) for d in run_dirs] or finished_runs(), skip_broken=not run_dirs,
                     warn=lambda line: click.echo(line, err=True))
    click.echo(f"serving {len(runs)} run(s) ({', '.join(runs)}) at {address(sock)} (Ctrl-C stops)")
    server(create_app(runs)).run(sockets=[sock])


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test", show_default=True,
              help="Split whose rows are probed (SQuAD runs: their evaluation set).")
@click.option("--limit", type=IntRange(min=0), default=5000, show_default=True, help="Rows of the split to probe (0: all).")
@click.option("--target", "targets", multiple=True, help="A target to probe (repeatable).  [default: all the task's targets]")
@click.option("--batch-size", type=IntRange(min=1), default=64, show_default=True, help="Examples (SQuAD: windows) per forward pass.")
@click.option("--held-out", type=FLOAT, default=0.3, show_default=True,
              help="Share of the rows that score the probes; the others fit them (split by example, never by token).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the split, the control labels and the sampled tokens.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output directory.  [default: figures/<run name>/probes]")
@DATA_OPTION
def probe(run_dir, split, limit, targets, batch_size, held_out, seed, out_dir, data):
    """Linear probes on the hidden states of RUN_DIR: for every layer (0 = embeddings) of the
    encoder at every token role of the input (the mean over the role's tokens, and over the whole
    sequence) and, for seq2seq runs, of the decoder at the last `=` of each statement of the
    solution, a logistic regression fitted on part of the rows and scored on the rest, for each
    target (quadratic: root class, sign / last / leading digit / number of digits of D, ...; SQuAD:
    whether a context token is inside the answer span; classification: the label). Beside each
    accuracy: the majority baseline and a control task (labels random per token type), giving the
    selectivity. Writes probes.json, probes.csv and a layer x role heatmap per target."""
    from analyze.probes import run_probes, summary_lines
    from analyze.report import refresh_report

    _check_out(out_dir, "--out")
    result = run_probes(Path(run_dir), Path(out_dir) if out_dir else None, split=split, limit=limit, targets=list(targets),
                        batch_size=batch_size, held_out=held_out, seed=seed, data=data)
    refresh_report(Path(result["out_dir"]))
    for line in summary_lines(result):
        click.echo(line)
    seconds = ", ".join(f"{k} {v} s" for k, v in result["seconds"].items())
    heatmaps = len(result["figures"]) // 2  # each as PNG and SVG
    click.echo(f"wrote probes.json, probes.csv and {heatmaps} heatmap{'s' * (heatmaps != 1)} to {result['out_dir']} ({seconds})")


@cli.command(name="gpu-job")
@click.argument("recipe")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the archive <recipe name>.tar.gz (on the lent GPU machine: $OUT).")
@click.option("--work", default=None, type=click.Path(file_okay=False),
              help="Work directory (data, run, figures, job.json), kept between calls.  [default: runs/job-<recipe name>]")
@click.option("--budget-seconds", type=IntRange(min=0), default=500, show_default=True,
              help="Seconds this call may take: training stops with a checkpoint at the first step after them; maps and "
                   "heads start only with half of them left. 500 leaves a 10-minute call room for its start and the "
                   "test evaluation after training.")
@click.option("--test-seconds", type=IntRange(min=0), default=0, show_default=True,
              help="Test the trained model in this call only if training ends with at least this many seconds of "
                   "--budget-seconds left; else stop after training (its checkpoint kept) and test in the next call, "
                   "which neither trains nor compiles. For a training call that would run out of time in the test "
                   "(20,000 rows: 60-80 s on an H200). 0: always test at once.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Change a training key of the recipe, e.g. --set train_seconds=600 (its training time; the recipes train 840 s), "
                   "--set compile=false, --set init_from=RUN_DIR (train on from a trained model's weights, e.g. an earlier "
                   "job's unpacked run/ with its weights). Recorded with the job: give the same in every call. Repeatable.")
def gpu_job(recipe, out_dir, work, budget_seconds, test_seconds, settings):
    """Run the whole experiment of RECIPE (a name in train/recipes/, or a YAML file) in calls of
    limited time: generate its dataset, train (resuming across calls), evaluate on the test split,
    maps, heads; after each stage pack the results into OUT/<recipe name>.tar.gz (at most 16 MiB).
    Call the same command again until it says the job is done; a finished job packs again."""
    import time

    from train.job import STAGES, read_recipe, run_job

    deadline = time.monotonic() + budget_seconds
    path, text, gen_options = read_recipe(recipe)
    work = Path(work or f"runs/job-{path.stem}")
    _check_out(work, "--work")
    _check_out(out_dir, "--out")
    # the recipe's gen: section holds the options of `cli.py gen` (a_range for --a-range), parsed as gen parses them
    names = {p.opts[0][2:].replace("-", "_"): p.opts[0] for p in gen.params if p.name not in ("out", "overwrite", "workers")}
    args = []
    for key, value in gen_options.items():
        if key not in names:
            raise QuadlabError(f"recipe {path}: gen: has no option {key!r}; those of `cli.py gen` are {', '.join(names)}")
        if key.endswith("_range") and not isinstance(value, str):  # YAML reads -30:30 as a number in base 60
            raise QuadlabError(f"recipe {path}: gen: {key} must be quoted, e.g. {key}: \"-30:30\"")
        args.append(f"{names[key]}={value}")
    try:
        gen_context = gen.make_context("gen", [*args, f"--out={work / 'data'}", "--overwrite"])
    except click.ClickException as err:
        raise QuadlabError(f"recipe {path}: gen: {err.format_message()}") from None

    def make_data():
        with gen_context:
            gen.invoke(gen_context)

    state = run_job(path, text, make_data, _overrides(settings), work, Path(out_dir), deadline, budget_seconds, test_seconds)
    todo = [stage for stage in STAGES if not state["stages"].get(stage, {}).get("done")]
    click.echo(f"gpu-job: {path.stem}: " + (f"not done ({todo[0]} next); run the same command again" if todo else "done"))


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a batch system's time limit), raised where it lands so that it
    unwinds as Ctrl-C does: partial outputs are removed, training resumes from its last checkpoint."""


def _raise_terminated(signum, frame):
    raise Terminated


def main(argv=None) -> None:
    """Entry point: click's errors and ours as one line on stderr, exit 2; Ctrl-C as one line, exit
    130, and SIGTERM, exit 143; no tracebacks."""
    handles_signals = threading.current_thread() is threading.main_thread()  # signal.signal works there only
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if handles_signals else None
    try:
        _main(argv)
    finally:
        if handles_signals:
            signal.signal(signal.SIGTERM, previous)


def _main(argv) -> None:
    try:
        cli.main(args=argv, prog_name="quadlab", standalone_mode=False)
    except click.exceptions.Exit as stop:
        sys.exit(stop.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt) as stop:  # click turns KeyboardInterrupt into Abort inside a command
        if isinstance(stop, Terminated) or isinstance(stop.__cause__, Terminated):
            click.echo("quadlab: terminated (SIGTERM)", err=True)
            sys.exit(128 + signal.SIGTERM)
        click.echo("quadlab: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        prefix = err.ctx.command_path if getattr(err, "ctx", None) else "quadlab"  # "quadlab gen", or "quadlab" for the group
        if isinstance(err, click.NoSuchOption) and re.fullmatch(r"-\d.*", err.option_name or ""):  # -8x^2+3x-1=0 reads as options
            click.echo(f"{prefix}: error: {err.format_message().rstrip('.')}; an argument that starts with a minus sign goes after the "
                       f"options and `--`, e.g. {prefix} [OPTIONS] -- '-8x^2+3x-1=0' (see --help)", err=True)
            sys.exit(err.exit_code)
        click.echo(f"{prefix}: error: {err.format_message()} (see --help)", err=True)
        sys.exit(err.exit_code)
    except QuadlabError as err:
        click.echo(f"quadlab: error: {err}", err=True)
        sys.exit(2)
    except OSError as err:  # the machine's, not the input's: a full disk, a permission, a vanished file
        import errno

        where = f": {err.filename}" if err.filename else ""
        fix = ("free space on that disk" if err.errno in (errno.ENOSPC, errno.EDQUOT)
               else "give a path you can write to" if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "check the path")
        click.echo(f"quadlab: error: {err.strerror or err}{where}; {fix} and run again", err=True)
        sys.exit(1)
    except RuntimeError as err:
        torch = sys.modules.get("torch")  # imported by the command that ran out of memory, if any
        if torch is None or not isinstance(err, torch.OutOfMemoryError):
            raise
        click.echo(f"quadlab: error: {out_of_memory_message(err)}", err=True)
        sys.exit(1)


def out_of_memory_message(err: Exception) -> str:
    """One line for torch's out-of-memory error (a GPU's; the CPU's end is the kernel's kill, which
    no process sees): what ran out and how to need less."""
    said = ". ".join(str(err).strip().split("\n")[0].split(". ")[:2]).rstrip(".")  # "CUDA out of memory. Tried to allocate 20.00 GiB"
    return (f"out of memory on the GPU ({said or 'out of memory'}); use smaller batches: --batch-size N (gpu-job: --set batch_size=N; "
            f"in training, --set grad_accum=K keeps the rows an optimiser step and --set eval_batch_size=N the rows an evaluation batch; "
            f"train again with --overwrite, as --resume keeps the run's batch size)")


if __name__ == "__main__":
    main()
