"""The training rows a run's model gets wrong, found in one teacher-forced pass a batch ("Polishing on
the model's own failures" in RESULTS.md).

Greedy decoding writes a row's solution exactly when, fed the solution's first k tokens, the model's
most likely next token is the solution's (k+1)-th at every k: the first position where they differ is
where the greedy output leaves the solution. So one forward pass tells which rows greedy decoding
fails, and where, without decoding them: about 5 two-root rows a second on one core of the CPU
machine, twice as fast as `cli.py eval` (2.6 rows a second). The check against decoding is `--check`: on a split
`cli.py eval` has decoded, it counts the rows where the two disagree.

    python figures/results/padded-cpu-finetune/mine_failures.py RUN DATASET OUT.json [--split train] [--start 0] [--rows N] [--batch 64] [--num-roots 0,1,2]
    python figures/results/padded-cpu-finetune/mine_failures.py RUN DATASET OUT.json --split test --check RUN/predictions.jsonl[.gz]

Only rows whose number of real roots is in `--num-roots` are read (default all).
OUT.json: {"run", "dataset", "split", "start", "stop", "num_roots", "read" (rows read), "failed": [row index in the
split, ...], "first_wrong_token": [its first wrong solution position, ...], "check" (with --check)}.
"""

import gzip
import json
import sys
from pathlib import Path

import datasets
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from gen import QuadlabError  # noqa: E402  (the repository root is put on the path above)
from train import quadratic  # noqa: E402


def first_wrong_positions(model, tokenizer, equations: list[str], solutions: list[str]) -> list[int]:
    """For each row, the first solution position whose most likely token is not the solution's; -1 if none."""
    batch = quadratic.teacher_forced_batch(tokenizer, equations, solutions)
    with torch.no_grad():
        logits = model(**batch["inputs"]).logits
    labels = batch["labels"]
    wrong = (logits.argmax(-1) != labels) & (labels != -100)
    any_wrong = wrong.any(-1)
    first = wrong.float().argmax(-1)  # the first True; 0 where none, told apart by any_wrong
    return [int(f) if w else -1 for f, w in zip(first, any_wrong)]


def _options(args: list[str]) -> tuple[list[str], dict]:
    known = {"--split": "train", "--start": "0", "--rows": "0", "--batch": "64", "--check": "", "--num-roots": "0,1,2"}
    positional, options = [], dict(known)
    it = iter(args)
    for arg in it:
        if arg.startswith("--"):
            if arg not in known:
                raise SystemExit(f"error: unknown option {arg}; the options are {', '.join(known)}")
            value = next(it, None)
            if value is None:
                raise SystemExit(f"error: {arg} needs a value")
            options[arg] = value
        else:
            positional.append(arg)
    if len(positional) != 3:
        raise SystemExit("usage: mine_failures.py RUN DATASET OUT.json [--split S] [--start I] [--rows N] [--batch B] [--num-roots 0,2] [--check PREDICTIONS]")
    return positional, options


def main(args: list[str]) -> None:
    (run_dir, dataset_dir, out), options = _options(args)
    try:
        start, rows, size = int(options["--start"]), int(options["--rows"]), int(options["--batch"])
        classes = {int(n) for n in options["--num-roots"].split(",")}
    except ValueError:
        raise SystemExit("error: --start, --rows and --batch take whole numbers, --num-roots a list such as 0,2") from None
    if options["--check"] and not Path(options["--check"]).is_file():
        raise SystemExit(f"error: {options['--check']} does not exist; give the predictions.jsonl(.gz) of `cli.py eval` on this split")
    if not (Path(dataset_dir) / "dataset_dict.json").is_file():
        raise SystemExit(f"error: {dataset_dir} is not a dataset made by `cli.py gen`; give its folder")
    if not Path(out).parent.is_dir():
        raise SystemExit(f"error: the folder of {out} does not exist; make it first")
    try:
        model, tokenizer, _ = quadratic.load_run(Path(run_dir), "mine")
    except QuadlabError as err:
        raise SystemExit(f"error: {err}") from None
    model.set_attn_implementation("sdpa")  # no maps wanted; 1.5x faster than eager on the CPU
    model.eval()
    splits = datasets.load_from_disk(dataset_dir)
    if options["--split"] not in splits:
        raise SystemExit(f"error: {dataset_dir} has no split {options['--split']}; it has {', '.join(splits)}")
    split = splits[options["--split"]]
    stop = min(len(split), start + rows) if rows else len(split)
    read = [i for i, n in zip(range(start, stop), split.select_columns(["num_roots"])[start:stop]["num_roots"]) if n in classes]
    failed, first_wrong = [], []
    for lo in range(0, len(read), size):
        indices = read[lo : lo + size]
        part = split.select(indices)[:]  # a dict of lists
        for i, pos in zip(indices, first_wrong_positions(model, tokenizer, part["equation"], part["solution"])):
            if pos >= 0:
                failed.append(i)
                first_wrong.append(pos)
        print(f"\r{lo + len(indices)}/{len(read)} rows, {len(failed)} failed", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    result = {"run": run_dir, "dataset": dataset_dir, "split": options["--split"], "start": start, "stop": stop,
              "num_roots": sorted(classes), "read": len(read),
              "failed": failed, "first_wrong_token": first_wrong}
    if options["--check"]:
        path = options["--check"]
        lines = (gzip.open(path, "rt") if path.endswith(".gz") else open(path)).read().splitlines()
        exact = [json.loads(line)["exact"] for line in lines]
        failed_set = set(failed)
        result["check"] = {"decoded_wrong": sum(not exact[i] for i in read),
                           "disagree": sum((i in failed_set) == exact[i] for i in read)}
    tmp = Path(out + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.rename(out)
    print(f"{len(failed)} of {len(read)} rows failed ({len(failed) / max(1, len(read)):.4f})"
          + (f"; decoding: {result['check']}" if "check" in result else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
