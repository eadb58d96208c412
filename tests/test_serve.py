"""`cli.py serve`: the JSON API on a tiny run of every task, its 4xx answers, one model call at a
time per run without blocking the server, the command line, and the page in headless Chromium."""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from analyze.serve import LIMITS, MAX_BODY, create_app, load_runs, start_in_thread
from gen.dataset import GenOptions, generate
from gen.equations import Ranges
from train import tasks

from conftest import GIVEN, ROOT, TINY_DATA, tiny_run



@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """A tiny run of every task (trained 2 steps: the server's work does not depend on how well)."""
    root = tmp_path_factory.mktemp("serve")
    generate(GenOptions(rows=120, seed=3, ranges=Ranges(**TINY_DATA)), root / "data", workers=1)
    for name in tasks.TASKS:
        tiny_run(name, root / "data", root, max_steps=2, eval_every=2, val_size=4, eval_limit=4)
    return {name: root / name for name in tasks.TASKS}


@pytest.fixture(scope="module")
def served(run_dirs):
    return load_runs(list(run_dirs.values()))


@pytest.fixture(scope="module")
def client(served):
    from starlette.testclient import TestClient

    with TestClient(create_app(served)) as client:
        yield client


def unpacked(result: dict, kind: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(result["maps"][kind]), "<f2").reshape(result["kinds"][kind]["shape"]).astype(np.float32)


def test_runs_are_listed_with_their_inputs_and_limits(client):
    listed = {run["name"]: run for run in client.get("/api/runs").json()}
    assert set(listed) == set(tasks.TASKS)
    for name, run in listed.items():
        assert run["task"] == name and run["inputs"] == list(tasks.module(name).Analysis.inputs)[: len(run["inputs"])]
        assert run["limits"] == {field: LIMITS[field] for field in run["inputs"]}
    assert listed["quadratic"]["kinds"] == ["encoder", "decoder", "cross"] and listed["squad"]["kinds"] == ["encoder"]


def test_runs_in_the_name_run_layout_are_served_by_their_name(run_dirs, tmp_path):
    import shutil

    for parent in ("x/alpha", "y/alpha", "beta"):  # gpu-job and figures/results/ keep a run as NAME/run
        shutil.copytree(run_dirs["quadratic"], tmp_path / parent / "run")
    served = load_runs([tmp_path / "x/alpha/run", tmp_path / "y/alpha/run", tmp_path / "beta/run", run_dirs["quadratic"]])
    assert list(served) == ["alpha", "alpha-2", "beta", "quadratic"]  # as their figures folders are named; not run, run-2, ...
    assert served["alpha-2"].run_dir == tmp_path / "y/alpha/run"


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_each_task_answers_with_its_attention_arrays(client, served, name):
    response = client.post(f"/api/run/{name}", json=GIVEN[name])
    assert response.status_code == 200, response.text
    result = response.json()
    answer = result["answer"]
    if name == "quadratic":
        assert result["input"] == "1x^2-5x+6=0" and answer["true_roots"] == ["2", "3"]
        assert isinstance(answer["verdict"]["ok"], bool) and answer["solution"] == result["output"]
        assert re.fullmatch(r"(\d+|none) of the \d+ test equations the run was evaluated on ha(ve|s) two real roots and a \|D\| of 1 digit, "
                            r"as this one[;:] .+", answer["test_rows_like_it"]), answer["test_rows_like_it"]  # x^2-5x+6: D = 1
        assert re.fullmatch(r"nothing.*|(D|x1|x2|sqrt\(D\)|answer)\b.*", answer["first_wrong"]), answer["first_wrong"]
    elif name == "squad":
        assert answer["answer"] == result["output"] and answer["answer"] in GIVEN[name]["context"]
        assert isinstance(answer["score"], float)
    else:
        assert answer["label"] in answer["probabilities"] and abs(sum(answer["probabilities"].values()) - 1) < 1e-3
    task = served[name].task
    assert set(result["kinds"]) == set(task.kinds)
    for kind, found in result["kinds"].items():
        q_side, k_side = task.sides[kind]
        n_q, n_k = len(result["tokens"][q_side]), len(result["tokens"][k_side])
        maps = unpacked(result, kind)
        n_layers, n_heads = found["shape"][:2]
        assert maps.shape == (n_layers, n_heads, n_q, n_k)
        np.testing.assert_allclose(maps.sum(axis=-1), 1.0, atol=0.02)  # every query's row, rounded to float16
        summary = np.array(found["summary"])
        assert summary.shape == (n_layers, n_k)
        np.testing.assert_allclose(summary.sum(axis=1), n_heads, atol=0.02)  # each head gives each query 1
        assert len(result["roles"][k_side]) == n_k
    for label, layers in result["attended"].items():
        assert len(layers) == result["kinds"][task.attended[0][1]]["shape"][0], label
    if name == "quadratic":  # encoder-decoder: the output and input lengths differ in the cross maps
        assert unpacked(result, "cross").shape[2:] == (len(result["tokens"]["decoder"]), len(result["tokens"]["encoder"]))


