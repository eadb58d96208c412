"""The datasets of the fine-tune comparison ("The padded formats" in RESULTS.md): the recipe's
500,000 equations in a format (made by `cli.py gen`) with the test split cut to the first 1,000
test rows and every test row with 0 < |D| < 10^5 (1,754 rows, the same in every format).

    python figures/results/padded-cpu-finetune/make_subsets.py cmp rev=cmp/data-default-extra400k-rev \
        pad=cmp/data-default-extra400k-pad padd=cmp/data-default-extra400k-padd
"""

import json
import shutil
import sys
from pathlib import Path

import datasets


def main(out_dir: str, *named_dirs: str) -> None:
    out = Path(out_dir)
    for named in named_dirs:
        name, source = named.split("=", 1)
        data = datasets.load_from_disk(source)
        test = data["test"]
        rows = [i for i, (a, b, c) in enumerate(zip(test["a"], test["b"], test["c"])) if i < 1000 or 0 < abs(b * b - 4 * a * c) < 10**5]
        target = out / f"sub-{name}"
        if target.exists():
            shutil.rmtree(target)
        datasets.DatasetDict({"train": data["train"], "test": test.select(rows)}).save_to_disk(str(target))
        for card in ("card.json", "README.md"):
            shutil.copy(Path(source) / card, target / card)
    (out / "sub-indices.json").write_text(json.dumps(rows))


if __name__ == "__main__":
    main(*sys.argv[1:])
