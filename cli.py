"""quadlab command line: `python cli.py COMMAND --help` explains each command.

Every command reports bad input as one line on stderr and exits 2; `verify` also exits 1 when a
solution is wrong.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from gen import QuadlabError


class IntPair(click.ParamType):
    """Two integers written `A:B`: a range `LO:HI` with both ends included (`ordered`, e.g. `-30:30`),
    or a layer and a head `LAYER:HEAD` (e.g. `1:3`)."""

    def __init__(self, name: str, malformed: str, ordered: bool = False):
        self.name, self.malformed, self.ordered = name, malformed, ordered

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            first, second = (int(part) for part in str(value).split(":"))
        except ValueError:
            self.fail(self.malformed.format(value=value), param, ctx)
        if self.ordered and first > second:
            self.fail(f"{value!r} is empty; write {self.name} with LO <= HI", param, ctx)
        return first, second


INT_RANGE = IntPair("LO:HI", "{value!r} is not a range; write LO:HI, e.g. -30:30", ordered=True)
LAYER_HEAD = IntPair("LAYER:HEAD", "{value!r} is not LAYER:HEAD, e.g. 1:3")


class Shares(click.ParamType):
    """Comma-separated shares, e.g. `0.5,0.3,0.2`."""

    name = "TWO,ONE,NONE"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(float(part) for part in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a list of numbers; write e.g. 0.5,0.3,0.2", param, ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli():
    """quadlab: generate quadratic equations with worked solutions, train transformers on them,
    and analyse their attention."""


@cli.command()
@click.option("--rows", default=100_000, show_default=True, type=int, help="Number of equations in all (train + test).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed; the same seed and options give the same bytes.")
@click.option("--mix", default="0.5,0.3,0.2", show_default=True, type=Shares(),
              help="Shares of equations with two, one and no real roots; must sum to 1.")
@click.option("--test-fraction", default=0.2, show_default=True, type=float,
              help="Share of each class that goes to the test split (the rest is train).")
@click.option("--a-range", default="-30:30", show_default=True, type=INT_RANGE,
              help="Leading coefficient a, LO:HI inclusive (0 is skipped).")
@click.option("--root-range", default="-500:500", show_default=True, type=INT_RANGE,
              help="Integer roots r, LO:HI inclusive; b and c follow from a and the roots.")
@click.option("--format", "fmt", default="published", show_default=True, type=click.Choice(["published", "steps"]),
              help="Solution format: 'published' (the study's) or 'steps' (every intermediate product).")
@click.option("--out", default="data/quadratic", show_default=True, type=click.Path(file_okay=False),
              help="Output directory (a datasets.DatasetDict saved with save_to_disk, plus card.json and README.md).")
@click.option("--overwrite", is_flag=True, help="Replace the output directory if it exists.")
@click.option("--workers", default=os.cpu_count() or 1, show_default="all cores", type=click.IntRange(min=1),
              help="Processes that write and verify rows; the output does not depend on it.")
def gen(rows, seed, mix, test_fraction, a_range, root_range, fmt, out, overwrite, workers):
    """Generate the verified quadratic-equation dataset.

    Samples distinct equations of each class, writes each worked solution, verifies every row with
    the sympy grader (roots by exact substitution, the class by the discriminant, every printed
    equality re-evaluated from the written string), splits each class into train and test, and
    saves atomically."""
    import time

    from gen.dataset import GenOptions, generate
    from gen.equations import Ranges

    options = GenOptions(
        rows=rows, seed=seed, mix=mix, test_fraction=test_fraction, format=fmt,
        ranges=Ranges(a_lo=a_range[0], a_hi=a_range[1], root_lo=root_range[0], root_hi=root_range[1]),
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
    either dataset format. The verdict says whether the solution is well formed, whether every
    stated equality is true (steps_valid), whether each formula was written out with this
    equation's coefficients (substitutions_valid) and whether the final answer is the set of real
    roots. Exit 0 when all of that holds, 1 when the solution is wrong, 2 when the equation cannot
    be read."""
    from gen.grader import MAX_SOLUTION_CHARS, GradeError, grade, parse_equation, true_roots

    if solution == "-":
        solution = sys.stdin.read(MAX_SOLUTION_CHARS + 1)  # enough to tell that it is too long

    try:
        a, b, c = parse_equation(equation)
    except GradeError as err:
        raise QuadlabError(f"cannot read the equation: {err}") from None
    verdict = grade(a, b, c, solution)
    report = {"equation": {"a": a, "b": b, "c": c}, "true_roots": true_roots(a, b, c), **verdict.as_dict()}
    click.echo(json.dumps(report))
    sys.exit(0 if verdict.ok else 1)


