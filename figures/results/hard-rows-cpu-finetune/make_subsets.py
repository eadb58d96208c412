"""The datasets of the hard-rows fine-tune ("Training on the long square roots" in RESULTS.md).

A row is hard when sqrt(D) has 5 digits (D >= 10^8): the 0.891 model's square root fails in 34% of
them against 1-5% below (RESULTS.md, "After D, the square root"). Made from the padded-d datasets of
"The padded formats" (`cmp/sub-padd`: the recipe's 480,000 training equations and the 1,754 test rows
of that comparison; `cmp/data-default-padd`: the default 100,000, whose test split is the same 20,000):

- `sub-hard`: train = the first 6,400 hard training rows and the first 6,400 others, in the train
  split's order (half hard, against 10.7% in the whole split); test = the 1,754 rows and the first 500
  hard test rows, in test order.
- `sub-hardall`: train = the first 12,800 hard training rows (all hard); test = sub-hard's.
- `sub-hardtest`: test = those 500 hard test rows alone (to test the earlier fine-tune on them;
  its train split is sub-hard's, from which `cli.py eval` draws its validation rows).

    python figures/results/hard-rows-cpu-finetune/make_subsets.py cmp/sub-padd cmp/data-default-padd cmp
"""

import json
import shutil
import sys
from pathlib import Path

import datasets

HARD_D = 10**8  # sqrt(D) has 5 digits
ROWS_EACH = 6400
HARD_TEST_ROWS = 500


def _hard(split) -> list[bool]:
    return [b * b - 4 * a * c >= HARD_D for a, b, c in zip(split["a"], split["b"], split["c"])]


def main(sub_padd: str, default_padd: str, out_dir: str) -> None:
    out = Path(out_dir)
    sub = datasets.load_from_disk(sub_padd)
    full_test = datasets.load_from_disk(default_padd)["test"]
    earlier_rows = json.loads((out / "sub-indices.json").read_text())  # the 1,754 test rows' indices
    hard_train = _hard(sub["train"])
    train_rows = ([i for i, h in enumerate(hard_train) if h][:ROWS_EACH]
                  + [i for i, h in enumerate(hard_train) if not h][:ROWS_EACH])
    hard_test_rows = [i for i, h in enumerate(_hard(full_test)) if h][:HARD_TEST_ROWS]
    test_rows = sorted(set(earlier_rows) | set(hard_test_rows))
    all_hard_rows = [i for i, h in enumerate(hard_train) if h][:2 * ROWS_EACH]
    for name, splits in (("sub-hard", {"train": sub["train"].select(sorted(train_rows)), "test": full_test.select(test_rows)}),
                         ("sub-hardall", {"train": sub["train"].select(all_hard_rows), "test": full_test.select(test_rows)}),
                         ("sub-hardtest", {"train": sub["train"].select(sorted(train_rows)), "test": full_test.select(hard_test_rows)})):
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        datasets.DatasetDict(splits).save_to_disk(str(target))
        for card in ("card.json", "README.md"):
            shutil.copy(Path(sub_padd) / card, target / card)
    (out / "sub-hard-indices.json").write_text(json.dumps({"test": test_rows, "hard_test": hard_test_rows}))


if __name__ == "__main__":
    main(*sys.argv[1:])
