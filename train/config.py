"""Training configuration: named presets, then an optional YAML file, then command-line overrides.

The resolved configuration is one flat dataclass, saved as `config.yaml` in the run directory, so
that a run is reproduced by `cli.py train --config RUN_DIR/config.yaml`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

from gen import QuadlabError, ascii_float, ascii_int
from train.tasks import TASKS


COMPILE_MODES = ("reduce-overhead", "default", "max-autotune", "max-autotune-no-cudagraphs")
SCHEDULERS = ("linear", "cosine", "constant_with_warmup", "warmup_stable_decay")


@dataclass
class TrainConfig:
    task: str = "quadratic"
    preset: str = "tiny"
    data: str = "data/quadratic"
    run_dir: str = ""  # default: runs/<task>-<preset>-seed<seed>
    seed: int = 0
    # quadratic: a trained model's directory (a run, or a GPU job's unpacked run/ with its weights) whose
    # weights, tokenizer and architecture the run starts from, with a fresh optimiser and schedule;
    # "": random weights. Its architecture replaces the keys below in config.yaml.
    init_from: str = ""
    # T5 model (quadratic task)
    d_model: int = 64
    d_ff: int = 256
    d_kv: int = 16
    num_layers: int = 2
    num_decoder_layers: int = 2
    num_heads: int = 4
    dropout_rate: float = 0.0
    feed_forward_proj: str = "relu"
    # Per direction, T5 gives half of its buckets to exact distances (all of them in the causal
    # decoder). 128 buckets tell apart every encoder distance up to 31 (inputs are at most 24
    # characters by default) and every decoder distance up to 63; further ones fall into
    # log-spaced buckets up to max_distance. The default of 32 merges encoder distances above 8.
    relative_attention_num_buckets: int = 128
    relative_attention_max_distance: int = 256
    # optimisation
    batch_size: int = 64
    grad_accum: int = 1
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    warmup_steps: int = 0  # > 0: the warm-up in steps, in place of warmup_ratio (as in Hugging Face's Trainer)
    scheduler: str = "linear"  # linear | cosine | constant_with_warmup | warmup_stable_decay
    # warmup_stable_decay only: the last fraction of the steps, over which the rate falls linearly
    # to 0 (constant before). A late-learned step keeps a high rate (RESULTS.md, "Learning-rate schedules").
    decay_ratio: float = 0.2
    max_steps: int = 1000  # 0: train for `epochs` instead
    # Re-warm: comma-separated steps ("15000") at which the schedule restarts. Until each, the rate is
    # that of a run ending there; after the last, that of a run of max_steps. `train --resume
    # --max-steps N` on a finished run appends its end here, so that config.yaml reproduces the
    # continued run in one command (RESULTS.md, "19,000 steps, re-warmed").
    rewarm_after: str = ""
    # A training-time budget in seconds (evaluations not counted; 0: none). At the end of the warm-up
    # (warmup_steps, which it needs) max_steps becomes the steps that fit, at the mean time of the
    # last 100 steps that compiled nothing (engine.steady_step_seconds), max_steps staying the
    # ceiling; config.yaml then records that max_steps and no budget, so that it repeats the run
    # step for step. The schedule up to there depends on the warm-up alone, so it is the one a run
    # of the final max_steps follows.
    train_seconds: float = 0.0
    epochs: float = 1.0
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto (bf16 on a GPU, fp32 on CPU) | bf16 | fp32
    # torch.compile of the training forward and backward: auto = on a GPU only (on CPU compiling
    # takes minutes). Compiled, every batch is padded to one of a few widths (engine.bucket_width)
    # and each width is compiled once with static shapes: dynamic shapes recompiled at every new
    # width and ran 3x slower than eager on an H100 (BENCHMARKS.md, "Training on an H100").
    compile: str = "auto"  # auto | true | false
    compile_mode: str = "reduce-overhead"  # torch.compile's mode: reduce-overhead (CUDA graphs) | default | max-autotune
    # Compiled only: comma-separated widths over 32 ("448,640") that replace engine.bucket_width's
    # ladder above 32, so that a long format compiles fewer widths (each costs some 30 s in every
    # process, also each resumed one) at the price of more padding; "": the ladder
    pad_widths: str = ""
    # evaluation, early stopping, checkpoints
    eval_every: int = 250
    val_size: int = 500  # rows carved from train for validation; 0 validates on the training rows
    eval_batch_size: int = 1024
    patience: int = 5  # evaluations without improvement before stopping; 0 never stops
    metric_for_best: str = "full_solution_accuracy"
    eval_limit: int = 0  # test rows evaluated at the end; 0 = all
    num_beams: int = 0  # > 1: also decode with beam search and rerank the beams with the grader
    keep_checkpoints: int = 0  # > 0: also keep the model every `eval_every` steps in checkpoints/ (for analyses over training)
    # SQuAD task (the prior study's keys: model_name, epochs, learning_rate, batch_size, max_length,
    # stride, padding, patience, best_model_path)
    model_name: str = "microsoft/deberta-v3-base"  # a hub name or a local directory
    train_file: str = ""  # SQuAD v1.1/v2.0 JSON; empty: datasets.load_dataset(hub_dataset) (online)
    hub_dataset: str = "squad"  # squad or squad_v2, when no train_file is given (classify: NAME or NAME/CONFIG, e.g. glue/sst2)
    eval_file: str = ""  # empty with a train_file: the last eval_articles articles of train_file evaluate
    eval_articles: int = 10
    max_length: int = 384
    stride: int = 128
    padding: str = "do_not_pad"  # or max_length
    n_best: int = 20
    max_answer_length: int = 30
    null_threshold: float = 0.0  # SQuAD v2.0: answer "" when [CLS] beats the best span by more
    best_model_path: str = ""  # also copy the best model here
    # classify task: an encoder built from the keys above (d_model, num_layers, num_heads, d_ff,
    # dropout_rate, max_length) unless model_name names one; data from train_file / eval_file (CSV
    # or JSONL), hub_dataset, or else the quadratic dataset in `data` (equation -> number of real roots)
    encoder: str = "bert"  # bert | deberta-v2, when built from the config
    text_column: str = "text"
    text_pair_column: str = "text_pair"  # used where the data has it
    label_column: str = "label"  # strings or integers, kept as the model config's id2label
    eval_fraction: float = 0.2  # share of train_file held out as the test split when no eval_file is given

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or f"runs/{self.task}-{self.preset}-seed{self.seed}")


def run_name(run_dir: Path) -> str:
    """A run's name: its directory's name or, for a directory named `run` (the layout of `gpu-job`
    and figures/results/: NAME/run), NAME, so that two such runs are told apart."""
    path = Path(run_dir).resolve()
    return path.parent.name if path.name == "run" else path.name


PRESETS: dict[str, dict] = {
    # sequence classification; by default a 2-layer BERT of the tiny sizes from scratch on the
    # quadratic dataset (CPU, minutes). 3e-3 collapses it to the majority class; 3e-4 learns slowly
    "classify": {
        "task": "classify", "model_name": "", "hub_dataset": "", "metric_for_best": "accuracy", "learning_rate": 1e-3,
        "max_steps": 3000, "eval_every": 250, "patience": 5, "eval_batch_size": 512, "max_length": 256,
    },
    # SQuAD fine-tuning of a pretrained encoder, with the prior study's settings
    "squad": {
        "task": "squad", "learning_rate": 3e-5, "epochs": 2.0, "max_steps": 0, "batch_size": 16, "warmup_ratio": 0.1,
        "weight_decay": 0.01, "eval_every": 500, "patience": 3, "metric_for_best": "f1", "eval_batch_size": 64,
    },
    # trains to visible progress on a laptop CPU in a few minutes
    "tiny": {},
    # GPU presets: the same data, wider and deeper, more steps
    "small": {
        "d_model": 256, "d_ff": 1024, "d_kv": 32, "num_layers": 4, "num_decoder_layers": 4, "num_heads": 8,
        "batch_size": 256, "learning_rate": 1e-3, "max_steps": 20_000, "eval_every": 1000, "patience": 8,
        "eval_batch_size": 2048,
    },
    "base": {
        "d_model": 512, "d_ff": 2048, "d_kv": 64, "num_layers": 6, "num_decoder_layers": 6, "num_heads": 8,
        "batch_size": 256, "learning_rate": 5e-4, "max_steps": 40_000, "eval_every": 2000, "patience": 8,
        "eval_batch_size": 2048,
    },
}


def _coerce(name: str, value, current):
    """`value` as the type of the key's default. Text (--set, or quoted in YAML) is read by gen's
    ASCII number helpers: int() and float() alone also read `١`, ` 1 `, `1_000`, `nan`, `inf`."""
    kind = type(current)
    try:
        if not isinstance(value, (str, int, float)):  # YAML null, lists, mappings, dates
            raise TypeError
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if isinstance(value, bool):
            if kind is str:  # YAML's true/false (compile: true) as written, not "True"
                return "true" if value else "false"
            raise TypeError  # YAML true/false is no number, although int(True) == 1
        if kind is int:
            if isinstance(value, float) and not value.is_integer():  # int() would drop the fraction
                raise ValueError
            return ascii_int(value) if isinstance(value, str) else int(value)
        if kind is float:
            number = ascii_float(value) if isinstance(value, str) else float(value)
            if not math.isfinite(number):  # YAML's .nan and .inf
                raise ValueError
            return number
        return kind(value)
    except (TypeError, ValueError, OverflowError):
        what = {int: "a whole number (written with the digits 0-9)", float: "a number (written with the digits 0-9)",
                bool: "true or false", str: "text"}.get(kind, f"a {kind.__name__}")
        raise QuadlabError(f"config key {name!r} takes {what}, not {value!r}") from None


def resolve(preset: str = "tiny", yaml_path: str | None = None, overrides: dict | None = None, base: TrainConfig | None = None) -> TrainConfig:
    """Preset, then YAML, then overrides; every key checked against TrainConfig."""
    import yaml

    config = base or TrainConfig()
    layers = []
    from_yaml = {}
    if yaml_path:
        try:
            from_yaml = yaml.safe_load(Path(yaml_path).read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise QuadlabError(f"config file {yaml_path} does not exist") from None
        except (OSError, UnicodeDecodeError) as err:  # a directory, no permission, not text
            raise QuadlabError(f"config file {yaml_path} cannot be read as text ({type(err).__name__}); give a YAML file of KEY: VALUE lines") from None
        except yaml.YAMLError as err:
            raise QuadlabError(f"config file {yaml_path} is not valid YAML: {(str(err).splitlines() or [''])[0]}") from None
        if from_yaml is None:  # an empty file is a mistake, not a wish for the defaults
            raise QuadlabError(f"config file {yaml_path} is empty; write KEY: VALUE lines (e.g. the config.yaml of a run), or drop --config")
        if not isinstance(from_yaml, dict):
            raise QuadlabError(f"config file {yaml_path} must hold a mapping of keys to values, e.g. `max_steps: 500`")
        # a recipe (train/recipes/) also holds the options of `cli.py gen` that make its data, which
        # `cli.py gpu-job` reads; training takes its data from --data
        from_yaml = {k: v for k, v in from_yaml.items() if k != "gen"}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    task = overrides.get("task") or from_yaml.get("task")
    preset = overrides.get("preset") or from_yaml.get("preset") or (task if task in ("squad", "classify") and preset == "tiny" else preset)
    if not isinstance(preset, str) or preset not in PRESETS:
        raise QuadlabError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    layers = [("preset " + preset, {**PRESETS[preset], "preset": preset}), (f"{yaml_path}", from_yaml), ("command line", overrides)]
    values = dataclasses.asdict(config)
    for source, layer in layers:
        for key, value in layer.items():
            if key not in values:
                raise QuadlabError(f"unknown config key {key!r} in {source}; known keys: {', '.join(TrainConfig.names())}")
            values[key] = _coerce(key, value, values[key])
    return validate(TrainConfig(**values))


def rewarm_steps(config: TrainConfig) -> list[int]:
    """The steps of `rewarm_after`, checked: rising, each above 0 and below max_steps."""
    if not config.rewarm_after.strip():
        return []
    try:
        if len(config.rewarm_after) > 1000:  # a hundred restarts at most: a typo, not a schedule
            raise ValueError
        steps = [ascii_int(part.strip()) for part in config.rewarm_after.split(",")]
    except ValueError:
        raise QuadlabError(f"bad configuration: rewarm_after takes step numbers separated by commas, e.g. 15000 or "
                           f"10000,15000, not {config.rewarm_after!r}") from None
    if config.max_steps <= 0:
        raise QuadlabError("bad configuration: rewarm_after needs max_steps > 0 (a schedule in epochs has no steps to restart at)")
    if any(b <= a for a, b in zip([0, *steps], [*steps, config.max_steps])):
        raise QuadlabError(f"bad configuration: rewarm_after must rise from above 0 to below max_steps ({config.max_steps}), "
                           f"not {config.rewarm_after!r}")
    return steps


def pad_width_rungs(config: TrainConfig) -> tuple[int, ...]:
    """The widths of `pad_widths`, checked: rising from over 32 to at most 16384."""
    if not config.pad_widths.strip():
        return ()
    try:
        if len(config.pad_widths) > 200:  # a few widths are the point; more is a typo
            raise ValueError
        rungs = tuple(ascii_int(part.strip()) for part in config.pad_widths.split(","))
    except ValueError:
        raise QuadlabError(f"bad configuration: pad_widths takes widths separated by commas, e.g. 448,640, "
                           f"not {config.pad_widths!r}") from None
    if any(b <= a for a, b in zip((32, *rungs), rungs)) or rungs[-1] > 16384:  # wider would pad batches out of memory
        raise QuadlabError(f"bad configuration: pad_widths must rise from above 32 to at most 16384, e.g. 448,640, "
                           f"not {config.pad_widths!r}")
    return rungs


def validate(config: TrainConfig) -> TrainConfig:
    rewarm_steps(config)
    pad_width_rungs(config)
    checks = [
        (config.task in TASKS, f"task must be one of {', '.join(TASKS)}"),
        (config.batch_size > 0 and config.grad_accum > 0, "batch_size and grad_accum must be positive"),
        (config.learning_rate > 0, "learning_rate must be positive"),
        (config.max_steps >= 0 and config.epochs >= 0, "max_steps and epochs must not be negative (max_steps 0: train for epochs)"),
        (config.max_steps > 0 or config.epochs > 0, "give max_steps > 0 or epochs > 0"),
        (0 <= config.seed < 2**32, "seed must be a whole number from 0 to 4294967295 (numpy's seeds)"),
        (0 <= config.warmup_ratio < 1, "warmup_ratio must lie in [0, 1)"),
        (config.warmup_steps >= 0 and (config.max_steps <= 0 or config.warmup_steps < config.max_steps),
         "warmup_steps must lie in [0, max_steps)"),
        (config.scheduler in SCHEDULERS, f"scheduler must be one of {', '.join(SCHEDULERS)}"),
        (config.scheduler != "warmup_stable_decay" or 0 < config.decay_ratio <= 1 - config.warmup_ratio,
         "decay_ratio must lie in (0, 1 - warmup_ratio]"),
        (config.scheduler != "warmup_stable_decay" or not config.warmup_steps or config.max_steps <= 0
         or config.max_steps - int(config.decay_ratio * config.max_steps) >= config.warmup_steps,
         "warmup_steps and the decay (decay_ratio of max_steps) must fit in max_steps"),
        (0 <= config.train_seconds < math.inf, "train_seconds must be a number of seconds, 0 for no budget"),
        (not config.train_seconds or config.warmup_steps > 0,
         "train_seconds needs warmup_steps > 0: the steps that fit the budget are counted at the end of the warm-up"),
        (not (config.train_seconds and config.rewarm_after.strip()),
         "train_seconds and rewarm_after do not go together: extend a finished run with train --resume --max-steps"),
        (not config.init_from or config.task == "quadratic",
         f"init_from is for --task quadratic; {config.task} starts from --model"),
        (config.precision in ("auto", "bf16", "fp32"), "precision must be auto, bf16 or fp32"),
        (config.compile in ("auto", "true", "false"), "compile must be auto, true or false"),
        (config.compile_mode in COMPILE_MODES, f"compile_mode must be one of {', '.join(COMPILE_MODES)}"),
        (config.eval_every > 0, "eval_every must be positive"),
        (config.val_size >= 0, "val_size must not be negative"),
        (min(config.d_model, config.d_kv, config.d_ff, config.num_heads, config.num_layers, config.num_decoder_layers) > 0,
         "model sizes (d_model, d_kv, d_ff, num_heads, num_layers, num_decoder_layers) must be positive"),
        (0 <= config.dropout_rate < 1, "dropout_rate must lie in [0, 1)"),
        (config.weight_decay >= 0, "weight_decay must not be negative"),
        (config.eval_batch_size > 0, "eval_batch_size must be positive"),
        (config.num_beams >= 0, "num_beams must not be negative (0: greedy decoding only)"),
        (config.patience >= 0 and config.eval_limit >= 0, "patience and eval_limit must not be negative"),
        (config.padding in ("do_not_pad", "max_length", "longest"), "padding must be do_not_pad, longest or max_length"),
        (config.task != "squad" or 0 <= config.stride < config.max_length, "stride must be at least 0 and below max_length"),
        (config.task != "squad" or config.hub_dataset in ("squad", "squad_v2"), "hub_dataset must be squad or squad_v2"),
        (config.encoder in ("bert", "deberta-v2"), "encoder must be bert or deberta-v2"),
        (0 < config.eval_fraction < 1, "eval_fraction must lie in (0, 1)"),
    ]
    for ok, message in checks:
        if not ok:
            raise QuadlabError(f"bad configuration: {message}")
    return config


def save_yaml(config: TrainConfig, path: Path) -> None:
    """Written whole or not at all (it may replace the config.yaml of a run being extended)."""
    import yaml

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    os.replace(tmp, path)


def load_yaml(path: Path) -> TrainConfig:
    """The configuration saved in a run directory."""
    return resolve(yaml_path=str(path))
