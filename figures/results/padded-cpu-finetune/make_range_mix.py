"""The dataset of a polish on two ranges ("Outside the training ranges" in RESULTS.md): train =
ROWS training rows of SOURCE and ROWS of OTHER (a dataset of the same format over other ranges),
drawn at random (seeded), leaving out OTHER's rows whose equation is in the test split of any
--exclude dataset; test = SOURCE's first 1,000 test rows (the polish's own check reads 10 of them).

    python figures/results/padded-cpu-finetune/make_range_mix.py SOURCE OTHER OUT --rows N [--exclude DATASET ...]
"""

import json
import random
import shutil
import sys
from pathlib import Path

import datasets

SEED = 0
TEST_ROWS = 1000
USAGE = "usage: make_range_mix.py SOURCE OTHER OUT --rows N [--exclude DATASET ...]"


def dataset(path: str):
    if not (Path(path) / "dataset_dict.json").is_file():
        raise SystemExit(f"error: {path} is not a dataset made by `cli.py gen`; give its folder")
    return datasets.load_from_disk(path)


def main(args: list[str]) -> None:
    places, rows, excluded = [], None, []
    while args:
        arg = args.pop(0)
        if arg in ("--rows", "--exclude") and not args:
            raise SystemExit(f"error: {arg} needs a value; {USAGE}")
        if arg == "--rows":
            value = args.pop(0)
            if not value.isdigit() or int(value) == 0:
                raise SystemExit(f"error: --rows takes a positive whole number, not {value!r}")
            rows = int(value)
        elif arg == "--exclude":
            excluded.append(args.pop(0))
        elif arg.startswith("-"):
            raise SystemExit(f"error: unknown option {arg}; {USAGE}")
        else:
            places.append(arg)
    if len(places) != 3 or rows is None:
        raise SystemExit(USAGE)
    source_path, other_path, out = places
    source, other = dataset(source_path), dataset(other_path)
    if source["train"].features != other["train"].features:
        raise SystemExit(f"error: {source_path} and {other_path} have different columns; make both with the same --format")
    unseen = set().union(*(dataset(path)["test"]["equation"] for path in excluded))
    allowed = [i for i, equation in enumerate(other["train"]["equation"]) if equation not in unseen]
    for name, pool in ((source_path, range(len(source["train"]))), (other_path, allowed)):
        if len(pool) < rows:
            raise SystemExit(f"error: {name} has {len(pool)} training rows to draw from, fewer than --rows {rows}")
    rng = random.Random(SEED)
    train = datasets.concatenate_datasets([source["train"].select(sorted(rng.sample(range(len(source["train"])), rows))),
                                           other["train"].select(sorted(rng.sample(allowed, rows)))])
    target = Path(out)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    datasets.DatasetDict({"train": train, "test": source["test"].select(range(min(TEST_ROWS, len(source["test"]))))}).save_to_disk(str(tmp))
    for card in ("card.json", "README.md"):
        if (Path(source_path) / card).exists():
            shutil.copy(Path(source_path) / card, tmp / card)
    (tmp / "mix.json").write_text(json.dumps({"source": source_path, "other": other_path, "rows_each": rows, "excluded": excluded,
                                              "left_out_of_other": len(other["train"]) - len(allowed), "seed": SEED}))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    print(f"wrote {target}: {rows} rows of {source_path} and {rows} of {other_path} "
          f"({len(other['train']) - len(allowed)} of its rows left out as test equations of {', '.join(excluded) or 'none'})")


if __name__ == "__main__":
    main(sys.argv[1:])
