"""Which decoder heads line up the columns of D's sum, in a run of a reversed format (steps-reversed,
reversed, magnitudes).

In `D=b^2-4*a*c=B2-(4AC)=D` (steps-reversed; `D=B2-(4AC)=D` in the long formats) written least
significant digit first, the k-th digit of D follows
from the k-th digits of the two operands just before it and a carry from column k-1. This reads
the decoder's self-attention, teacher-forced on the reference solutions, from the position that
predicts D's k-th digit (query) to the operands' digits (keys), and reports per head the mean
attention on the operand digits of column k (and on B2's alone), of column k-1, and on all
operand digits; and what a head that spread that same attention evenly over the operand digits
would put on column k.
Run from the repository root on a run's directory (its model; the weights are not committed:
the commands that train it are in RESULTS.md):

    python figures/results/format-comparison-5k/column_heads.py RUN_DIR OUT_DIR [--rows 500]

It writes OUT_DIR/column-heads.json and OUT_DIR/column-heads.png.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from analyze.attention import capture, padded  # noqa: E402  (after the path: a script)
from datasets import load_from_disk  # noqa: E402
from gen.equations import REVERSED_MARK  # noqa: E402


def operand_columns(solution: str):
    """Character indices in `solution` of D's statement: (digits of B2, of |4AC|, of |D|), each
    least significant first as written; None when D's statement is not there."""
    start = next((m.start() for m in re.finditer(r"(?<=[~;])D=", solution)), None)
    if start is None:
        return None
    end = solution.index(";", start)
    sides = solution[start:end].split("=")
    if len(sides) not in (3, 4):  # `D=B2-(4AC)=D`, or with `b^2-4*a*c` between
        return None
    third = start + len("=".join(sides[:-2])) + 1
    fourth = third + len(sides[-2]) + 1
    operands = [list(range(third + m.start(), third + m.end())) for m in re.finditer(r"[0-9]+", sides[-2])]
    value = [list(range(fourth + m.start(), fourth + m.end())) for m in re.finditer(r"[0-9]+", sides[-1])]
    if len(operands) != 2 or len(value) != 1:
        return None
    return operands[0], operands[1], value[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--rows", type=int, default=500)
    args = parser.parse_args()
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    run = Path(args.run_dir)
    tokenizer = AutoTokenizer.from_pretrained(run)
    model = T5ForConditionalGeneration.from_pretrained(run, attn_implementation="eager").eval()
    data_dir = next(line.split(": ", 1)[1] for line in (run / "config.yaml").read_text().splitlines() if line.startswith("data: "))
    test = load_from_disk(data_dir)["test"].select(range(args.rows))
    layers, heads = model.config.num_decoder_layers, model.config.num_heads
    aligned, on_b2, carry, spread, total, queries = (np.zeros((layers, heads)) for _ in range(6))
    for start in range(0, len(test), 50):
        rows = test.select(range(start, min(start + 50, len(test))))
        solutions = list(rows["solution"])  # the references, as the run was trained on them
        assert all(s.startswith(REVERSED_MARK) for s in solutions), "the run's data is not in a reversed format"
        enc = tokenizer(list(rows["equation"]), padding=True, return_tensors="pt")
        labels = [tokenizer(s)["input_ids"] for s in solutions]
        assert all(len(ids) == len(s) + 1 for ids, s in zip(labels, solutions)), "the tokenizer is not per character"
        width = max(map(len, labels))
        decoder_input = padded([[model.config.decoder_start_token_id] + ids[:-1] for ids in labels], width, tokenizer.pad_token_id)
        decoder_mask = padded([[1] * len(ids) for ids in labels], width, 0)
        with torch.no_grad():
            attention = capture(model, enc["input_ids"], enc["attention_mask"], decoder_input, decoder_mask)["decoder"][0]
        attention = attention.float().numpy()  # (layers, batch, heads, queries, keys)
        for i, solution in enumerate(solutions):
            found = operand_columns(solution)
            if found is None:
                continue
            first, second, value = found
            # the token of character j is the decoder's input at position j + 1; the position that
            # predicts character j is j
            keys = [j + 1 for j in first + second]
            for k, char in enumerate(value):
                column = [digits[k] + 1 for digits in (first, second) if k < len(digits)]
                before = [digits[k - 1] + 1 for digits in (first, second) if 0 < k <= len(digits)]
                row = attention[:, i, :, char, :]  # (layers, heads, keys)
                on_operands = row[:, :, keys].sum(-1)
                aligned += row[:, :, column].sum(-1)
                on_b2 += row[:, :, first[k] + 1] if k < len(first) else 0
                carry += row[:, :, before].sum(-1) if before else 0
                total += on_operands
                spread += on_operands * len(column) / len(keys)
                queries += 1
    result = {
        "run": str(run), "rows": len(test), "queries": int(queries[0, 0]),
        "what": "mean decoder self-attention from the position that predicts D's k-th written digit to the "
                "operand digits of column k (aligned; of B2 alone: aligned_b2), column k-1 (carry), all operand digits (operands), and "
                "the operands' attention spread evenly over their digits, on column k (even)",
        "heads": [{"layer": l, "head": h, "aligned": round(aligned[l, h] / queries[l, h], 4),
                   "aligned_b2": round(on_b2[l, h] / queries[l, h], 4),
                   "carry": round(carry[l, h] / queries[l, h], 4), "operands": round(total[l, h] / queries[l, h], 4),
                   "even": round(spread[l, h] / queries[l, h], 4)} for l in range(layers) for h in range(heads)],
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "column-heads.json").write_text(json.dumps(result, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("aligned", "aligned_b2", "carry", "operands", "even")
    grid = np.array([[h[n] for n in names] for h in result["heads"]])
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(grid) + 1.2))
    ax.imshow(grid, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for (r, c), v in np.ndenumerate(grid):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", color="white" if v > 0.6 else "black", fontsize=8)
    ax.set_xticks(range(len(names)), ["column k", "column k\nof B2", "column k-1", "all operand\ndigits", "even share\non column k"])
    ax.set_yticks(range(len(grid)), [f"layer {h['layer']} head {h['head']}" for h in result["heads"]])
    ax.set_title(f"Decoder attention from D's k-th digit ({result['queries']} digits, {len(test)} rows)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "column-heads.png", dpi=120)
    for h in result["heads"]:
        print(json.dumps(h))


if __name__ == "__main__":
    main()
