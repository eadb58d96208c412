"""What `pad_widths` trades in a compiled run: the batch widths it compiles against the padded
tokens it computes (README, "Engine"; BENCHMARKS.md, "Fewer widths to compile"). Over one epoch of
the engine's length-grouped batches of a dataset, for the ladder (engine.bucket_width) and each
given set of widths: the distinct padded batch shapes (each one a compilation, some 30 s on an
H200) and the padded tokens a batch, against the ladder's. Needs no GPU: it counts, it times nothing.

Usage: python bench/bench_pad_widths.py DATA [--batch-size 256] [--widths 448,640 ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@click.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--widths", "width_sets", multiple=True, default=("448,640", "320,448,640", "256,512,768"), show_default=True,
              help="A value of pad_widths to count (repeatable).")
def main(data, batch_size, width_sets):
    from train import engine
    from train.config import pad_width_rungs, resolve
    from train.quadratic import build_tokenizer, encode, load_splits

    engine.quiet_libraries()
    config = resolve("tiny", None, {"data": data, "batch_size": batch_size})
    splits = load_splits(config)
    columns = splits["train"].select_columns(["equation", "solution"]).to_dict()
    tokenizer = build_tokenizer(columns["equation"] + columns["solution"])
    rows = encode(tokenizer, splits["train"])
    lengths = [len(r["input_ids"]) + len(r["labels"]) for r in rows]
    batches = list(engine.LengthGroupedBatches(lengths, batch_size, config.seed))
    widest = [(max(len(rows[i]["input_ids"]) for i in b), max(len(rows[i]["labels"]) for i in b)) for b in batches]
    real = sum(lengths) / len(batches)

    def count(pad_widths: str) -> dict:
        rungs = pad_width_rungs(resolve("tiny", None, {"pad_widths": pad_widths}))
        shapes = [(engine.bucket_width(i, rungs), engine.bucket_width(label, rungs)) for i, label in widest]
        return {"pad_widths": pad_widths or "(the ladder)", "shapes": sorted(set(shapes)),
                "padded_tokens_per_batch": round(batch_size * sum(i + label for i, label in shapes) / len(shapes))}

    ladder = count("")
    print(json.dumps({"data": data, "batches": len(batches), "batch_size": batch_size, "real_tokens_per_batch": round(real)}))
    for result in (ladder, *(count(w) for w in width_sets)):
        result["vs_ladder"] = round(result["padded_tokens_per_batch"] / ladder["padded_tokens_per_batch"], 3)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
