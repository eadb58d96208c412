"""The datasets of the square-root fine-tune ("The square root's remainders" in RESULTS.md): the
recipe's 500,000 equations in a format (made by `cli.py gen`) with the test split cut to the
2,165 rows of the hard-rows comparison (`cmp/sub-hard-indices.json`: the first 1,000 test rows,
every test row with 0 < |D| < 10^5, and the first 500 whose sqrt(D) has 5 digits); with `NAME:hard`,
to the 500 alone (for a run already tested on the other rows).

    python figures/results/root-cpu-finetune/make_subsets.py cmp pdp:hard=cmp/data-default-extra400k-pdp \
        root=cmp/data-default-extra400k-padded-root rfirst=cmp/data-default-extra400k-root-r-first
"""

import json
import shutil
import sys
from pathlib import Path

import datasets


def main(out_dir: str, *named_dirs: str) -> None:
    out = Path(out_dir)
    indices = json.loads((out / "sub-hard-indices.json").read_text())
    for named in named_dirs:
        name, source = named.split("=", 1)
        name, _, only_hard = name.partition(":")
        data = datasets.load_from_disk(source)
        target = out / (f"sub-{name}-hardtest" if only_hard else f"sub-{name}")
        if target.exists():
            shutil.rmtree(target)
        test = data["test"].select(indices["hard_test"] if only_hard else indices["test"])
        datasets.DatasetDict({"train": data["train"], "test": test}).save_to_disk(str(target))
        for card in ("card.json", "README.md"):
            shutil.copy(Path(source) / card, target / card)


if __name__ == "__main__":
    main(*sys.argv[1:])