def _overrides(pairs: tuple[str, ...]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise QuadlabError(f"--set takes KEY=VALUE, not {pair!r}")
        out[key.strip()] = value.strip()
    return out


@cli.command()
@click.option("--task", type=click.Choice(["quadratic", "squad"]), default="quadratic", show_default=True,
              help="quadratic: a T5 from scratch on data/quadratic; squad: fine-tune an encoder for question answering.")
@click.option("--model", "model_name", default=None, help="squad: a hub model name or a local directory.  [default: microsoft/deberta-v3-base]")
@click.option("--train-file", default=None, help="squad: SQuAD v1.1/v2.0 JSON to train on (split by article when --eval-file is not given).")
@click.option("--eval-file", default=None, help="squad: SQuAD JSON to evaluate on.")
@click.option("--preset", default=None, help="Named preset: tiny (CPU, minutes), small or base (GPU).  [default: tiny]")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML file of configuration keys; applied after the preset, before the options here.")
@click.option("--data", default=None, help="Dataset directory from `cli.py gen`.  [default: data/quadratic]")
@click.option("--run-dir", default=None, help="Where the run goes.  [default: runs/<task>-<preset>-seed<seed>]")
@click.option("--seed", type=int, default=None, help="Seed for initialisation, data order and the validation split.  [default: 0]")
@click.option("--max-steps", type=int, default=None, help="Optimiser steps (0: use --epochs).")
@click.option("--epochs", type=float, default=None, help="Epochs, when --max-steps is 0.")
@click.option("--batch-size", type=int, default=None, help="Rows per optimiser step (per device, before accumulation).")
@click.option("--lr", "learning_rate", type=float, default=None, help="Peak learning rate.")
@click.option("--eval-every", type=int, default=None, help="Steps between validation evaluations (and checkpoints).")
@click.option("--patience", type=int, default=None, help="Evaluations without improvement before stopping (0: never).")
@click.option("--eval-limit", type=int, default=None, help="Test rows evaluated at the end (0: all).")
@click.option("--num-beams", type=int, default=None, help="Also decode the test split with this many beams, reranked by the grader.")
@click.option("--keep-checkpoints", is_flag=True, default=None,
              help="Also keep the model at every evaluation in checkpoints/step-N/, for `cli.py heads` to correlate with accuracy.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other configuration key (see config.yaml of a run), e.g. --set d_model=128. Repeatable.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --run-dir exactly, with its saved configuration.")
@click.option("--overwrite", is_flag=True, help="Delete an existing run directory and start again.")
def train(task, model_name, train_file, eval_file, preset, config_path, data, run_dir, seed, max_steps, epochs, batch_size,
          learning_rate, eval_every, patience, eval_limit, num_beams, keep_checkpoints, settings, resume, overwrite):
    """Train a model and evaluate it on the test split.

    quadratic: a T5 from scratch (character tokenizer, relative attention buckets sized for these
    sequences) learns to write worked solutions. squad: a pretrained encoder is fine-tuned with
    AutoModelForQuestionAnswering (sliding windows, n-best post-processing, official EM/F1). Configuration: the preset, then --config, then the
    options here. The run directory holds the best model and tokenizer in Hugging Face format,
    config.yaml, environment.json, log.jsonl, training_curve.png, metrics.json and predictions.jsonl.
    Ctrl-C stops; --resume continues from the last checkpoint with the same result as an
    uninterrupted run."""
    from train.config import load_yaml, resolve
    from train.engine import Interrupted

    options = {
        "task": task, "model_name": model_name, "train_file": train_file, "eval_file": eval_file, "data": data, "run_dir": run_dir, "seed": seed, "max_steps": max_steps, "epochs": epochs,
        "batch_size": batch_size, "learning_rate": learning_rate, "eval_every": eval_every, "patience": patience,
        "eval_limit": eval_limit, "num_beams": num_beams, "keep_checkpoints": 1 if keep_checkpoints else None, **_overrides(settings),
    }
    if resume:
        if not run_dir:
            raise QuadlabError("--resume needs --run-dir, the run to continue")
        given = [k for k, v in options.items() if v is not None and k not in ("task", "run_dir")]
        if given or preset or config_path:
            raise QuadlabError("--resume continues with the run's saved configuration; drop the other options")
        config_file = Path(run_dir) / "config.yaml"
        if not config_file.exists():
            raise QuadlabError(f"{run_dir} is not a run directory to resume (no config.yaml)")
        config = load_yaml(config_file)
    else:
        config = resolve(preset or "tiny", config_path, {**options, "preset": preset})
    if config.task == "squad":
        from train.squad import train_run
    else:
        from train.quadratic import train_run
    try:
        result = train_run(config, resume=resume, overwrite=overwrite)
    except Interrupted as stop:
        click.echo(f"quadlab train: {stop}", err=True)
        sys.exit(130)
    if config.task == "squad":
        click.echo(f"{config.resolved_run_dir()}: exact match {result['exact_match']:.2f}, F1 {result['f1']:.2f} "
                   f"on {result['total']} questions")
    else:
        _print_metrics(config.resolved_run_dir(), result)


def _print_metrics(run_dir, metrics: dict) -> None:
    test = metrics["test"]
    for name, m in test.items():
        if isinstance(m, dict) and "full_solution_accuracy" in m:
            parts = [f"{k.replace('_', ' ')} {m[k]:.4f}" for k in ("full_solution_accuracy", "character_accuracy", "roots_accuracy", "valid_steps_rate")]
            click.echo(f"{run_dir} test ({test['rows']} rows, {name}): " + ", ".join(parts))
            by = ", ".join(f"{k} {v['full_solution_accuracy']:.4f}" for k, v in m["by_num_roots"].items() if v["n"])
            click.echo(f"  full-solution accuracy by root count: {by}")


@cli.command(name="eval")
@click.argument("run_dir", type=click.Path())
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test", show_default=True, help="Split to decode.")
@click.option("--limit", type=int, default=0, show_default=True, help="Rows to decode (0: all).")
@click.option("--batch-size", type=int, default=None, help="Decoding batch size.  [default: the run's eval_batch_size]")
@click.option("--num-beams", type=int, default=0, show_default=True, help="Also decode with this many beams, reranked by the grader.")
def eval_command(run_dir, split, limit, batch_size, num_beams):
    """Evaluate a trained run. Quadratic: full-solution and character accuracy, roots accuracy and
    valid-steps rate (judged by the grader of `cli.py verify`), overall and by root count; writes
    metrics.json and predictions.jsonl. SQuAD: exact match and F1 on the evaluation set; writes
    predictions.json (official format) and metrics.json."""
    from train.config import load_yaml
    from train.quadratic import evaluate_run

    if limit < 0 or (batch_size is not None and batch_size <= 0) or num_beams < 0:
        raise QuadlabError("--limit, --batch-size and --num-beams must not be negative")
    if (Path(run_dir) / "config.yaml").exists() and load_yaml(Path(run_dir) / "config.yaml").task == "squad":
        from train.squad import evaluate_run as evaluate_squad

        m = evaluate_squad(Path(run_dir), limit)
        click.echo(f"{run_dir}: exact match {m['exact_match']:.2f}, F1 {m['f1']:.2f} on {m['total']} questions")
        return
    metrics = evaluate_run(Path(run_dir), split=split, limit=limit, batch_size=batch_size, num_beams=num_beams)
    _print_metrics(run_dir, {"test": metrics[split]})


def _run_or_newest(run):
    from analyze.maps import newest_run

    return Path(run) if run else newest_run()


@cli.command()
@click.option("--run", "run_dir", type=click.Path(), default=None, help="Run directory.  [default: the newest finished run under runs/]")
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test", show_default=True, help="Split to average over.")
@click.option("--limit", type=click.IntRange(min=0), default=0, show_default=True, help="Rows of the split to average over (0: all).")
@click.option("--example", "examples", type=click.IntRange(min=0), multiple=True, help="Row of the split to draw per-head maps for (repeatable).  [default: 0]")
@click.option("--equation", default=None, help="Draw per-head maps for this equation instead of a row of the split.")
@click.option("--head", "heads", type=LAYER_HEAD, multiple=True, help="Also draw this head alone, large, with every token labelled (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output directory.  [default: figures/<run name>]")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Examples per forward pass when averaging.")
@click.option("--bertviz", is_flag=True, help="Also export bertviz head_view and model_view pages for the first example (they need a network).")
@click.option("--question", default=None, help="SQuAD runs: draw per-head maps for this question (with --context).")
@click.option("--context", default=None, help="SQuAD runs: the passage for --question.")
def maps(run_dir, split, limit, examples, equation, heads, out_dir, batch_size, bertviz, question, context):
    """Render attention maps of a trained run.

    For one example (its model-written solution, teacher-forced once, so that decoder and cross maps
    cover the whole answer): per-head grids of encoder self-, decoder self- and cross-attention, chosen
    single heads, layer x token summaries. Over a split (streamed; memory does not grow with its
    size): per-head maps averaged by absolute position and by token role, layer x role summaries,
    and per layer the share of attention each role receives. PNG, SVG, the numbers (maps.npz,
    index.json) and an offline index.html with an interactive viewer, under figures/<run>/.
    SQuAD runs: the same for a question and its context, averaged over the evaluation set by role
    ([CLS], question, context, answer, [SEP], punct)."""
    from analyze.maps import render_maps

    run = _run_or_newest(run_dir)
    result = render_maps(run, Path(out_dir) if out_dir else None, split=split, limit=limit,
                         examples=list(examples) or None, equation=equation, heads=list(heads), batch_size=batch_size, bertviz=bertviz,
                         question=question, context=context)
    click.echo(f"wrote {len(result['figures'])} figures, maps.npz and index.html to {result['out_dir']} "
               f"(averages over {result['examples_averaged']} {split} examples in {result['average_seconds']} s)")


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test", show_default=True,
              help="Quadratic runs: the split to analyse (SQuAD runs use their evaluation set).")
