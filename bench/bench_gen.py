"""Benchmark `cli.py gen` against a naive verifier, in one run.

- ours: `python cli.py gen --rows N` end to end in a subprocess (interpreter start, imports,
  sampling, writing, verifying every row, saving), wall clock; and the same in-process per row
  with one worker, to show where the time goes.
- naive: the same rows verified the obvious way: `sympy.solve` on the equation and `sympify` on
  every printed side (strings we built ourselves, so sympify is safe here). It takes about 6 ms a
  row, so it runs on a sample (--naive-rows) and is reported per row.

Usage: python bench/bench_gen.py [--rows 100000] [--naive-rows 2000] [--workers 2]
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def naive_verify(a: int, b: int, c: int, equation: str, solution: str) -> bool:
    import sympy

    x = sympy.Symbol("x")
    roots = sympy.solve(sympy.sympify(equation.split("=")[0].replace("x", "*x").replace("^", "**")), x)
    real = sorted({r for r in roots if r.is_real})
    ok = True
    stated = []
    for statement in solution[:-1].split(";"):
        sides = statement.split("=")
        if sides[1] == "none":
            ok &= not real
            continue
        values = [sympy.sympify(side.replace("^", "**")) for side in sides[1:]]
        ok &= all(v == values[0] for v in values)
        if sides[0] == "x":
            stated.append(values[-1])
    ok &= set(stated) == set(real) if real else True
    return ok


@click.command()
@click.option("--rows", default=100_000, show_default=True, help="Rows for the timed `cli.py gen`.")
@click.option("--naive-rows", default=2000, show_default=True, help="Rows verified by the naive baseline.")
@click.option("--workers", default=os.cpu_count() or 1, show_default=True, help="Workers for `cli.py gen`.")
@click.option("--format", "fmt", default="published", show_default=True)
def main(rows, naive_rows, workers, fmt):
    from gen.dataset import GenOptions, _write_and_verify
    from gen.equations import CLASSES, sample_coefficients, write_equation, write_solution

    out = Path(tempfile.mkdtemp()) / "quadratic"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "gen", "--rows", str(rows), "--workers", str(workers),
         "--format", fmt, "--out", str(out)],
        check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
    )
    cli_seconds = time.perf_counter() - start
    shutil.rmtree(out.parent)

    options = GenOptions(rows=rows)
    sampled = sample_coefficients(options.ranges, options.class_counts(), random.Random(0))
    rows_sample = [(a, b, c, cls) for cls in CLASSES for a, b, c in sampled[cls]]
    random.Random(1).shuffle(rows_sample)
    rows_sample = rows_sample[: max(naive_rows, 10_000)]

    start = time.perf_counter()
    _write_and_verify((rows_sample, fmt))
    ours_per_row = (time.perf_counter() - start) / len(rows_sample)

    naive_sample = rows_sample[:naive_rows]
    start = time.perf_counter()
    for a, b, c, _ in naive_sample:
        equation, solution = write_equation(a, b, c), write_solution(a, b, c, fmt)
        assert naive_verify(a, b, c, equation, solution), equation
    naive_per_row = (time.perf_counter() - start) / len(naive_sample)

    import sympy

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, sympy {sympy.__version__}",
        "format": fmt,
        "rows": rows,
        "workers": workers,
        "cli_gen_seconds": round(cli_seconds, 2),
        "cli_gen_us_per_row": round(cli_seconds / rows * 1e6, 1),
        "ours_one_process_us_per_row": round(ours_per_row * 1e6, 1),
        "naive_rows": naive_rows,
        "naive_us_per_row": round(naive_per_row * 1e6, 1),
        "naive_seconds_extrapolated_to_rows": round(naive_per_row * rows, 1),
        "speedup_cli_vs_naive": round(naive_per_row * rows / cli_seconds, 1),
        "speedup_one_process_vs_naive": round(naive_per_row / ours_per_row, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