BAD = [
    ("nothing", {"equation": "x^2=0"}, 404, "no run named 'nothing'"),
    ("quadratic", {"equation": "x^2+" + "1" * LIMITS["equation"] + "=0"}, 400, "the limit is 64"),
    ("quadratic", {"equation": "7y^2+3x=0"}, 400, "cannot read the equation"),
    ("quadratic", {"equation": 7}, 400, "must be a string"),
    ("quadratic", {"text": "x^2=0"}, 400, "is a quadratic run; 'text' does not apply to it (give its example with 'equation')"),
    ("quadratic", {"equation": "x^2=0", "extra": 1}, 400, "is a quadratic run; 'extra' does not apply to it"),
    ("quadratic", {}, 400, "'equation' is missing"),
    ("quadratic", ["x^2=0"], 400, "JSON object"),
    ("squad", {"question": "Who won?", "context": "  "}, 400, "context is empty"),
    ("squad", {"question": "Who won?", "context": "x" * (LIMITS["context"] + 1)}, 400, "the limit is 8,000"),
    ("classify", {"text": ""}, 400, "text is empty"),
]


@pytest.mark.parametrize("name, body, status, message", BAD, ids=["unknown run", "long equation", "unreadable equation", "not a string",
                                                                 "field of another task",
                                                                 "field of another task, not a string", "missing field", "not an object", "empty context",
                                                                 "long context", "empty text"])
def test_bad_input_is_a_4xx_with_one_line_and_the_server_keeps_serving(client, name, body, status, message):
    response = client.post(f"/api/run/{name}", json=body)
    assert response.status_code == status and message in response.json()["error"] and "\n" not in response.json()["error"]
    assert client.post("/api/run/quadratic", json=GIVEN["quadratic"]).status_code == 200


def test_bodies_that_are_not_json_or_too_large_are_refused(client):
    response = client.post("/api/run/quadratic", content=b'{"equation": ')
    assert response.status_code == 400 and "not JSON" in response.json()["error"]
    response = client.post("/api/run/quadratic", content=b" " * (MAX_BODY + 1))
    assert response.status_code == 413 and "larger than 64 KiB" in response.json()["error"]
    assert client.get("/api/runs").status_code == 200


def test_neuron_view_of_a_shown_example(client):
    client.post("/api/run/quadratic", json=GIVEN["quadratic"])
    ask = {"input": GIVEN["quadratic"], "kind": "cross", "layer": 1, "head": 2, "query": 3}
    view = client.post("/api/run/quadratic/neuron", json=ask).json()
    n_keys = len("1x^2-5x+6=0") + 1  # one token a character, and </s>
    assert len(view["attention"]) == len(view["scores"]) == n_keys and abs(sum(view["attention"]) - 1) < 1e-3
    assert len(view["keys"][0]) == len(view["query"])
    response = client.post("/api/run/quadratic/neuron", json={**ask, "layer": 9})
    assert response.status_code == 400 and "out of range" in response.json()["error"]


