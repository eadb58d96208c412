"""figures/results/padded-d-plain-cpu/soup.py: the uniform soup of two locally built T5 runs is
their weights' mean (rounded to bfloat16, or kept in float32 with --float32), loads with `from_pretrained`, and names its ingredients; runs of another
architecture are refused with a one-line error and nothing written."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from conftest import script_module

SCRIPT = Path(__file__).resolve().parents[1] / "figures/results/padded-d-plain-cpu/soup.py"


def make_run(path: Path, seed: int, d_model: int = 16) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=40, d_model=d_model, d_ff=32, d_kv=8, num_layers=1, num_decoder_layers=1,
                      num_heads=2, decoder_start_token_id=0, pad_token_id=0)
    model = T5ForConditionalGeneration(config)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).write_text("{}")
    (path / "config.yaml").write_text(f"# the weights of run {seed}\ntask: quadratic\nrun_dir: {path}\nseed: {seed}\n")
    return model


def soup(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_the_soup_is_the_mean_of_its_runs(tmp_path):
    first, second = make_run(tmp_path / "a", 1), make_run(tmp_path / "b", 2)
    script_module(SCRIPT).main(str(tmp_path / "s"), str(tmp_path / "a"), str(tmp_path / "b"))  # in this process; the command runs in the --float32 test
    loaded = T5ForConditionalGeneration.from_pretrained(tmp_path / "s")
    mean = {k: (v + second.state_dict()[k]) / 2 for k, v in first.state_dict().items()}
    for name, value in loaded.state_dict().items():
        # bfloat16 keeps 8 significant bits: within 1/128 of the mean, relative
        assert torch.allclose(value.float(), mean[name], rtol=2**-7, atol=1e-6), name
    some = "decoder.block.0.layer.0.SelfAttention.q.weight"
    assert not torch.allclose(mean[some], first.state_dict()[some])  # the two runs differ, so the mean says something
    record = json.loads((tmp_path / "s" / "soup.json").read_text())
    assert [Path(i["run"]).name for i in record["mean_of"]] == ["a", "b"]
    assert record["mean_of"][1]["sha256"] == hashlib.sha256((tmp_path / "b" / "model.safetensors").read_bytes()).hexdigest()
    config = (tmp_path / "s" / "config.yaml").read_text().splitlines()
    assert f"run_dir: {(tmp_path / 's').resolve()}" in config and "seed: 1" in config  # the first run's keys
    assert config[0].startswith("# The weights are the mean of 2 runs'")
    assert "# the weights of run 1" not in config  # the first run's comment is not the soup's


def test_float32_keeps_the_mean_that_bfloat16_rounds(tmp_path):
    first, second = make_run(tmp_path / "a", 1), make_run(tmp_path / "b", 2)
    assert soup("--float32", tmp_path / "s32", tmp_path / "a", tmp_path / "b").returncode == 0
    script_module(SCRIPT).main(str(tmp_path / "s16"), str(tmp_path / "a"), str(tmp_path / "b"))
    some = "decoder.block.0.layer.0.SelfAttention.q.weight"
    mean = (first.state_dict()[some] + second.state_dict()[some]) / 2
    kept = T5ForConditionalGeneration.from_pretrained(tmp_path / "s32").state_dict()[some]
    rounded = T5ForConditionalGeneration.from_pretrained(tmp_path / "s16").state_dict()[some]
    assert torch.allclose(kept, mean, rtol=1e-6, atol=1e-8)
    assert not torch.allclose(rounded.float(), mean, rtol=1e-6, atol=1e-8)  # so the first check can fail
    assert json.loads((tmp_path / "s32" / "soup.json").read_text())["dtype"] == "float32"
    assert json.loads((tmp_path / "s16" / "soup.json").read_text())["dtype"] == "bfloat16"


def test_runs_of_another_architecture_are_refused(tmp_path):
    """Refusals in this process (a process each takes seconds to import torch); the option that only
    the command reads, as a shell runs it."""
    make_run(tmp_path / "a", 1)
    make_run(tmp_path / "wide", 2, d_model=24)
    main = script_module(SCRIPT).main
    for runs, says in ((("a", "wide"), "do not match"), (("a",), "at least two"), (("a", "nowhere"), "nowhere: not found")):
        with pytest.raises(SystemExit) as refused:
            main(str(tmp_path / "s"), *(str(tmp_path / run) for run in runs))
        assert isinstance(refused.value.code, str) and says in refused.value.code and len(refused.value.code.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "wide"]  # nothing half-written
    unknown = soup("--float16", tmp_path / "s", tmp_path / "a", tmp_path / "wide")
    assert unknown.returncode != 0 and "unknown option --float16" in unknown.stderr and "Traceback" not in unknown.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "wide"]
