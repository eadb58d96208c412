"""Does a statement's value come from the written work or from the equation? A conflict test.

For a kind of statement (D, sqrt(D), the first root's formula, the first final answer, the first
of each kind of one-digit step of the long formats, 2*a and 4*a), take two
test rows E and E' whose reference values V and V' of that statement differ. Run the model on
the equation E with the decoder teacher-forced on E''s reference solution up to the statement's
last `=` (the work of another equation), and read what greedy decoding writes next:

    work      V', the value that the written work implies
    equation  V, the value of the equation in the encoder
    other     anything else

Greedy decoding writes a value c iff, teacher-forced on prefix + c + `;`, the argmax at each of
those positions is that token; so both candidates are checked in one forward pass each, without
decoding. Control: the same prefix with its own equation E' (no conflict): the share of pairs
where the model writes V' then. The mean log-probability margin log P(V') - log P(V) (each value
with its `;`) says how firmly one source wins. A model that reads its scratchpad writes V'; one
that solves from the encoder and only formats the work writes V. The long formats' `4*a=`
is the positive control: it comes first, no written work holds its value, so a model that is
right on it in the control has to write the equation's.

In the formats that write D twice, padded to its operands' width and then plain, for the square
root to read (`D=X-Y=P=Q`: padded-d-plain, padded-root), a three-way conflict asks which D the
square root's first step `d*d=` reads. The model gets the equation E and the work of E' up to its
padded D P', then the plain D Q'' of a third equation E'' (as long as Q', whose first step
differs from E''s and E's):

    plain     the first step of E'', from the plain D written last
    padded    the first step of E', from the padded D and the work that computed it
    equation  the first step of E

With the equation E' (only the plain value in conflict), and the control: E' with its own work.

Run from the repository root on a run's directory (its model; weights are not committed: the
commands that train it are in RESULTS.md):

    python figures/results/format-comparison-5k/work_or_equation.py RUN_DIR OUT_DIR [--pairs 300]

It writes OUT_DIR/work-or-equation.json and prints a table.
"""

import argparse
import random
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from gen import QuadlabError  # noqa: E402  (after the path: a script)
from train.engine import write_json  # noqa: E402

KINDS = {  # the first statement of each kind in a solution (published, steps, long and reversed formats)
    "D": r"D=.*",
    "sqrt(D)": r"sqrt\(D\)=.*",
    "first root's formula": r"x=.*/.*",
    "first answer": r"x=-?[0-9]+",
    # the long formats' one-digit steps (README, "--format reversed"), numbers as written
    "first partial product": r"[0-9]+\*[0-9]=[0-9]+",
    "first running sum": r"[0-9]+\+[0-9]+=[0-9]+",
    "first square-root trial": r"\([0-9]+\*[0-9]+\+[0-9]\)\*[0-9]=[0-9]+",
    "first square-root remainder": r"[0-9]+-[0-9]+=-?[0-9]+",
    "first long-division step": r"[0-9]+-[0-9]+\*[0-9]=[0-9]+",
    "2*a": r"2\*a=.*",  # the long formats: half of the 4*a written first, or from the equation
    # the positive control: the long formats' first statement, whose value no written work holds
    "4*a (only in the equation)": r"4\*a=.*",
}


def statement_value(solution: str, kind: str) -> tuple[str, str] | None:
    """(prefix up to and including the statement's last `=`, the value after it) of the first
    statement of `kind` in `solution`; None when it has none."""
    start = 0
    for statement in solution.split(";"):
        body = statement.lstrip("~")  # the reversed formats' mark before the first statement
        if "=" in body and re.fullmatch(KINDS[kind], body):
            cut = start + statement.rindex("=") + 1
            return solution[:cut], statement[statement.rindex("=") + 1:]
        start += len(statement) + 1
    return None


D_TWICE = r"D=[^=]*=[^=]*=[^=]*"  # D=X-Y=P=Q: D padded to its operands' width, then plain
FIRST_ROOT_STEP = r"[0-9]\*[0-9]=[0-9]+"  # d*d=v: the digit-by-digit square root's first step


