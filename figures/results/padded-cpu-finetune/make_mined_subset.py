"""The dataset of a polish on the model's own failures ("Polishing on the model's own failures" in
RESULTS.md): train = the training rows that `mine_failures.py` found failed, and as many other
training rows drawn at random (seeded), in the train split's order, so half the rows are failures
(as `sub-hard` is half hard rows), or the failed rows alone (`--failed-only`); test = the source's first 1,000 test rows (the polish's own
check reads 10 of them).

    python figures/results/padded-cpu-finetune/make_mined_subset.py [--failed-only] SOURCE_DATASET OUT MINED.json [MINED.json ...]
"""

import gzip
import json
import random
import shutil
import sys
from pathlib import Path

import datasets

SEED = 0
TEST_ROWS = 1000


def main(args: list[str]) -> None:
    failed_only = "--failed-only" in args
    args = [a for a in args if a != "--failed-only"]
    if len(args) < 3 or any(a.startswith("-") for a in args):
        raise SystemExit("usage: make_mined_subset.py [--failed-only] SOURCE_DATASET OUT MINED.json [MINED.json ...]")
    source, out, *mined_files = args
    if not (Path(source) / "dataset_dict.json").is_file():
        raise SystemExit(f"error: {source} is not a dataset made by `cli.py gen`; give its folder")
    failed = set()
    for path in mined_files:
        try:
            mined = json.loads(gzip.decompress(Path(path).read_bytes()) if path.endswith(".gz") else Path(path).read_text())
            mined["split"], mined["failed"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SystemExit(f"error: {path} is not an output of mine_failures.py ({type(err).__name__}: {err})") from None
        if mined["split"] != "train":
            raise SystemExit(f"error: {path} mined the {mined['split']} split; a polish trains on train rows")
        failed |= set(mined["failed"])
    data = datasets.load_from_disk(source)
    others = [] if failed_only else random.Random(SEED).sample([i for i in range(len(data["train"])) if i not in failed], len(failed))
    rows = sorted(failed | set(others))
    target = Path(out)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    datasets.DatasetDict({"train": data["train"].select(rows),
                          "test": data["test"].select(range(min(TEST_ROWS, len(data["test"]))))}).save_to_disk(str(tmp))
    for card in ("card.json", "README.md"):
        if (Path(source) / card).exists():
            shutil.copy(Path(source) / card, tmp / card)
    (tmp / "mined.json").write_text(json.dumps({"source": source, "mined": list(mined_files), "failed": len(failed),
                                                "others": len(others), "seed": SEED}))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    print(f"wrote {target}: {len(failed)} failed rows and {len(others)} others")


if __name__ == "__main__":
    main(sys.argv[1:])
