"""The training engine shared by every task: Accelerate for devices, mixed precision, gradient
accumulation and multi-GPU (`accelerate launch cli.py train ...`); our own loop for the rest.

A task hands it a model, a tokenised training set (columns the collator understands), a collator,
and an `evaluate(model) -> metrics` function. The engine owns data order, optimisation,
evaluation cadence, early stopping, the best checkpoint, exact resume, logs and the curve.

Run directory while training:
    checkpoint/          the full state at the last save (Accelerate's save_state) + trainer_state.json
    best/                the best model so far, Hugging Face format
    checkpoints/step-N/  models kept for analyses over training (keep_checkpoints > 0)
    log.jsonl            one line per optimiser step, and one per evaluation

Several processes (`accelerate launch --multi_gpu --num_processes N cli.py train ...`): each takes
a disjoint share of every step's batches and DDP averages the gradients. Everything else is done
by the main process alone while the others wait for its result (`on_main`): the run directory,
the validation decoding (exact, and every process then takes the same early-stopping decision),
every file; the end of the run (test decoding, metrics.json, predictions) is the main process's
alone, the others return from `train` at once. A checkpoint is the one collective write: each
process saves its own RNG state in it, for an exact resume under the same number of processes.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import torch

from gen import QuadlabError, swap_in
from train.config import TrainConfig, pad_width_rungs, rewarm_steps, run_name, save_yaml, validate

CHECKPOINT, BEST, KEPT, LOG, STATE = "checkpoint", "best", "checkpoints", "log.jsonl", "trainer_state.json"
STOP_AFTER_STEPS = "QUADLAB_STOP_AFTER_STEPS"  # tests of launched runs: `stop_after_steps` (Interrupted, with a checkpoint)
T = TypeVar("T")


class Interrupted(Exception):
    """Training was stopped (Ctrl-C, `stop_after_steps`, `deadline`) after saving a checkpoint, or
    it finished and the evaluation after it was left to a resumed call (`evaluate_by`: finished)."""

    def __init__(self, step: int, finished: bool = False):  # step 0: stopped before the first checkpoint
        super().__init__(f"interrupted at step {step}; continue with --resume" if step else
                         "interrupted before the first checkpoint, so there is nothing to resume; start it again with --overwrite")
        self.step, self.finished = step, finished


def bucket_width(width: int, rungs: tuple[int, ...] = ()) -> int:
    """The smallest of 32, 48, 64, 96, 128, 192, ... (2^k and 3 * 2^(k-1)) that holds `width`.
    Each width is one compilation (about 35 s on an H100), so few of them: one for the published
    format's equations, five for its solutions (up to 129 tokens), eight for the long format's (up
    to 622); above 32, less than a third of a padded row is padding. `rungs` (config pad_widths,
    each over 32, rising) replace the ladder above 32: a width over 32 goes to the smallest rung
    that holds it, and past the last rung back to the ladder. Fewer rungs, fewer compilations,
    more padding (BENCHMARKS.md, "Fewer widths to compile")."""
    if width > 32 and rungs and width <= rungs[-1]:
        return next(rung for rung in rungs if rung >= width)
    bucket = 32
    while bucket < width:
        bucket = bucket * 3 // 2 if bucket & (bucket - 1) == 0 else bucket * 4 // 3
    return bucket


def pad_to_buckets(batch: dict, pad_token_id: int, rows: int = 0, rungs: tuple[int, ...] = ()) -> dict:
    """Every 2-D tensor of `batch` widened to its bucket_width (with `rungs`) with what the model
    ignores there: -100 in labels, the pad token in token ids, 0 in masks and token types; and,
    where every tensor is 2-D (token labels, a loss averaged over the labelled tokens), lengthened to `rows`
    rows of the same (an epoch's last, short batch would otherwise compile a graph of its own at
    every width it meets). The loss and its gradient are those of the unpadded batch
    (tests/test_gpu_job.py)."""
    out = {}
    grow_rows = all(value.ndim == 2 for value in batch.values())
    for key, value in batch.items():
        if value.ndim == 2:
            fill = -100 if key == "labels" else pad_token_id if key.endswith("input_ids") else 0
            more_rows = max(0, rows - value.shape[0]) if grow_rows else 0
            width = bucket_width(value.shape[1], rungs)
            value = torch.nn.functional.pad(value, (0, width - value.shape[1], 0, more_rows), value=fill)
        out[key] = value
    return out


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of similar length, in an order fixed by (seed, epoch).

    Each epoch shuffles the rows, sorts windows of 50 batches by length, cuts them into batches and
    shuffles the batches: little padding, and still a random order. `set_epoch` picks the epoch."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window_batches: int = 50):
        self.lengths, self.batch_size, self.seed, self.window = lengths, batch_size, seed, batch_size * window_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        batches = []
        for start in range(0, len(order), self.window):
            window = sorted(order[start : start + self.window], key=lambda i: self.lengths[i])
            batches += [window[i : i + self.batch_size] for i in range(0, len(window), self.batch_size)]
        for i in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[i]


@dataclass
class TrainerState:
    step: int = 0  # optimiser steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of `epoch` already consumed
    best_metric: float | None = None
    best_step: int = -1
    start_metric: float | None = None  # a fine-tune's (init_from) starting weights, validated at step 0
    evals_without_improvement: int = 0
    elapsed: float = 0.0  # wall clock, evaluations included
    eval_seconds: float = 0.0
    tokens: int = 0
    finished: bool = False
    processes: int = 1  # the data order and the RNG states of a checkpoint belong to this many processes
    time_budget: dict = field(default_factory=dict)  # train_seconds: the run's length, once counted

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2))

    def stopped_early(self, config: TrainConfig) -> bool:
        """Whether `patience` ended the run."""
        return bool(config.patience) and self.evals_without_improvement >= config.patience

    @classmethod
    def load(cls, path: Path) -> "TrainerState":
        return cls(**json.loads(path.read_text()))


def learning_rate_schedule(config: TrainConfig, optimizer, total_steps: int):
    """Hugging Face's schedule `config.scheduler` for a run of `total_steps`; with `rewarm_after`,
    each cycle follows the schedule of a run that ends where the cycle ends."""
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import get_scheduler

    def for_run_of(steps: int, target) -> LambdaLR:
        wsd_decay = {"num_decay_steps": int(config.decay_ratio * steps), "decay_type": "linear"}
        return get_scheduler(config.scheduler, target, config.warmup_steps or int(config.warmup_ratio * steps), steps,
                             scheduler_specific_kwargs=wsd_decay if config.scheduler == "warmup_stable_decay" else None)

    restarts = rewarm_steps(config)
    if not restarts:
        return for_run_of(total_steps, optimizer)
    # each cycle's multiplier, taken from a schedule built on a stand-in, so that only one scheduler drives the optimiser
    stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    cycles = [for_run_of(end, stand_in).lr_lambdas[0] for end in [*restarts, total_steps]]
    # LambdaLR asks for the multiplier of step index i (0-based) before optimiser step i + 1
    return LambdaLR(optimizer, lambda i: cycles[bisect.bisect_right(restarts, i)](i))


def follow_schedule(scheduler, config: TrainConfig, total_steps: int | None = None) -> None:
    """The optimiser's rate for the next step from `scheduler` where it stands; with `total_steps`,
    its schedule first becomes that of a run of `total_steps` (train_seconds)."""
    if total_steps is not None:
        groups = [{"params": [torch.zeros(1, requires_grad=True)]} for _ in scheduler.optimizer.param_groups]
        scheduler.lr_lambdas = learning_rate_schedule(config, torch.optim.SGD(groups, lr=1.0), total_steps).lr_lambdas
    for group, base, multiplier in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * multiplier(scheduler.last_epoch)


def steady_step_seconds(step_seconds: Sequence[float]) -> float:
    """The mean time of the steps that compiled nothing: steps over 5 times the median (a new batch
    shape compiling) are left out. The mean, not the median: with few padded widths the median is
    the common narrow batch's time, and the wider batches' steps then overrun the budget (an H200
    run with two widths took 0.0598 s a step on average against a median of 0.0500)."""
    limit = 5 * statistics.median(step_seconds)
    return statistics.fmean(seconds for seconds in step_seconds if seconds <= limit)


def steps_in_budget(config: TrainConfig, step: int, spent: float, seconds_per_step: float, ceiling: int) -> int:
    """The run's length under `train_seconds`, decided at `step` with `spent` seconds trained: the
    steps the time left holds, at most `ceiling`, and at least one more than `step` (for
    warmup_stable_decay, so many that its decay starts no earlier: the schedule so far must be
    that of the run's length)."""
    fits = step + max(0, math.floor((config.train_seconds - spent) / max(seconds_per_step, 1e-9)))
    shortest = step + 1  # a run is longer than its warm-up (config.validate)
    while config.scheduler == "warmup_stable_decay" and shortest - int(config.decay_ratio * shortest) < step:
        shortest += 1
    return min(ceiling, max(shortest, fits))


def _atomic_dir(target: Path, write: Callable[[Path], None]) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    swap_in(tmp, target)


def process_state():
    """Accelerate's view of this process: one alone, or one of those `accelerate launch` started.

    Launched as several processes on a machine without CUDA, they train on the CPU over gloo
    (accelerate would otherwise take each for a lone process). The timeout is long because the
    other processes wait while the main one decodes the validation split."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (launched and not torch.cuda.is_available())
    return PartialState(cpu=cpu, timeout=timedelta(hours=1))


def on_main(job: Callable[[], T]) -> T:
    """`job()` on the main process alone; every process gets its result, or raises its QuadlabError.

    The others wait meanwhile, so that none reads what the main process is still writing, and a
    refusal on the main process stops them all instead of leaving them waiting for it."""
    from accelerate.utils import broadcast_object_list

    state = process_state()
    if state.num_processes == 1:
        return job()
    outcome = [None]
    if state.is_main_process:
        try:
            outcome = [(True, job())]
        except QuadlabError as err:
            outcome = [(False, str(err))]
    broadcast_object_list(outcome)
    ok, value = outcome[0]
    if not ok:
        raise QuadlabError(value)
    return value


def quiet_libraries() -> None:
    """Our progress bar and messages only: no per-file bars or notes from the libraries."""
    import logging

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def count_tokens(batch: dict) -> int:
    """Real (non-padding) tokens in a batch: inputs plus labels."""
    n = int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
    if "labels" in batch:
        n += int((batch["labels"] != -100).sum())
    return n


def train(
    model,
    train_set,
    lengths: list[int],
    collate: Callable,
    evaluate: Callable[[torch.nn.Module], dict],
    config: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    stop_after_steps: int | None = None,
    progress: bool = True,
    deadline: float | None = None,
    evaluate_by: float | None = None,
) -> dict | None:
    """Train `model` on `train_set`; returns a summary on the main process, None on the others
    (see the module's docstring). The best model ends up in `run_dir/best`. `stop_after_steps`
    and `deadline` (a time.monotonic() value: the first optimiser step that ends after it) stop
    with a checkpoint and Interrupted, for --resume to continue exactly. `evaluate_by` (the same
    kind of value): a process that trained and finished after it raises Interrupted too, with the
    finished checkpoint, so that the caller's test evaluation goes to the resumed call, which trains
    and compiles nothing; a resumed call that only finds the run finished returns as usual."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm import tqdm

    quiet_libraries()
    precision = config.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    process_state()  # before the Accelerator, which takes over its settings
    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no")
    main = accelerator.is_main_process
    set_seed(config.seed, device_specific=True)  # each process its own dropout masks; process 0 as a lone run
    if stop_after_steps is None and os.environ.get(STOP_AFTER_STEPS):
        stop_after_steps = int(os.environ[STOP_AFTER_STEPS])

    # Data order is ours, not a prepared DataLoader's: a function of (seed, epoch) alone, so that a
    # resumed run skips exactly the batches it had consumed. Each process takes every n-th batch.
    sampler = LengthGroupedBatches(lengths, config.batch_size, config.seed)
    per_process = len(sampler) // accelerator.num_processes
    if per_process == 0:
        raise QuadlabError(f"{len(lengths)} training rows make {len(sampler)} batches of {config.batch_size}, fewer than the "
                           f"{accelerator.num_processes} processes; lower --batch-size or add rows")
    steps_per_epoch = math.ceil(per_process / config.grad_accum)
    total_steps = config.max_steps or math.ceil(config.epochs * steps_per_epoch)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n.lower()]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n.lower())]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        fused=torch.cuda.is_available() or None,
    )
    scheduler = learning_rate_schedule(config, optimizer, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by us, once per optimiser step
    # Only the training forward is compiled: evaluation and checkpoints use the model itself, so
    # generate() and the saved weights (no `_orig_mod.` prefix) do not see the compiled wrapper.
    compiled = config.compile == "true" or (config.compile == "auto" and torch.cuda.is_available())
    if compiled:
        # Static shapes, one compilation per bucket width (pad_to_buckets): the long format has
        # eight widths, dynamo's default limit of recompilations.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        forward = torch.compile(model, dynamic=False, mode=config.compile_mode)
        pad_token_id = accelerator.unwrap_model(model).config.pad_token_id or 0
        rungs = pad_width_rungs(config)
    else:
        forward = model

    def fit_budget(steps: int) -> int:
        """The run becomes one of `steps` steps (train_seconds): its schedule and configuration."""
        follow_schedule(scheduler, config, steps)
        # the caller's configuration too (the job reports its steps), without the budget: it says what ran
        config.max_steps, config.train_seconds = steps, 0.0
        return steps

    state = TrainerState(processes=accelerator.num_processes)
    checkpoint_dir, log_path = run_dir / CHECKPOINT, run_dir / LOG
    if resume:
        if not (checkpoint_dir / STATE).exists():
            raise QuadlabError(f"{run_dir} has no checkpoint to resume from; start it again without --resume")
        state = TrainerState.load(checkpoint_dir / STATE)
        if state.processes != accelerator.num_processes:
            launch = "python cli.py" if state.processes == 1 else f"accelerate launch --multi_gpu --num_processes {state.processes} cli.py"
            raise QuadlabError(f"{run_dir} was trained by {state.processes} process(es), this is {accelerator.num_processes}; "
                               f"resume it with as many: {launch} train --resume --run-dir {run_dir}")
        accelerator.load_state(str(checkpoint_dir))
        if state.finished and state.step in rewarm_steps(config) and not state.stopped_early(config):
            state.finished = False  # it ended a cycle that `train --resume --max-steps` has since extended
            # the optimiser's saved rate is the one the finished schedule gave after its last step (0 for
            # most); the next step takes the extended schedule's, as it would have in one run
            follow_schedule(scheduler, config)
            if main:  # the extended schedule, recorded once the checkpoint has loaded
                save_yaml(config, run_dir / "config.yaml")
        if config.train_seconds and state.time_budget:  # the budget was counted in an earlier call: its length holds
            total_steps = fit_budget(state.time_budget["max_steps"])
        if main:
            _truncate_log(log_path, state.step)
    elif main and log_path.exists():
        log_path.unlink()
    first_step = state.step

    def save_checkpoint():
        # Collective: every process writes its RNG state into the new directory (the main process
        # the rest), and the main one swaps it in only after all have written.
        tmp = checkpoint_dir.with_name(CHECKPOINT + ".tmp")
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main:
            state.save(tmp / STATE)
            swap_in(tmp, checkpoint_dir)
        accelerator.wait_for_everyone()

    def validate() -> dict:
        model.eval()
        metrics = evaluate(accelerator.unwrap_model(model))
        model.train()
        return metrics

    def run_evaluation(candidate: bool = True):
        """Validate the model; a candidate may become the best. Not a candidate: a fine-tune's starting
        weights, the curves' first point, which the run's model is not chosen from (its trained weights are)."""
        eval_start = time.perf_counter()
        metrics = on_main(validate)
        state.eval_seconds += time.perf_counter() - eval_start
        value = metrics[config.metric_for_best]
        if not candidate:
            state.start_metric = value
            if main:
                _log(log_path, {"step": state.step, "eval": metrics, "best": False})
                tqdm.write(f"train: the weights of init_from score validation {config.metric_for_best} {value:.4f} at step 0")
            return metrics
        improved = state.best_metric is None or value >= state.best_metric  # ties: the later, more trained model
        if improved:
            state.evals_without_improvement = 0 if state.best_metric is None or value > state.best_metric else state.evals_without_improvement + 1
            state.best_metric, state.best_step = value, state.step
        else:
            state.evals_without_improvement += 1
        if main:
            if improved:
                _atomic_dir(run_dir / BEST, lambda tmp: accelerator.unwrap_model(model).save_pretrained(tmp))
            if config.keep_checkpoints:
                accelerator.unwrap_model(model).save_pretrained(run_dir / KEPT / f"step-{state.step}")
            _log(log_path, {"step": state.step, "eval": metrics, "best": improved})
        return metrics

    bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step", disable=None if progress and main else True, dynamic_ncols=True)
    last_eval = {}
    step_tokens = 0  # this process's tokens since the last optimiser step
    model.train()
    started = time.perf_counter() - state.elapsed
    step_seconds = collections.deque(maxlen=100)  # the last steps' durations, for train_seconds
    if config.init_from and not resume:  # in the wall clock and in eval_seconds, as every validation
        last_eval = run_evaluation(candidate=False)
    last_step_end = time.perf_counter()
    stop = state.finished or state.step >= total_steps
    try:
        while not stop:
            sampler.set_epoch(state.epoch)
            batches = list(sampler)
            if accelerator.num_processes > 1:  # the same number on every process, or DDP waits forever
                batches = batches[: len(batches) - len(batches) % accelerator.num_processes]
            mine = batches[accelerator.process_index :: accelerator.num_processes]

            def collated(index: int) -> tuple[dict, int]:
                """Batch `index` of this epoch on the CPU, and its real tokens (counted on the CPU
                copy: counting on the GPU would wait for it)."""
                batch = collate([train_set[i] for i in mine[index]])
                tokens = count_tokens(batch)
                return (pad_to_buckets(batch, pad_token_id, config.batch_size, rungs) if compiled else batch), tokens

            following = None  # the next batch, collated while the GPU runs this one
            while state.batches_in_epoch < len(mine):
                batch, tokens = following or collated(state.batches_in_epoch)
                following = None
                step_tokens += tokens
                if compiled:
                    torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs: the last step's outputs may be overwritten
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                state.batches_in_epoch += 1
                sync = state.batches_in_epoch % config.grad_accum == 0 or state.batches_in_epoch == len(mine)
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    loss = forward(**batch).loss
                    accelerator.backward(loss / config.grad_accum)
                grad_norm = None
                if sync:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                if state.batches_in_epoch < len(mine):  # the step's kernels are queued: collate before waiting for its loss
                    following = collated(state.batches_in_epoch)
                if not sync:
                    continue
                step_loss = loss.item()
                late = deadline is not None and time.monotonic() >= deadline
                if accelerator.num_processes > 1:  # the log speaks for all processes, not the main one's share; all stop together
                    totals = accelerator.reduce(torch.tensor([step_loss, step_tokens, late], dtype=torch.float64, device=accelerator.device), "sum")
                    step_loss, step_tokens, late = totals[0].item() / accelerator.num_processes, int(totals[1].item()), totals[2].item() > 0
                state.tokens += step_tokens
                step_tokens = 0
                state.step += 1
                now = time.perf_counter()
                state.elapsed = now - started
                step_seconds.append(now - last_step_end)
                last_step_end = now
                record = {
                    "step": state.step, "epoch": state.epoch, "loss": round(step_loss, 6),
                    "lr": scheduler.get_last_lr()[0], "grad_norm": None if grad_norm is None else round(float(grad_norm), 6),
                    "tokens": state.tokens, "elapsed": round(state.elapsed, 3),
                }
                if main:
                    _log(log_path, record)
                if config.train_seconds and state.step >= config.warmup_steps:
                    measured = [state.elapsed - state.eval_seconds, steady_step_seconds(step_seconds)]
                    if accelerator.num_processes > 1:  # every process must settle on the same length
                        measured = accelerator.reduce(torch.tensor(measured, dtype=torch.float64, device=accelerator.device), "mean").tolist()
                    budget = config.train_seconds
                    total_steps = fit_budget(steps_in_budget(config, state.step, *measured, total_steps))
                    state.time_budget = {"train_seconds": budget, "at_step": state.step, "spent_seconds": round(measured[0], 3),
                                         "seconds_per_step": round(measured[1], 6), "max_steps": total_steps}
                    bar.total = total_steps
                    if main:
                        save_yaml(config, run_dir / "config.yaml")
                        tqdm.write(f"train: {total_steps} steps fit train_seconds={budget:g} at {measured[1]:.4g} s a step "
                                   f"(mean of the last {len(step_seconds)}, compiling steps left out); config.yaml records max_steps: {total_steps}")
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", **({"val": f"{last_eval[config.metric_for_best]:.3f}"} if last_eval else {}))
                if state.step % config.eval_every == 0 or state.step >= total_steps:
                    last_eval = run_evaluation()
                    if state.stopped_early(config):
                        stop = True
                if state.step >= total_steps:
                    stop = True
                if stop or state.step % config.eval_every == 0:
                    state.finished = stop
                    save_checkpoint()
                if stop:
                    break
                if late or (stop_after_steps is not None and state.step >= stop_after_steps):
                    raise Interrupted(state.step)
            else:
                state.epoch += 1
                state.batches_in_epoch = 0
    except KeyboardInterrupt:
        # Ctrl-C can land in the middle of an optimiser step, so nothing is saved here: --resume
        # continues exactly from the last checkpoint. Nor is anything awaited: under `accelerate
        # launch` every process gets the Ctrl-C, and the launcher ends any that has not stopped.
        bar.close()
        raise Interrupted(TrainerState.load(checkpoint_dir / STATE).step if (checkpoint_dir / STATE).exists() else 0) from None
    except Interrupted:
        save_checkpoint()  # every process stops at the same step, so all of them take part
        bar.close()
        accelerator.end_training()
        raise
    bar.close()
    if evaluate_by is not None and state.step > first_step:
        late = time.monotonic() > evaluate_by
        if accelerator.num_processes > 1:  # all return, or all stop
            late = accelerator.reduce(torch.tensor([late], dtype=torch.float64, device=accelerator.device), "sum").item() > 0
        if late:
            accelerator.end_training()
            raise Interrupted(state.step, finished=True)  # its checkpoint was saved at the last step
    if on_main(lambda: not (run_dir / BEST).exists()):  # a resumed run that had already finished, or no evaluation yet
        run_evaluation()
    # The processes are done with each other: a process group left for the interpreter's exit can
    # abort it (gloo's worker threads, SIGABRT), which a loaded CPU made happen in a test
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if not main:
        return None
    training = state.elapsed - state.eval_seconds
    return {
        "steps": state.step, "epochs_started": state.epoch + 1, "best_step": state.best_step,
        "best_validation": state.best_metric, **({"start_validation": state.start_metric} if state.start_metric is not None else {}),
        "wall_seconds": round(state.elapsed, 2), "eval_seconds": round(state.eval_seconds, 2),
        "train_seconds": round(training, 2), "train_tokens": state.tokens,
        "train_tokens_per_second": round(state.tokens / training, 1) if training > 0 else None,
        "precision": precision, "compiled": compiled, "devices": accelerator.num_processes, "device": str(accelerator.device),
        **({"time_budget": state.time_budget} if state.time_budget else {}),
    }


def code_version(root: Path = Path(__file__).resolve().parent.parent) -> dict:
    """Which code made a run: a hash of the lab's Python sources, which names it anywhere (the GPU
    machine's copy of the tree has no .git), and where the code is a git checkout of its own, its
    commit and whether tracked files differed from it (not those of a repository that merely holds
    an installed copy, as a project's .venv/lib/.../site-packages)."""
    import hashlib
    import subprocess

    digest = hashlib.sha256()
    for path in sorted([root / "cli.py", *(p for folder in ("gen", "train", "analyze") for p in (root / folder).rglob("*.py"))]):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    version = {"sources_sha256": digest.hexdigest()}
    try:
        git = [subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
               for args in (["rev-parse", "--show-toplevel", "HEAD"], ["status", "--porcelain", "--untracked-files=no"])]
    except (OSError, subprocess.SubprocessError):  # no git, or a hung one
        return version
    if all(done.returncode == 0 for done in git) and Path(git[0].stdout.splitlines()[0]).resolve() == root.resolve():
        version.update(commit=git[0].stdout.splitlines()[-1].strip(), uncommitted_changes=bool(git[1].stdout.strip()))
    return version


def environment() -> dict:
    import platform

    import accelerate
    import datasets
    import sympy
    import transformers

    device = f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    elif hasattr(torch, "accelerator") and torch.accelerator.is_available():  # Apple's mps, Intel's xpu: accelerate trains there
        device = f"{torch.accelerator.current_accelerator().type} (beside a {device})"
    return {
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "transformers": transformers.__version__, "accelerate": accelerate.__version__, "datasets": datasets.__version__,
        "sympy": sympy.__version__, "device": device, "command": sys.argv, "code": code_version(),
    }


def output_dir(path: Path) -> Path:
    """A directory that results are written into (an evaluation's --out), made if missing."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)


def extend(config: TrainConfig, run_dir: Path, max_steps: int) -> TrainConfig:
    """The configuration for `train --resume --max-steps N`: the same if N is the run's max_steps;
    for a run that trained all its steps, N steps with the schedule restarting where it ended."""
    if max_steps == config.max_steps:
        return config
    state = TrainerState.load(run_dir / CHECKPOINT / STATE)
    if config.max_steps <= 0:
        raise QuadlabError(f"{run_dir} trains for epochs, not steps; --max-steps cannot extend it")
    if not state.finished:
        raise QuadlabError(f"{run_dir} stopped at step {state.step} of {config.max_steps}; finish it with --resume "
                           f"alone, then extend it with --resume --max-steps {max_steps}")
    if state.stopped_early(config) or state.step != config.max_steps:
        raise QuadlabError(f"{run_dir} was stopped by patience at step {state.step} of {config.max_steps}; "
                           f"only a run that trained all its steps can be extended")
    if max_steps < config.max_steps:
        raise QuadlabError(f"--max-steps {max_steps} is fewer than the {config.max_steps} steps {run_dir} has trained; "
                           f"give more to extend it")
    restarts = ",".join(str(step) for step in [*rewarm_steps(config), config.max_steps])
    return validate(replace(config, max_steps=max_steps, rewarm_after=restarts))


_TRAINING: dict[str, object] = {}  # the lock files of the run directories this process trains, open, by path


def hold_run_dir(run_dir: Path) -> None:
    """Refuse a run directory that another process trains: a second `train --resume` of it would
    write its checkpoints and log lines among the first's, and --overwrite would delete them under
    it. An exclusive lock on `.NAME.lock` beside the directory (inside, --overwrite would delete it
    too), held until the task's train_run ends (releasing_run_dir) or the process does, however it
    ends; nothing where the file system or the OS has no flock."""
    try:
        import fcntl
    except ImportError:  # Windows
        return
    resolved = run_dir.resolve()
    path = resolved.parent / f".{resolved.name}.lock"
    if str(path) in _TRAINING:  # held by this process already
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
    except OSError:  # a folder this user cannot write: what follows says so in its own words
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise QuadlabError(f"{run_dir} is being trained by another process{f' (pid {holder})' if holder.isdigit() else ''}; "
                           f"wait for it to end or stop it, or give another --run-dir") from None
    except OSError:  # no locks on this file system (some network mounts): train unguarded
        handle.close()
        return
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _TRAINING[str(path)] = handle


def releasing_run_dir(train_run: Callable[..., T]) -> Callable[..., T]:
    """A task's train_run, which lets go of the run directory it held (hold_run_dir) when it returns
    or raises: the same process, or another, may then train it on."""
    import functools

    @functools.wraps(train_run)
    def wrapper(*args, **kwargs):
        held = set(_TRAINING)
        try:
            return train_run(*args, **kwargs)
        finally:
            for path in set(_TRAINING) - held:
                _TRAINING.pop(path).close()

    return wrapper


def prepare_run_dir(config: TrainConfig, resume: bool, overwrite: bool) -> Path:
    """The run directory, held against other processes (hold_run_dir): checked for --resume; new
    (or emptied with --overwrite) otherwise, with config.yaml and environment.json written."""
    run_dir = config.resolved_run_dir()
    if not resume:
        config.run_dir = str(run_dir)

    def prepare() -> None:
        filled = not resume and run_dir.exists() and any(run_dir.iterdir())
        if resume and not (run_dir / "config.yaml").exists():
            raise QuadlabError(f"{run_dir} is not a run directory to resume (no config.yaml)")
        if filled and not overwrite:
            raise QuadlabError(f"{run_dir} exists; pass --resume to continue it or --overwrite to start again")
        hold_run_dir(run_dir)  # after the refusals: a refused command leaves no lock file behind
        if resume:
            return
        if filled:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(config, run_dir / "config.yaml")
        write_json(run_dir / "environment.json", environment())

    on_main(prepare)
    return run_dir


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in lines))


def read_log(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(step records, evaluation records) of a run; its log.jsonl, or log.jsonl.gz as figures/results/ keeps it."""
    import gzip

    steps, evals = [], []
    path = Path(run_dir) / LOG
    packed = path.with_name(LOG + ".gz")
    text = path.read_text() if path.exists() else gzip.decompress(packed.read_bytes()).decode() if packed.exists() else ""
    for line in text.splitlines():
        record = json.loads(line)
        (evals if "eval" in record else steps).append(record)
    return steps, evals


def plot_curve(run_dir: Path, metric: str) -> Path:
    """Training loss and the validation metric against the step, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, evals = read_log(run_dir)
    fig, loss_ax = plt.subplots(figsize=(7, 4))
    loss_ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="tab:blue", lw=0.8, label="training loss")
    loss_ax.set_xlabel("optimiser step")
    loss_ax.set_ylabel("training loss", color="tab:blue")
    loss_ax.set_yscale("log")
    if evals:
        metric_ax = loss_ax.twinx()
        metric_ax.plot([r["step"] for r in evals], [r["eval"][metric] for r in evals], "o-", color="tab:red", label=metric)
        metric_ax.set_ylabel(f"validation {metric.replace('_', ' ')}", color="tab:red")
        metric_ax.set_ylim(0, 1.02)
    loss_ax.set_title(f"{run_name(run_dir)}: training curve")
    fig.tight_layout()
    out = Path(run_dir) / "training_curve.png"
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out)
    return out