def d_written_twice(solution: str) -> tuple[str, str, str] | None:
    """(prefix up to and including the `=` before D's plain value, the plain value, the
    statement after D) of a solution that writes D padded, then plain, and then starts a square
    root with `d*d=`; None for any other (no real root, D = 0, a format that writes D once)."""
    statements = solution.split(";")
    start = 0
    for k, statement in enumerate(statements[:-1]):
        if re.fullmatch(D_TWICE, statement.lstrip("~")):
            if not re.fullmatch(FIRST_ROOT_STEP, statements[k + 1]):
                return None
            return solution[: start + statement.rindex("=") + 1], statement[statement.rindex("=") + 1 :], statements[k + 1]
        start += len(statement) + 1
    return None


def make_triples(equations: list[str], solutions: list[str], n: int, seed: int) -> list[dict]:
    """Up to n triples for the three-way conflict: in a seeded random order, row k's equation (E)
    gets row k+1's work up to its padded D (E') and the plain D of the next row after it (E'')
    that is as long as E''s plain D and whose square root starts otherwise than E''s and E's."""
    found = [(e, *v) for e, s in zip(equations, solutions) if (v := d_written_twice(s))]
    random.Random(seed).shuffle(found)
    triples = []
    for k in range(len(found) - 1):
        (equation, _, _, step), (padded_of, prefix, plain, padded_step) = found[k], found[k + 1]
        if step == padded_step:
            continue
        other = next((row for row in found[k + 2 :] if len(row[2]) == len(plain) and row[3] not in (step, padded_step)), None)
        if other is None:
            continue
        triples.append({"equation": equation, "padded_of": padded_of, "plain_of": other[0], "prefix": prefix, "own_plain": plain,
                        "plain": other[2], "steps": {"equation": step, "padded": padded_step, "plain": other[3]}})
        if len(triples) == n:
            break
    return triples


def which_d_test(model, tokenizer, triples: list[dict]) -> dict:
    """Counts of plain / padded / equation / other: which D the square root's first step follows,
    with the equation E (three sources), with E' (only the plain value in conflict), and the
    control (E' and its own work)."""
    prefixes = [t["prefix"] + t["plain"] + ";" for t in triples]
    n = len(triples)
    result = {"triples": n}
    for name, encoder, sources in (("three sources", "equation", ("plain", "padded", "equation")),
                                   ("plain value alone", "padded_of", ("plain", "padded"))):
        equations = [t[encoder] for t in triples]
        counts = {source: int(score(model, tokenizer, equations, prefixes, [t["steps"][source] + ";" for t in triples])[0].sum())
                  for source in sources}
        result[name] = {**counts, "other": n - sum(counts.values())}
    control, *_ = score(model, tokenizer, [t["padded_of"] for t in triples], [t["prefix"] + t["own_plain"] + ";" for t in triples],
                        [t["steps"]["padded"] + ";" for t in triples])
    result["control_writes_padded"] = int(control.sum())
    result["examples"] = triples[:5]
    return result


def make_pairs(equations: list[str], solutions: list[str], kind: str, n: int, seed: int) -> list[dict]:
    """Up to n pairs: the equation of one row, the work of another whose value differs. Rows are
    taken in a seeded random order; row k's equation gets row k+1's work."""
    found = [(e, *v) for e, s in zip(equations, solutions) if (v := statement_value(s, kind))]
    random.Random(seed).shuffle(found)
    pairs = []
    for (equation, _, value), (own_equation, prefix, work_value) in zip(found, found[1:]):
        if value != work_value:
            pairs.append({"equation": equation, "work_of": own_equation, "prefix": prefix, "work": work_value, "value": value})
        if len(pairs) == n:
            break
    return pairs


