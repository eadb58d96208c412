"""`cli.py grade` on tracked predictions files, this checkout against another (an older commit), in
one run.

Each file is graded by `python cli.py grade FILE` in a fresh process, as a user runs it, once in
this checkout and once in the baseline checkout, alternating; the wall time of the whole command
(interpreter, imports, reading, grading, the metrics) is reported. Both must print the same report
(the script checks before it prints). Make the baseline with `git worktree add DIR REV`.

Usage: python bench/bench_grade.py --baseline-tree DIR [FILE ...]
(default files: the 20,000-row greedy predictions of the lab's best model and its selective beams)
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
BEST = ROOT / "figures" / "results" / "padded-d-plain-cpu-iterated"
FILES = [BEST / "run" / "predictions.jsonl.gz", BEST / "beam4-below0.7" / "predictions-all-20000.jsonl.gz"]


def timed_grade(tree: Path, path: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "cli.py", "grade", str(path)], cwd=tree, capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise click.ClickException(f"cli.py grade {path} in {tree} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return seconds, done.stdout


@click.command()
@click.option("--baseline-tree", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Another checkout of quadlab (git worktree add DIR REV) whose cli.py grade is the baseline.")
@click.option("--repeats", default=1, show_default=True, type=click.IntRange(min=1), help="Runs of each command; the fastest counts.")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def main(baseline_tree, repeats, files):
    files = [Path(f).resolve() for f in files] or FILES
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=baseline_tree, capture_output=True, text=True).stdout.strip()
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"baseline {baseline_tree} at {revision or '?'}\n")
    print("| file | rows graded | this checkout (s) | baseline (s) | speed-up |")
    print("|---|---|---|---|---|")
    for path in files:
        ours, theirs = [], []
        for _ in range(repeats):
            seconds, ours_out = timed_grade(ROOT, path)
            ours.append(seconds)
            seconds, theirs_out = timed_grade(baseline_tree, path)
            theirs.append(seconds)
            if ours_out != theirs_out:
                raise click.ClickException(f"the two checkouts grade {path} differently:\n{ours_out}\n---\n{theirs_out}")
        rows = ours_out.split("(", 1)[1].split(" rows", 1)[0]
        print(f"| `{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}` | {rows} | **{min(ours):.1f}** | {min(theirs):.1f} | {min(theirs) / min(ours):.2f}x |")


if __name__ == "__main__":
    main()