@click.option("--limit", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Examples for the statistics, clustering, rollout, context variance and symbol shares (0: all).")
@click.option("--eval-limit", type=click.IntRange(min=1), default=300, show_default=True,
              help="Examples decoded (or answered) for head importance, symbol blocking and the accuracy of checkpoints.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Examples (SQuAD: windows) per forward pass.  [default: 64; SQuAD 8, as a window's maps are large]")
@click.option("--clusters", type=click.IntRange(min=0), default=0, show_default=True,
              help="KMeans clusters of per-example maps (0: choose 2..8 by silhouette).")
@click.option("--compare", "compare", type=click.Path(), multiple=True,
              help="Another run directory (repeatable): correlate context variance with accuracy across these runs' final "
                   "models instead of across RUN_DIR's checkpoints.")
@click.option("--no-importance", is_flag=True, help="Skip head ablation, gradient importance and symbol blocking (the slow part).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Figures directory.  [default: figures/<run name>]")
def heads(run_dir, split, limit, eval_limit, batch_size, clusters, compare, no_importance, out_dir):
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
    from analyze.heads import analyze_heads, summary_lines

    result = analyze_heads(Path(run_dir), Path(out_dir) if out_dir else None, split=split, limit=limit, eval_limit=eval_limit,
                           batch_size=batch_size, clusters=clusters, compare=[Path(p) for p in compare], skip_importance=no_importance)
    for line in summary_lines(result):
        click.echo(line)
    seconds = ", ".join(f"{k} {v} s" for k, v in result["seconds"].items())
    click.echo(f"wrote {len(result['figures'])} figures, heads.json and CSV tables to {result['out_dir']} ({seconds})")


@cli.command()
@click.argument("equation")
@click.option("--run", "run_dir", type=click.Path(), default=None, help="Run directory.  [default: the newest finished run under runs/]")
@click.option("--head", "heads", type=LAYER_HEAD, multiple=True, help="Also draw this head alone (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output directory.  [default: figures/<run name>/explain]")
def explain(equation, run_dir, heads, out_dir):
    """Solve EQUATION with a trained model and show how: the solution, the grader's verdict, for
    each layer the input token that receives the most attention (encoder self- and cross-attention),
    and the per-head figures for the equation."""
    from analyze.maps import explain as explain_equation

    result = explain_equation(_run_or_newest(run_dir), equation, Path(out_dir) if out_dir else None, list(heads))
    verdict = result["verdict"]
    click.echo(f"equation: {result['equation']}")
    click.echo(f"solution: {result['solution']}")
    click.echo("verdict:  " + ", ".join(f"{k} {verdict[k]}" for k in ("ok", "well_formed", "steps_valid", "substitutions_valid", "answer_correct")))
    for kind, label in (("encoder", "encoder self-attention"), ("cross", "cross-attention")):
        for layer, token in enumerate(result["most_attended_input_token"][kind]):
            click.echo(f"{label}, layer {layer}: most attended input token {token}")
    click.echo(f"figures: {Path(result['figures'][0]).parent}")


@cli.command()
@click.option("--run", "run_dir", type=click.Path(), required=True, help="A SQuAD run directory from `cli.py train --task squad`.")
@click.option("--question", required=True, help="The question.")
@click.option("--context", required=True, help="The passage that holds the answer.")
@click.option("--head", "heads", type=LAYER_HEAD, multiple=True, help="Also draw this head alone (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Output directory.  [default: figures/<run name>/ask]")
def ask(run_dir, question, context, heads, out_dir):
    """Answer QUESTION from CONTEXT with a SQuAD run and show how: the answer, its score, for each
    layer the question token that receives the most attention from the answer span, and the
    per-head figures."""
    from analyze.squad_maps import ask as ask_question

    result = ask_question(Path(run_dir), question, context, Path(out_dir) if out_dir else None, list(heads))
    click.echo(f"answer: {result['answer']!r} (score {result['score']:.3f})" if result["score"] is not None else "answer: (none found)")
    for layer, token in enumerate(result["most_attended_question_token"]):
        click.echo(f"layer {layer}: the answer span attends most to the question token {token}")
    click.echo(f"figures: {Path(result['figures'][0]).parent}")


def main(argv=None) -> None:
    """Entry point: click's errors and ours as one line on stderr, exit 2; no tracebacks."""
    try:
        cli.main(args=argv, prog_name="quadlab", standalone_mode=False)
    except click.exceptions.Exit as stop:
        sys.exit(stop.exit_code)
    except click.exceptions.Abort:
        click.echo("quadlab: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        prefix = f"quadlab {err.ctx.info_name}" if getattr(err, "ctx", None) else "quadlab"
        click.echo(f"{prefix}: error: {err.format_message()} (see --help)", err=True)
        sys.exit(err.exit_code)
    except QuadlabError as err:
        click.echo(f"quadlab: error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("quadlab: interrupted; no output was left half-written", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