def window(labels: torch.Tensor, start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """(B, S) bool: the positions start[b] .. start[b] + length[b] - 1 of each row."""
    positions = torch.arange(labels.shape[1], device=labels.device)[None]
    return (positions >= start[:, None]) & (positions < (start + length)[:, None])


def matched(logits: torch.Tensor, labels: torch.Tensor, start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """(B,): at how many of the positions start[b] .. start[b] + length[b] - 1 the argmax of
    logits (B, S, V) is the label (B, S). Greedy decoding from the teacher-forced prefix writes
    those labels iff it is all of them."""
    return ((logits.argmax(-1) == labels) & window(labels, start, length)).sum(dim=1)


def first_tokens(logits: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """(B,): the greedy token at position start[b], the value's first character (its sign, or
    its first digit as written)."""
    return logits.argmax(-1)[torch.arange(len(start), device=start.device), start]


def value_log_probs(logits: torch.Tensor, labels: torch.Tensor, start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """(B,): log P of the labels at positions start .. start + length - 1."""
    inside = window(labels, start, length)
    chosen = torch.log_softmax(logits.double(), -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return chosen.masked_fill(~inside, 0).sum(dim=1)


@torch.no_grad()
def score(model, tokenizer, encoder_texts: list[str], prefixes: list[str], continuations: list[str], batch_size: int = 32) -> tuple[torch.Tensor, ...]:
    """(writes (N,) bool, log P (N,), first (N,) the greedy first token, share (N,) of the
    continuation's tokens that are the argmax after the ones before them) of each continuation (a
    value and its `;`) after its prefix, with its encoder text."""
    device = next(model.parameters()).device
    writes, log_p, first_token, share = [], [], [], []
    for first in range(0, len(prefixes), batch_size):
        rows = slice(first, first + batch_size)
        enc = tokenizer(encoder_texts[rows], padding=True, return_tensors="pt")
        labels = [tokenizer(p + c, add_special_tokens=False)["input_ids"] for p, c in zip(prefixes[rows], continuations[rows])]
        starts = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prefixes[rows]]
        width = max(map(len, labels))
        label_tensor = torch.tensor([ids + [-100] * (width - len(ids)) for ids in labels])
        decoder_input = torch.tensor([[model.config.decoder_start_token_id] + ids[:-1] + [tokenizer.pad_token_id] * (width - len(ids)) for ids in labels])
        decoder_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in labels])
        logits = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                       decoder_input_ids=decoder_input.to(device), decoder_attention_mask=decoder_mask.to(device)).logits
        label_tensor = label_tensor.to(device)
        start = torch.tensor(starts, device=device)
        length = torch.tensor([len(ids) - s for ids, s in zip(labels, starts)], device=device)
        right = matched(logits, label_tensor, start, length)
        writes.append((right == length).cpu())
        share.append((right / length).cpu())
        log_p.append(value_log_probs(logits, label_tensor, start, length).cpu())
        first_token.append(first_tokens(logits, start).cpu())
    return torch.cat(writes), torch.cat(log_p), torch.cat(first_token), torch.cat(share)


def conflict_test(model, tokenizer, pairs: list[dict]) -> dict:
    """Counts of work / equation / other under conflict, the control's share, the mean margin."""
    equations, prefixes = [p["equation"] for p in pairs], [p["prefix"] for p in pairs]
    works, values = [p["work"] + ";" for p in pairs], [p["value"] + ";" for p in pairs]
    writes_work, log_p_work, first, share_work = score(model, tokenizer, equations, prefixes, works)
    writes_value, log_p_value, _, share_value = score(model, tokenizer, equations, prefixes, values)
    control, *_ = score(model, tokenizer, [p["work_of"] for p in pairs], prefixes, works)
    n = len(pairs)
    work, equation = int(writes_work.sum()), int(writes_value.sum())
    # the first character alone, where the two values begin differently (a sign against a digit,
    # or two digits): which source decides it
    first_text = tokenizer.convert_ids_to_tokens(first.tolist())
    differ = [(t, p["work"][0], p["value"][0]) for t, p in zip(first_text, pairs) if p["work"][0] != p["value"][0]]
    return {"pairs": n, "work": work, "equation": equation, "other": n - work - equation,
            "control_writes_work": int(control.sum()),
            # per character: the share of each value's characters (and `;`) that greedy decoding
            # would write after that value's own characters before them, averaged over pairs
            "characters_followed": {"work": float(share_work.mean()), "equation": float(share_value.mean())},
            "first_character": {"pairs": len(differ), "work": sum(t == w for t, w, _ in differ),
                                "equation": sum(t == v for t, _, v in differ)},
            "mean_log_margin_work_minus_equation": float((log_p_work - log_p_value).mean()),  # pairs is never empty here
            "examples": [{**p, "writes": "work" if w else "equation" if v else "other"}
                         for p, w, v in zip(pairs[:5], writes_work.tolist(), writes_value.tolist())]}


def at_least(low: int):
    def parse(text: str) -> int:
        if not text.isascii() or not text.isdigit() or int(text) < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least {low}")
        return int(text)
    return parse


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--pairs", type=at_least(1), default=300, help="pairs per kind of statement (default 300)")
    parser.add_argument("--rows", type=at_least(2), default=3000, help="test rows the pairs are drawn from (default 3000)")
    parser.add_argument("--seed", type=at_least(0), default=0)
    parser.add_argument("--data", default=None, help="a dataset of `cli.py gen` to read instead of the run's `data:` (as `cli.py eval --data`)")
    args = parser.parse_args()
    from train.quadratic import load_run, load_splits

    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        sys.exit(f"work_or_equation: {out} is a file; give a directory for the results")
    try:
        model, tokenizer, config = load_run(Path(args.run_dir), "work_or_equation", data=args.data)
        test = load_splits(config, Path(args.run_dir))["test"]
    except QuadlabError as err:
        sys.exit(f"work_or_equation: {err}")
    model.eval().to("cuda" if torch.cuda.is_available() else "cpu")
    test = test.select(range(min(args.rows, len(test))))
    equations, solutions = list(test["equation"]), list(test["solution"])
    results = {}
    for kind in KINDS:
        pairs = make_pairs(equations, solutions, kind, args.pairs, args.seed)
        if pairs:
            results[kind] = conflict_test(model, tokenizer, pairs)
    triples = make_triples(equations, solutions, args.pairs, args.seed)
    which_d = which_d_test(model, tokenizer, triples) if triples else None
    print(f"{'statement':28} {'pairs':>5} {'work':>6} {'equation':>8} {'other':>6} {'control':>7} {'margin':>7}   characters: work, equation   first character: pairs, work, equation")
    for kind, r in results.items():
        n, first = r["pairs"], r["first_character"]
        print(f"{kind:28} {n:5d} {r['work'] / n:6.3f} {r['equation'] / n:8.3f} {r['other'] / n:6.3f} "
              f"{r['control_writes_work'] / n:7.3f} {r['mean_log_margin_work_minus_equation']:7.2f}   "
              f"{r['characters_followed']['work']:15.3f} {r['characters_followed']['equation']:8.3f}   {first['pairs']:5d} "
              f"{first['work'] / max(first['pairs'], 1):6.3f} {first['equation'] / max(first['pairs'], 1):6.3f}")
    if which_d:
        n = which_d["triples"]
        print(f"\nwhich D the square root's first step reads ({n} triples; control, E' with its own work: "
              f"{which_d['control_writes_padded'] / n:.3f})")
        for name in ("three sources", "plain value alone"):
            print(f"  {name:18} " + "  ".join(f"{source} {count / n:.3f}" for source, count in which_d[name].items()))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "work-or-equation.json", {"run": str(args.run_dir), "rows": len(test), "seed": args.seed, "results": results,
                                               **({"which_d_the_square_root_reads": which_d} if which_d else {})})


if __name__ == "__main__":
    main()
