"""Benchmark `cli.py serve`: one request end to end, measured from the client, beside the bare model
call measured in the same run.

The server is `python cli.py serve QUADRATIC_RUN SQUAD_RUN --port 0` in its own process; the client
(this process) posts with urllib and reads and parses the whole JSON answer. The bare model call
runs in this process on the same runs while the server is idle: `task.example(given=...)` (the
model's answer: quadratic greedy decoding; SQuAD the windows, the forward pass and the span
search) and `analyze.maps.example_maps` (the teacher-forced forward pass that returns the maps).
Each figure is the median of --repeats calls after --warmup calls.

- quadratic: the equation --equation (default the published example, whose solution has 85
  characters) on the tiny model;
- SQuAD: one window of exactly --window tokens (a question and a context from the SQuAD fixture,
  cut to fill the window) on a SQuAD run of MiniLM-L6 (`--model minilm-l6-packaged`).

Usage: python bench/bench_serve.py --quadratic runs/quadratic-tiny-seed0 --squad runs/squad-minilm [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def timed(call, warmup: int, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls after `warmup` calls, and the last result."""
    for _ in range(warmup):
        result = call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def squad_window(tokenizer, length: int) -> dict:
    """A question and a context from the SQuAD fixture whose first window is `length` tokens: the
    fixture's contexts joined, cut at the token that fills the window."""
    from train.squad_data import read_squad

    _, articles = read_squad(ROOT / "tests" / "fixtures" / "squad" / "sample-v1.1.json")
    paragraphs = [p for a in articles for p in a["paragraphs"]]
    question = paragraphs[0]["qas"][0]["question"]
    context = " ".join(p["context"] for p in paragraphs)
    room = length - len(tokenizer(question, add_special_tokens=False)["input_ids"]) - 3  # [CLS] q [SEP] c [SEP]
    offsets = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return {"question": question, "context": context[: offsets[room - 1][1]]}


def bare(run: Path, given: dict, warmup: int, repeats: int) -> dict:
    import torch

    from analyze.maps import example_maps
    from train.runs import analysis

    task = analysis(run, "bench", limit=1)
    with torch.inference_mode():
        example_s, example = timed(lambda: task.example(given=given), warmup, repeats)
        maps_s, shown = timed(lambda: example_maps(task.model, task.sides, example), warmup, repeats)
    return {"example_s": example_s, "maps_s": maps_s, "tokens": {side: len(t) for side, t in shown["tokens"].items()}, "output": example["output"]}


@click.command()
@click.option("--quadratic", "quadratic_run", required=True, type=click.Path(exists=True, file_okay=False), help="A quadratic run of the tiny preset.")
@click.option("--squad", "squad_run", required=True, type=click.Path(exists=True, file_okay=False), help="A SQuAD run of MiniLM-L6.")
@click.option("--equation", default="7x^2+3556x+451612=0", show_default=True)
@click.option("--window", default=384, show_default=True, help="Tokens in the SQuAD window.")
@click.option("--repeats", default=20, show_default=True)
@click.option("--warmup", default=2, show_default=True)
@click.option("--threads", default=1, show_default=True, help="torch threads, in the server (`serve --threads`) and for the bare calls.")
def main(quadratic_run, squad_run, equation, window, repeats, warmup, threads):
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", quadratic_run, squad_run, "--port", "0",
                               "--threads", str(threads)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if " at http" not in line:
            raise SystemExit(f"the server did not start: {line!r}")
        url = line.split(" at ")[1].split()[0]
        names = [run["name"] for run in json.loads(urllib.request.urlopen(f"{url}api/runs").read())]
        cases = {"quadratic": (Path(quadratic_run), names[0], {"equation": equation}),
                 "squad": (Path(squad_run), names[1], squad_window(AutoTokenizer.from_pretrained(squad_run), window))}
        results = {}
        for case, (run, name, given) in cases.items():
            request_s, answer = timed(lambda: post(f"{url}api/run/{name}", given), warmup, repeats)
            results[case] = {"run": str(run), "request_s": request_s, "server_model_s": answer["model_seconds"],
                             "response_bytes": len(json.dumps(answer)), **bare(run, given, warmup, repeats)}
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "load_average": os.getloadavg()}
    print(json.dumps({"machine": machine, "repeats": repeats, "warmup": warmup, "results": results}, indent=2))
    print("\n| request | tokens (input / output) | end to end, from the client | model and maps in the server (last request) | "
          "bare model call (`task.example`) | maps (`example_maps`) | response |")
    print("|---|---|---|---|---|---|---|")
    for case, r in results.items():
        tokens = " / ".join(str(n) for n in r["tokens"].values())
        print(f"| {case} | {tokens} | **{r['request_s'] * 1000:.0f} ms** | {r['server_model_s'] * 1000:.0f} ms | "
              f"{r['example_s'] * 1000:.0f} ms | {r['maps_s'] * 1000:.0f} ms | "
              f"{r['response_bytes'] / 1e6:.2f} MB |")


if __name__ == "__main__":
    main()
