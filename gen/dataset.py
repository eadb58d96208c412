"""`cli.py gen`: sample distinct equations, write and verify their solutions, split, save.

The output is a `datasets.DatasetDict` saved with `save_to_disk` plus a card (`card.json`,
`README.md`). It is the same, byte for byte, for the same options and seed whatever the number of
worker processes: all randomness is drawn in the parent process, and workers only write and verify
rows, in order.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from gen import QuadlabError, swap_in
from gen.equations import CLASSES, FORMATS, NUM_ROOTS, Ranges, capacity, sample_coefficients, write_equation, write_solution
from gen.grader import MAX_SOLUTION_CHARS, grade, parse_equation

MAX_ABS_VALUE = 10**6  # bound on |a| and |root|, so every number stays far inside the grader's limits
CARD_JSON, CARD_MD = "card.json", "README.md"
CHUNK_ROWS = 2000


class GenerationBug(RuntimeError):
    """A written row failed verification: the generator is wrong, not the user."""


@dataclass(frozen=True)
class GenOptions:
    rows: int = 100_000
    seed: int = 0
    mix: tuple = (0.5, 0.3, 0.2)  # shares of two, one and no real roots
    test_fraction: float = 0.2
    ranges: Ranges = field(default_factory=Ranges)
    format: str = "published"
    # more training equations, drawn apart from the split so that the test split stays that of `rows`
    extra_train_rows: int = 0
    extra_mix: tuple | None = None  # their shares of two, one and no real roots; None: `mix`

    def class_counts(self) -> dict[str, int]:
        """Rows per class: the mix rounded by largest remainder, so the counts sum to `rows`."""
        return _counts_by_mix(self.rows, self.mix)

    @property
    def extra_shares(self) -> tuple:
        return self.extra_mix or self.mix

    def extra_class_counts(self) -> dict[str, int]:
        return _counts_by_mix(self.extra_train_rows, self.extra_shares)

    def test_counts(self) -> dict[str, int]:
        """Test rows per class: every class is split test_fraction / rest (stratified)."""
        return {cls: round(n * self.test_fraction) for cls, n in self.class_counts().items()}

    def _both_splits(self) -> bool:
        tested = sum(self.test_counts().values())
        return 0 < tested and (tested < self.rows or self.extra_train_rows > 0)

    def validate(self) -> None:
        if self.rows <= 0:
            raise QuadlabError(f"--rows must be a positive number of equations, not {self.rows}")
        if self.extra_train_rows < 0:
            raise QuadlabError(f"--extra-train-rows must be 0 or a positive number of equations, not {self.extra_train_rows}")
        for option, mix in (("--mix", self.mix), ("--extra-mix", self.extra_shares)):
            if len(mix) != 3 or any(not 0 <= share <= 1 for share in mix) or abs(sum(mix) - 1) > 1e-9:  # `not`: nan too
                shown = ",".join(f"{share:g}" for share in mix)
                raise QuadlabError(f"{option} {shown}: give three non-negative shares (two,one,none roots) that sum to 1, e.g. 0.5,0.3,0.2")
        if not 0 < self.test_fraction < 1:
            raise QuadlabError(f"--test-fraction must lie strictly between 0 and 1, not {self.test_fraction}")
        if not self._both_splits():
            empty = "test" if not sum(self.test_counts().values()) else "training"
            enough = next((n for n in range(self.rows + 1, self.rows + 100_000) if replace(self, rows=n)._both_splits()), None)
            raise QuadlabError(f"--rows {self.rows} with --test-fraction {self.test_fraction:g} leaves the {empty} split empty; "
                               + (f"give --rows {enough} or more" if enough else "give more rows or another --test-fraction"))
        if self.format not in FORMATS:
            raise QuadlabError(f"--format must be one of {', '.join(FORMATS)}")
        r = self.ranges
        if not r.leading:
            raise QuadlabError(f"--a-range {r.a_lo}:{r.a_hi} holds no non-zero leading coefficient; widen it")
        if r.root_lo > r.root_hi:
            raise QuadlabError(f"--root-range {r.root_lo}:{r.root_hi} is empty: write LO:HI with LO <= HI")
        if max(abs(r.a_lo), abs(r.a_hi), abs(r.root_lo), abs(r.root_hi)) > MAX_ABS_VALUE:
            raise QuadlabError(f"ranges are limited to +-{MAX_ABS_VALUE}; narrow --a-range or --root-range")
        room = capacity(r)
        extra = self.extra_class_counts()
        for cls, count in self.class_counts().items():
            if count + extra[cls] > room[cls]:
                raise QuadlabError(
                    f"the ranges hold only {room[cls]} distinct equations with {NUM_ROOTS[cls]} real root(s) but "
                    f"{count + extra[cls]} are asked for; widen --a-range/--root-range, lower --rows"
                    + (" or --extra-train-rows, or give that class a smaller share in --extra-mix" if extra[cls] else "")
                )

    def as_dict(self) -> dict:
        return {**asdict(self), "mix": dict(zip(CLASSES, self.mix)),
                "extra_mix": dict(zip(CLASSES, self.extra_shares))}

    @classmethod
    def from_dict(cls, values: dict) -> GenOptions:
        """The options that `as_dict` wrote (a card's `options`); KeyError, TypeError, ValueError,
        AttributeError or QuadlabError where it is not such a dict."""
        default = cls()
        mix = tuple(float(values["mix"][name]) for name in CLASSES)
        extra = values.get("extra_mix")
        extra_mix = tuple(float(extra[name]) for name in CLASSES) if extra else None
        options = cls(rows=int(values["rows"]), seed=int(values["seed"]), mix=mix, test_fraction=float(values["test_fraction"]),
                      ranges=Ranges(**{k: int(v) for k, v in values["ranges"].items()}), format=str(values["format"]),
                      extra_train_rows=int(values.get("extra_train_rows", default.extra_train_rows)),
                      extra_mix=None if extra_mix == mix else extra_mix)
        options.validate()
        return options

    def command(self, out) -> str:
        """The `cli.py gen` command that writes these options' rows to `out`: what a run whose
        dataset is gone tells its user to type. Options at their defaults are left out."""
        import shlex

        default, r = GenOptions(), self.ranges
        shares = lambda mix: ",".join(repr(float(share)) for share in mix)  # noqa: E731 - repr: the float read back exactly
        parts = ["python cli.py gen", "--out", shlex.quote(str(out))]
        if self.format != default.format:
            parts += ["--format", self.format]
        parts += [f"--{name.replace('_', '-')} {value}" for name, value in (("rows", self.rows), ("seed", self.seed))
                  if value != getattr(default, name)]
        if self.mix != default.mix:
            parts += ["--mix", shares(self.mix)]
        if self.test_fraction != default.test_fraction:
            parts += ["--test-fraction", repr(float(self.test_fraction))]
        if (r.a_lo, r.a_hi) != (default.ranges.a_lo, default.ranges.a_hi):
            parts.append(f"--a-range={r.a_lo}:{r.a_hi}")  # `=`: a range may start with a minus sign
        if (r.root_lo, r.root_hi) != (default.ranges.root_lo, default.ranges.root_hi):
            parts.append(f"--root-range={r.root_lo}:{r.root_hi}")
        if self.extra_train_rows:
            parts += ["--extra-train-rows", str(self.extra_train_rows)]
            if self.extra_mix and self.extra_mix != self.mix:
                parts += ["--extra-mix", shares(self.extra_mix)]
        return " ".join(parts)


def _counts_by_mix(rows: int, mix: tuple) -> dict[str, int]:
    """`rows` shared by `mix` and rounded by largest remainder, so that the counts sum to `rows`."""
    exact = [share * rows for share in mix]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(CLASSES)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: rows - sum(counts)]:
        counts[i] += 1
    return dict(zip(CLASSES, counts))


def _extra_training_rows(options: GenOptions, sampled: dict[str, list]) -> list[tuple]:
    """`options.extra_train_rows` equations none of which is in `sampled` (the split's rows), from
    a random stream of their own: the split's rows are then the same with or without them."""
    rng = random.Random(f"extra-train-rows-{options.seed}")
    counts = options.extra_class_counts()
    # drawn with as many again as the split holds, so that at least `count` of them are new
    drawn = sample_coefficients(options.ranges, {cls: len(sampled[cls]) + n if n else 0 for cls, n in counts.items()}, rng)
    rows = []
    for cls, n in counts.items():
        taken = set(sampled[cls])
        rows += [(a, b, c, cls) for a, b, c in [abc for abc in drawn[cls] if abc not in taken][:n]]
    rng.shuffle(rows)
    return rows


def _quiet_worker() -> None:
    """Ctrl-C reaches every process of the terminal's group; workers ignore it, so that only the
    parent stops (one message, no traceback per worker) and its `with` terminates them, with a
    SIGTERM that must end them as by default (not as the handler they inherit from cli.main)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _write_and_verify(job: tuple) -> list[tuple[str, str]]:
    """Write each row and verify it from the written strings alone, with the sympy grader."""
    rows, fmt = job
    out = []
    for a, b, c, cls in rows:
        equation, solution = write_equation(a, b, c), write_solution(a, b, c, fmt)
        if len(solution) > MAX_SOLUTION_CHARS:  # the long format with wide ranges: the grader would refuse the row
            raise QuadlabError(f"--format {fmt} writes {len(solution)} characters for {equation}, more than the grader reads "
                               f"({MAX_SOLUTION_CHARS}); narrow --a-range/--root-range or choose a shorter --format")
        parsed = parse_equation(equation)
        verdict = grade(*parsed, solution)
        if parsed != (a, b, c) or not verdict.ok or verdict.num_roots != NUM_ROOTS[cls]:
            raise GenerationBug(f"row failed verification: {equation} -> {solution}: {verdict.as_dict()}")
        out.append((equation, solution))
    return out


def build_splits(options: GenOptions, workers: int = 1, progress: bool = False) -> dict[str, dict[str, list]]:
    """The columns of each split, every row verified."""
    from tqdm import tqdm

    options.validate()
    rng = random.Random(options.seed)
    sampled = sample_coefficients(options.ranges, options.class_counts(), rng)
    splits = {"train": [], "test": []}
    test_counts = options.test_counts()
    for cls in CLASSES:
        rows = [(a, b, c, cls) for a, b, c in sampled[cls]]
        n_test = test_counts[cls]
        splits["train"] += rows[: len(rows) - n_test]
        splits["test"] += rows[len(rows) - n_test :]
    for rows in splits.values():
        rng.shuffle(rows)
    if options.extra_train_rows:  # after the split's rows, which stay where they were
        splits["train"] += _extra_training_rows(options, sampled)

    order = [(name, i) for name in splits for i in range(0, len(splits[name]), CHUNK_ROWS)]
    jobs = [(splits[name][i : i + CHUNK_ROWS], options.format) for name, i in order]
    written = {name: [] for name in splits}
    # `with`: Ctrl-C closes the bar too, so that the interruption message starts a line of its own
    with tqdm(total=options.rows + options.extra_train_rows, desc="write+verify", unit="row", disable=None if progress else True, file=sys.stderr) as bar:
        if workers > 1 and len(jobs) > 1:
            context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
            with context.Pool(min(workers, len(jobs)), initializer=_quiet_worker) as pool:
                results = pool.imap(_write_and_verify, jobs)
                for (name, _), result in zip(order, results):
                    written[name] += result
                    bar.update(len(result))
        else:
            for (name, _), job in zip(order, jobs):
                written[name] += _write_and_verify(job)
                bar.update(len(job[0]))

    out = {}
    for name, rows in splits.items():
        a, b, c, cls = zip(*rows)
        equation, solution = zip(*written[name])
        out[name] = {
            "equation": list(equation), "solution": list(solution), "a": list(a), "b": list(b), "c": list(c),
            "num_roots": [NUM_ROOTS[k] for k in cls],
        }
    return out


def _stats(v) -> dict:
    import numpy as np

    q = np.percentile(v, [5, 50, 95])
    return {
        "min": int(v.min()), "p5": float(q[0]), "median": float(q[1]), "mean": round(float(v.mean()), 3),
        "p95": float(q[2]), "max": int(v.max()),
    }


def dataset_card(splits: dict[str, dict[str, list]], options: GenOptions) -> dict:
    import datasets
    import numpy as np
    import sympy

    card = {
        "name": "quadlab quadratic equations",
        "format": options.format,
        "seed": options.seed,
        "options": options.as_dict(),
        "counts": {},
        "coefficients": {},
        "lengths": {},
        "versions": {"python": sys.version.split()[0], "sympy": sympy.__version__, "datasets": datasets.__version__},
    }
    for name, cols in splits.items():
        num_roots = np.asarray(cols["num_roots"])
        counts = {cls: int((num_roots == NUM_ROOTS[cls]).sum()) for cls in CLASSES}
        card["counts"][name] = {**counts, "total": len(num_roots)}
        card["coefficients"][name] = {k: _stats(np.asarray(cols[k], dtype=np.float64)) for k in ("a", "b", "c")}
        card["lengths"][name] = {
            k: _stats(np.fromiter(map(len, cols[k]), dtype=np.float64, count=len(cols[k]))) for k in ("equation", "solution")
        }
    return card


def card_markdown(card: dict) -> str:
    r = card["options"]["ranges"]
    lines = [
        f"# {card['name']}",
        "",
        f"Generated by `python cli.py gen` (seed {card['seed']}, solution format `{card['format']}`).",
        f"Leading coefficient a in [{r['a_lo']}, {r['a_hi']}] without 0; integer roots in [{r['root_lo']}, {r['root_hi']}];",
        "equations without real roots are a(x^2 - s x + p) with s^2 < 4p over the same ranges.",
        *([f"The train split holds {card['options']['extra_train_rows']} extra equations (`--extra-train-rows`), none of them "
           f"in the {card['options']['rows']} split into train and test."] if card["options"].get("extra_train_rows") else []),
        "Every row was verified by the sympy grader before it was written. Load with",
        "`datasets.load_from_disk(path)`.",
        "",
        "| split | two roots | one root | no real root | total |",
        "|---|---|---|---|---|",
    ]
    for name, c in card["counts"].items():
        lines.append(f"| {name} | {c['two']} | {c['one']} | {c['none']} | {c['total']} |")
    lines += ["", "| split | column | min | median | mean | p95 | max |", "|---|---|---|---|---|---|---|"]
    for group in ("coefficients", "lengths"):
        for name, cols in card[group].items():
            for col, s in cols.items():
                label = col if group == "coefficients" else f"len({col})"
                lines.append(f"| {name} | {label} | {s['min']} | {s['median']:g} | {s['mean']:g} | {s['p95']:g} | {s['max']} |")
    lines += ["", "Options:", "", "```json", json.dumps(card["options"], indent=2), "```", ""]
    return "\n".join(lines)


def save(splits: dict[str, dict[str, list]], options: GenOptions, out_dir: Path, overwrite: bool = False) -> dict:
    """Save atomically: build in a hidden sibling directory, then rename into place."""
    import datasets

    out_dir = Path(out_dir)
    features = datasets.Features(
        {
            "equation": datasets.Value("string"),
            "solution": datasets.Value("string"),
            "a": datasets.Value("int64"),
            "b": datasets.Value("int64"),
            "c": datasets.Value("int64"),
            "num_roots": datasets.ClassLabel(names=["none", "one", "two"]),  # label = number of real roots
        }
    )
    card = dataset_card(splits, options)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dd = datasets.DatasetDict(
            {
                name: datasets.Dataset.from_dict(cols, features=features, split=name)
                for name, cols in splits.items()
            }
        )
        datasets.disable_progress_bars()
        dd.save_to_disk(str(tmp))
        (tmp / CARD_JSON).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        (tmp / CARD_MD).write_text(card_markdown(card))
        if out_dir.exists() and not overwrite:
            raise QuadlabError(f"{out_dir} exists; pass --overwrite to replace it")
        swap_in(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return card


def generate(options: GenOptions, out_dir: Path, overwrite: bool = False, workers: int = 1, progress: bool = False) -> dict:
    """Build, verify and save the dataset; returns its card."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise QuadlabError(f"{out_dir} exists; pass --overwrite to replace it")
    splits = build_splits(options, workers=workers, progress=progress)
    return save(splits, options, out_dir, overwrite=overwrite)
