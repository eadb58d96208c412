"""At the first wrong token of each failed solution (RESULTS.md, "At the first wrong token"): what
the model wrote there and what the reference has, the probabilities it gave both in the
teacher-forced pass on its own solution, and the reference's rank among its choices, as `cli.py
explain` shows for one equation (`quadratic.first_wrong_token`). Reads predictions files of the
run, full or compact (a compact row's reference is written again in the format of the run's
dataset-card.json); with beams (`eval --num-beams K`), also whether the most likely beam solves
the row. With --least-sure, for every row, solved or not, the lowest probability the model gave
to a token of its own solution: can its confidence flag its failures without the grader? With
--rows-out=FILE (implies --least-sure) also every row read, as it was, with that `least_sure`
added, as `eval` records it since 2026-12-07 (gzipped when FILE ends .gz): for predictions made
before, which `explain`'s `least sure:` line reads.

    python figures/results/padded-d-plain-cpu-iterated/first_wrong_tokens.py RUN OUT.json PREDICTIONS... [--least-sure] [--rows-out=FILE]
"""

import json
import sys
from collections import Counter
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from tqdm import tqdm  # noqa: E402

from train.quadratic import first_wrong_token, least_sure_token, read_predictions, regrade, teacher_forced_batch, write_rows  # noqa: E402
from train.runs import analysis  # noqa: E402

BINS = ((0.3, "p_reference >= 0.3"), (0.1, "0.1 <= p_reference < 0.3"), (0.01, "0.01 <= p_reference < 0.1"), (0.0, "p_reference < 0.01"))


def kind(token: dict) -> str:
    """What the decision was: to end a number (or the solution) early, to go on where the reference
    ends it, or a digit or symbol for another."""
    stops = (";", "</s>")
    if token["wrote"] in stops and token["reference"] not in stops:
        return "stopped early"
    if token["reference"] in stops and token["wrote"] not in stops:
        return "went on"
    return "digit for digit" if token["wrote"].isdigit() and token["reference"].isdigit() else "other"


def summary(rows: list[dict]) -> dict:
    if not rows:
        return {"rows": 0}
    p = [r["p_reference"] for r in rows]
    bins = Counter(next(name for low, name in BINS if x >= low) for x in p)
    return {"rows": len(rows), "median_p_wrote": round(median(r["p_wrote"] for r in rows), 3), "median_p_reference": round(median(p), 3),
            "reference_second": sum(r["reference_rank"] == 2 for r in rows), **{name: bins[name] for _, name in BINS},
            "kinds": dict(Counter(r["kind"] for r in rows).most_common())}


def least_sure(model, tokenizer, equation: str, solution: str) -> float:
    """The lowest probability the model gives a token of its own solution (and its </s>, unless the
    solution is as long as the token budget: decoding stopped there, before any), teacher-forced."""
    batch = teacher_forced_batch(tokenizer, [equation], [solution])
    return least_sure_token(model, tokenizer, batch, solution, ended=len(solution) < model.generation_config.max_new_tokens)["p"]


def flagging(rows: list[dict]) -> dict:
    """How well `least_sure` below a threshold finds the failed rows: for each threshold, the rows
    flagged, the failed ones among them and the share of all failed rows they are."""
    failed = sum(not r["exact"] for r in rows)
    out = {}
    for threshold in (0.5, 0.6, 0.7, 0.8, 0.9):
        flagged = [r for r in rows if r["least_sure"] < threshold]
        caught = sum(not r["exact"] for r in flagged)
        out[f"least_sure < {threshold}"] = {"flagged": len(flagged), "failed among them": caught, "of all failed": round(caught / max(failed, 1), 3)}
    return {"rows": len(rows), "failed": failed, **out}


def main(run: str, out: str, *paths: str) -> None:
    rows_out = next((p.split("=", 1)[1] for p in paths if p.startswith("--rows-out=")), None)
    confidence = "--least-sure" in paths or rows_out is not None
    paths = [p for p in paths if p != "--least-sure" and not p.startswith("--rows-out=")]
    task = analysis(Path(run), "explain", split=None)
    fmt = json.loads((Path(run) / "dataset-card.json").read_text())["format"]
    read = [read_predictions(Path(path)) for path in paths]
    every = [(path, r) for path, file_rows in zip(paths, read) for r in regrade(file_rows, fmt, path)]
    rows, sure = [], []
    for path, r in tqdm(every if confidence else [(p, r) for p, r in every if not r["exact"]], desc="rows", unit="row"):
        sure_of = {"least_sure": least_sure(task.model, task.tokenizer, r["equation"], r["prediction"])} if confidence else {}
        sure.append({"exact": r["exact"], **sure_of})
        if r["exact"]:
            continue
        batch = teacher_forced_batch(task.tokenizer, [r["equation"]], [r["prediction"]])
        token = first_wrong_token(task.model, task.tokenizer, batch, r["target"], r["prediction"])
        beam = {"most_likely_beam_solves": r["beams"][0] == r["target"]} if r.get("beams") else {}
        rows.append({"file": Path(path).name, "equation": r["equation"], "first_wrong": r["diagnosis"]["first_wrong"], **token,
                     "kind": kind(token), **sure_of, **beam})

    def statement(row):  # `sqrt(D) work 6: value` -> sqrt(D)
        return (row["first_wrong"] or "none").split(" work")[0].split(":")[0]

    result = {"run": run, "files": list(paths), "rows_read": len(every), "failed_rows": len(rows), "all": summary(rows),
              "by_kind": {k: summary([r for r in rows if r["kind"] == k]) for k, _ in Counter(r["kind"] for r in rows).most_common()},
              "by_first_wrong_statement": {s: summary([r for r in rows if statement(r) == s])
                                           for s, _ in Counter(map(statement, rows)).most_common()}}
    with_beams = [r for r in rows if "most_likely_beam_solves" in r]
    if with_beams:
        result["with_beams"] = {"mended by the most likely beam": summary([r for r in with_beams if r["most_likely_beam_solves"]]),
                                "not mended": summary([r for r in with_beams if not r["most_likely_beam_solves"]])}
    if confidence:
        result["least_sure"] = {"median, solved rows": round(median([r["least_sure"] for r in sure if r["exact"]] or [float("nan")]), 3),
                                "median, failed rows": round(median([r["least_sure"] for r in sure if not r["exact"]] or [float("nan")]), 3),
                                "flagging": flagging(sure)}
    result["rows"] = rows
    if rows_out is not None:
        write_rows(Path(rows_out), [{**row, "least_sure": round(found["least_sure"], 5)} for row, found in zip((r for f in read for r in f), sure)])
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    from gen import QuadlabError

    try:
        main(*sys.argv[1:])
    except (QuadlabError, OSError) as err:  # not a run, no dataset card, a predictions file that cannot be read
        sys.exit(f"first_wrong_tokens.py: error: {err}")