def _get(url: str, body: dict | None = None, timeout: float = 60):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


def _until(condition, what: str, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


class WatchedLock:
    """A run's lock that counts the calls waiting for it."""

    def __init__(self):
        self.lock, self.waiting = threading.Lock(), 0

    def __enter__(self):
        self.waiting += 1
        self.lock.acquire()
        self.waiting -= 1

    def __exit__(self, *exc):
        self.lock.release()


def test_model_calls_run_one_at_a_time_per_run_and_the_server_answers_meanwhile(served, monkeypatch):
    run = served["quadratic"]
    gate, active, peak = threading.Event(), [], []
    original = run.task.example

    def held(**kwargs):  # a model call that lasts until the test lets it go
        active.append(1)
        peak.append(len(active))
        gate.wait(60)
        try:
            return original(**kwargs)
        finally:
            active.pop()

    monkeypatch.setattr(run.task, "example", held)
    monkeypatch.setattr(run, "lock", WatchedLock())
    url, stop = start_in_thread(served)
    try:
        answers = []
        callers = [threading.Thread(target=lambda: answers.append(_get(f"{url}api/run/quadratic", GIVEN["quadratic"]))) for _ in range(2)]
        for caller in callers:
            caller.start()
        _until(lambda: len(active) == 1 and run.lock.waiting == 1, "one call in the model and one waiting for it")
        assert _get(f"{url}api/runs", timeout=10)[0] == 200  # the event loop is free while the model works
        assert _get(f"{url}api/run/squad", GIVEN["squad"], timeout=30)[0] == 200  # and another run's model too
        gate.set()
        for caller in callers:
            caller.join(60)
        assert [status for status, _ in answers] == [200, 200] and max(peak) == 1
    finally:
        gate.set()
        stop()


def test_serve_command_prints_the_address_and_serves(run_dirs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", str(run_dirs["quadratic"]), "--port", "0"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("serving 1 run(s) (quadratic) at http://127.0.0.1:"), line + server.stderr.read()
        url = line.split(" at ")[1].split()[0]
        status, runs = _get(f"{url}api/runs")
        assert status == 200 and [r["name"] for r in runs] == ["quadratic"]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)


def test_serve_command_bad_input_is_one_line_exit_2(run_cli, run_dirs, tmp_path):
    result = run_cli("serve", tmp_path / "nothing", "--port", "0")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not a directory" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        result = run_cli("serve", run_dirs["quadratic"], "--port", taken.getsockname()[1])
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "cannot listen on 127.0.0.1:" in result.stderr


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no chromium on this machine (apt-get install chromium)")
def test_page_in_headless_chromium_answers_and_draws_offline(served):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[test]')")
    url, stop = start_in_thread(served)
    requested = []
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(url)
            page.select_option("#run", "quadratic")
            page.fill("#field-equation", "x^2-5x+6=0")
            page.click("#go")
            page.wait_for_selector("body[data-drawn=yes]", timeout=60_000)
            assert "ok:" in page.inner_text("#verdict") and page.inner_text("#output")
            assert page.inner_text("#stated-answer").startswith("stated answer: ")
            assert "test rows like it" in page.inner_text("#answer") and "test equations the run was evaluated on" in page.inner_text("#answer")
            drawn = page.evaluate("""() => {
                const c = document.getElementById('headview');
                const pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let inked = 0;
                for (let i = 3; i < pixels.length; i += 4) inked += pixels[i] > 0;
                return {inked, thumbnails: document.querySelectorAll('#modelview canvas').length};
            }""")
            assert drawn["inked"] > 1000 and drawn["thumbnails"] == 2 * 4  # the tiny preset: 2 layers, 4 heads
            page.fill("#field-equation", "7y^2=0")
            page.click("#go")
            page.wait_for_selector("#error:not([hidden])", timeout=60_000)
            assert "cannot read the equation" in page.inner_text("#error")
            assert not errors, errors
            browser.close()
    finally:
        stop()
    assert requested and all(u.startswith(url) or u.startswith("data:") for u in requested), requested
