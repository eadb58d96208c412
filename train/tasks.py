"""The tasks and what each provides: the one place that maps a `--task` name, or a run directory's
`task:` key, to the module that implements it. The engine (train/engine.py) and the analyses
(analyze/) know no task by name; they ask the task.

Adding a task: write its module in train/ with the interface below, add its line to `TASKS`, and
add it to the parametrised task tests (tests/test_tasks.py).

A task module provides, for the engine and `cli.py train` / `cli.py eval`:

    train_run(config, resume=False, overwrite=False, stop_after_steps=None, progress=True, deadline=None, evaluate_by=None)
        -> metrics (None on the non-main processes of a multi-process run); the last three go to engine.train
    evaluate_run(run_dir, split="test", limit=0, batch_size=None, num_beams=0, progress=True, out_dir=None, data=None,
                 beams_below=None) -> metrics
    metric_lines(run_dir, metrics, split) -> the lines `train` and `eval` print
    reads_data(config) -> whether a run's rows come from the dataset of `cli.py gen` in config.data,
                          which --data replaces for `eval` and the analyses (runs.open_run)

and, for the analyses (`maps`, `heads`, `explain`, `ask`, `probe`, `patch`), a class `Analysis(run_dir, command,
split="test", limit=0, eval_limit=0, data=None)` that opens a finished run (model with eager attention,
tokenizer, config) and its first `limit` rows (0: all) to analyse and `eval_limit` rows to score;
with split=None it opens no rows and needs none of the run's data (`explain`, `ask`, `serve`
read only given inputs). `data`, in both: a dataset directory of `cli.py gen` to read instead of the
run's `data:` (runs.open_run; refused for a task that does not read one):

    name, model, tokenizer, config, split, n_rows, n_eval_rows
    kinds           attention kinds of the model: ("encoder",) or ("encoder", "decoder", "cross")
    sides           {kind: (query side, key side)}; a side is "encoder" or "decoder"
    roles           {side: role names}: every token of a side gets one (analyze/attention.py averages by them)
    symbols         the roles of the special-symbol test (attention they receive, blocking them)
    control_roles   the roles the blocking control draws as many tokens from; control_name says what they are
    metrics         metric names, shares in [0, 1]; the first is the main one
    class_name      what `batches` calls each example's class (the make-up of map clusters)
    inputs          the fields of one example a user gives (`maps`, `explain`): e.g. ("equation",)
    averaged_on     how the split's maps are made, in words (the report says it)
    batch_size      examples per forward pass in `heads` by default
    attended        [(label, kind, query roles or None, key roles or None)]: per layer, `explain` names
                    the key token that the queries of those roles attend to most (None: all)

    batches(batch_size)    yields captured batches (below) over the analysed rows, sorted by length
    example(index=None, given=None) -> {"name", "input", "output", "batch", "answer"}: row `index`
                           of the split, or the fields `given`, with the model's own output and a
                           one-row captured batch of it; "answer" holds what `explain` reports
    answer_lines(result)   the lines `explain` prints for a result of analyze.maps.explain
    query_masks(batch)     {kind: (B, Q) bool}, the queries that count (context variance)
    gradient_batches(batch_size), row_losses(model, batch) -> (B,)   gradient importance
    evaluate(model, gates=None, blocked=None) -> {metric: share} on the eval rows; gates as in
                           analyze.interventions.gated; blocked = ({kind: [layers]}, choose), where
                           choose(roles of one encoder sequence) -> positions whose keys are blocked
    ablate(model, specs, batch_rows, progress) -> [metrics for each spec]; a spec is (kind, layer,
                           head) to ablate, or None for none
    load_model(path)       another model of the run (a checkpoint), with eager attention
    patch_pairs(n, seed, side)  optional (`cli.py patch`): n clean/corrupted input pairs, tokens aligned, and the targets to
                           score; side "encoder" (two inputs) or "decoder" (two teacher-forced decoder inputs);
                           the dict names its "side", the "patchable" positions and the "role_names" of its "roles"
    probe_targets() -> {name: one label per analysed row, or {encoder role: label} for a token-level target (`cli.py probe`)}
    statement_names()      seq2seq tasks (`cli.py probe`): per analysed row, a name for each decoder segment, the same
                           name for the same step in every row

A captured batch is a dict:
    "inputs"    the model's keyword arguments (tensors), as analyze.attention.capture takes them
    "labels"    (seq2seq tasks) what each decoder position predicts
    "roles"     {side: (B, T) role indices into roles[side], -1 for padding}
    "segments"  {side: (B, T) segment indices, -1 for padding} (the block pattern of head statistics)
    "classes"   one class name per example
    "rows"      the index of each example's row among the analysed rows (SQuAD: several windows may share one)
    "tokens"    {side: the tokens of each example, unpadded}
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Registration:
    module: str  # the module that implements the task
    title: str  # how messages name its runs
    train_command: str  # how to make a run of it
    run_files: tuple[str, ...]  # what a finished run holds besides config.yaml
    model_class: str  # the transformers Auto class its models load with


TASKS = {
    "quadratic": Registration("train.quadratic", "quadratic", "python cli.py gen && python cli.py train",
                              ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"), "AutoModelForSeq2SeqLM"),
    "squad": Registration("train.squad", "SQuAD", "python cli.py train --task squad --model M --train-file F",
                          ("config.json", "model.safetensors", "tokenizer.json"), "AutoModelForQuestionAnswering"),
    "classify": Registration("train.classify", "classification", "python cli.py train --task classify",
                             ("config.json", "model.safetensors", "tokenizer.json"), "AutoModelForSequenceClassification"),
}


def module(name: str):
    """The module of task `name` (a registered name: configs are validated against TASKS)."""
    return importlib.import_module(TASKS[name].module)


def model_class(name: str):
    import transformers

    return getattr(transformers, TASKS[name].model_class)
