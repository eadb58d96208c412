"""A uniform model soup (Wortsman et al. 2022, "Model soups"): the mean of several fine-tunes'
weights, parameter by parameter, written as a run directory that `cli.py eval` and `--init-from`
read. The fine-tunes must share one architecture (here: the CPU fine-tunes of RESULTS.md, "The
fine-tune's rate", all from the same start). The soup is stored in bfloat16, as the lab's tracked
weights are, or with `--float32` in float32 (twice the size; bfloat16's rounding is about half as
large as a 2e-5 polish's change, and costs no accuracy: RESULTS.md, "Past round 4 on the CPU"); its config, tokenizer and generation files are the first run's (its `config.yaml` too, under a
comment line that says so), and `soup.json` names the ingredients with their weights' SHA-256. A
soup can be an ingredient of the next (RESULTS.md, "Polish the soup, then soup again").

    python figures/results/padded-d-plain-cpu/soup.py [--float32] OUT_DIR cmp/ft5-pdp cmp/ft6-pdp cmp/ft7-pdp
"""

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

RUN_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def main(out: str, *runs: str, dtype: torch.dtype = torch.bfloat16) -> None:
    if len(runs) < 2:
        sys.exit("usage: soup.py [--float32] OUT_DIR RUN RUN [RUN ...] (at least two runs to average)")
    out_dir = Path(out)
    if out_dir.exists() or not out_dir.parent.is_dir():
        sys.exit(f"error: {out_dir} exists or its folder does not; give a new directory in an existing one")
    missing = [r for r in runs if not (Path(r) / "model.safetensors").is_file()]
    missing += [f"{runs[0]}/{n}" for n in (*RUN_FILES, "config.yaml") if not (Path(runs[0]) / n).is_file()]
    if missing:
        sys.exit(f"error: {missing[0]}: not found; give run directories of trained models (model.safetensors, "
                 f"and in the first {', '.join(RUN_FILES)}, config.yaml)")
    states = [load_file(str(Path(r) / "model.safetensors")) for r in runs]
    names = set(states[0])
    for run, state in zip(runs[1:], states[1:]):
        if set(state) != names or any(state[k].shape != states[0][k].shape for k in names):
            sys.exit(f"error: {run}'s weights do not match {runs[0]}'s (another architecture); soup runs of one model only")
    dtype_name = str(dtype).removeprefix("torch.")
    soup = {k: (sum(s[k].double() for s in states) / len(states)).to(dtype).contiguous() for k in sorted(names)}
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    save_file(soup, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    for name in RUN_FILES:
        shutil.copy(Path(runs[0]) / name, tmp / name)
    config = (Path(runs[0]) / "config.yaml").read_text().splitlines()
    # the first run's comments describe its weights (it may be a soup itself), not these
    config = [f"# The weights are the mean of {len(runs)} runs' (soup.json); the training keys below are {runs[0]}'s."] + [
        f"run_dir: {out_dir.resolve()}" if line.startswith("run_dir:") else line for line in config if not line.startswith("#")]
    (tmp / "config.yaml").write_text("\n".join(config) + "\n")
    ingredients = [{"run": str(r), "sha256": hashlib.sha256((Path(r) / "model.safetensors").read_bytes()).hexdigest()} for r in runs]
    (tmp / "soup.json").write_text(json.dumps({"mean_of": ingredients, "dtype": dtype_name}, indent=1) + "\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the run from other users
    os.chmod(tmp / "model.safetensors", 0o666 & ~umask)
    os.rename(tmp, out_dir)
    print(f"{out_dir}: the mean of {len(runs)} runs' weights ({len(soup)} tensors, {dtype_name})")


if __name__ == "__main__":
    args = sys.argv[1:]
    float32 = "--float32" in args
    args = [a for a in args if a != "--float32"]
    if any(a.startswith("-") for a in args):
        sys.exit(f"error: unknown option {next(a for a in args if a.startswith('-'))}; the only option is --float32")
    main(*args, dtype=torch.float32 if float32 else torch.bfloat16)
