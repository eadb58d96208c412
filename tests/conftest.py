import os
import sys
from pathlib import Path

import pytest
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download: a hub name fails at once instead of waiting on the network
if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread a worker: `-n 2` on 2 cores, not 4 threads fighting over them
    import torch

    torch.set_num_threads(1)

from gen.equations import Ranges  # noqa: E402

DEFAULT = Ranges()

# SQuAD tests run on a cut of the dev set kept in the repository (tests/fixtures/squad/README.md).
SQUAD_SAMPLE = ROOT / "tests" / "fixtures" / "squad" / "sample-v1.1.json"
SQUAD_SAMPLE_V2 = ROOT / "tests" / "fixtures" / "squad" / "sample-v2.0.json"
# The full official v1.1 dev set, for the few checks that need all of it: in ../shared beside the
# checkout (as this lab's machines have it), or in shared/ inside it.
SQUAD_DEV = next((p for p in (ROOT.parent / "shared" / "data" / "squad" / "dev-v1.1.json",
                              ROOT / "shared" / "data" / "squad" / "dev-v1.1.json") if p.exists()), None)
needs_squad_dev = pytest.mark.skipif(
    SQUAD_DEV is None, reason="needs the full SQuAD v1.1 dev set, which is not in the repository: "
    "put dev-v1.1.json in ../shared/data/squad/ beside the checkout or in shared/data/squad/ inside it")


def offline_dom(page: Path, profile: Path) -> str:
    """The DOM of a local page after headless Chromium ran its scripts, with the network off."""
    import subprocess

    return subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
         "--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout


def wordpiece_tokenizer(articles: list, folder: Path, vocab_size: int):
    """A WordPiece tokenizer trained here on SQuAD articles' contexts and questions (no download)."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    texts = [p["context"] for a in articles for p in a["paragraphs"]] + [q["question"] for a in articles for p in a["paragraphs"] for q in p["qas"]]
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(texts, vocab_size=vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    wordpiece.save_model(str(folder))
    return BertTokenizerFast(str(folder / "vocab.txt"))


def tiny_squad_encoder(articles: list, folder: Path, vocab_size: int, hidden_size: int, max_positions: int) -> Path:
    """An untrained 2-layer BERT for question answering with a WordPiece tokenizer trained on
    `articles`, saved in folder/encoder for `--model`."""
    from transformers import BertConfig, BertForQuestionAnswering

    tokenizer = wordpiece_tokenizer(articles, folder / "wordpiece", vocab_size)
    model = BertForQuestionAnswering(BertConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2,
                                                intermediate_size=2 * hidden_size, max_position_embeddings=max_positions))
    model.save_pretrained(str(folder / "encoder"))
    tokenizer.save_pretrained(str(folder / "encoder"))
    return folder / "encoder"


# one given example for every task, as `explain` and the live page take them
GIVEN = {"quadratic": {"equation": "x^2 - 5x + 6 = 0"}, "classify": {"text": "x^2 - 5x + 6 = 0"},
         "squad": {"question": "Which team won Super Bowl 50?", "context": "The Denver Broncos defeated the Carolina Panthers to win Super Bowl 50."}}
TINY_DATA = dict(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)  # small numbers: a few steps already learn something


def tiny_run(task: str, data: Path, root: Path, **keys) -> Path:
    """A tiny run of `task` in root/TASK, trained briefly on CPU: quadratic and classify on the
    quadratic dataset `data` (gen.dataset.generate), SQuAD on the fixture with a tiny BERT built in
    root. `keys` override the configuration (e.g. max_steps, keep_checkpoints)."""
    from train import tasks
    from train.config import resolve
    from train.squad_data import read_squad

    run = {"run_dir": str(root / task), "batch_size": 16}
    if task == "quadratic":
        config = resolve("tiny", None, {"data": str(data), "val_size": 10, "eval_limit": 10, **run, **keys})
    elif task == "squad":
        _, articles = read_squad(SQUAD_SAMPLE)
        encoder = tiny_squad_encoder(articles, root, vocab_size=1500, hidden_size=32, max_positions=256)
        config = resolve("squad", None, {"model_name": str(encoder), "train_file": str(SQUAD_SAMPLE), "eval_articles": 1, "max_length": 96,
                                         "stride": 32, "learning_rate": 1e-3, **run, **keys})
    else:
        config = resolve("classify", None, {"data": str(data), "d_model": 32, "d_ff": 64, "num_layers": 2, "num_heads": 2, "max_length": 64,
                                            "val_size": 10, "eval_limit": 10, **run, **keys})
    tasks.module(task).train_run(config, progress=False)
    return root / task


def six_step_run(root: Path) -> Path:
    """A quadratic run of six steps on 200 reversed-format equations with small numbers: it writes
    the format's tokens but solves nothing, which tests that compare against decoding rely on."""
    from gen.dataset import GenOptions, generate

    generate(GenOptions(rows=200, seed=5, format="reversed", ranges=Ranges(**TINY_DATA)), root / "data", workers=1)
    return tiny_run("quadratic", root / "data", root, max_steps=6, eval_every=6)


@st.composite
def equations(draw, ranges: Ranges = DEFAULT):
    """(a, b, c, number of real roots) drawn like the generator draws them, over `ranges`."""
    a = draw(st.sampled_from(ranges.leading))
    roots = st.integers(ranges.root_lo, ranges.root_hi)
    kind = draw(st.sampled_from([2, 1, 0]))
    if kind == 2:
        r1 = draw(roots)
        r2 = draw(roots.filter(lambda r: r != r1))
        s, p = r1 + r2, r1 * r2
    elif kind == 1:
        r = draw(roots)
        s, p = 2 * r, r * r
    else:
        s = draw(st.integers(2 * ranges.root_lo, 2 * ranges.root_hi - 1))
        p_max = max(ranges.root_lo**2, ranges.root_hi**2)
        p = draw(st.integers(s * s // 4 + 1, max(s * s // 4 + 1, p_max)))
    return a, -a * s, a * p, kind


def quadlab(capsys, monkeypatch, *argv, stdin: bytes = b""):
    """(exit status, stdout, stderr) of `quadlab ARGV` in-process: cli.main ends in SystemExit, so any other
    exception (a traceback) escapes and fails the test."""
    import io

    import cli

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    try:
        cli.main([str(a) for a in argv])
        status = 0
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def script_module(path: Path):
    """A script of figures/results/ imported as a module, so that its functions and its main() run
    in the test's process (a process of its own spends seconds importing torch again)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def snapshot(path: Path) -> dict:
    """Size and modification time of a path and of everything under it (a folder's time changes
    when an entry is added or removed)."""
    paths = [path, *sorted(path.rglob("*"))] if path.is_dir() else [path] if path.exists() else []
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in paths}


@pytest.fixture(scope="session")
def run_cli():
    """Run `python cli.py ARGS` in a subprocess; returns the CompletedProcess."""
    import subprocess

    def run(*args, timeout=120, cwd=None, input=None):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run(
            [sys.executable, str(ROOT / "cli.py"), *map(str, args)],
            capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=env, input=input,
        )

    return run
