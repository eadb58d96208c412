"""`cli.py serve`: a local page and JSON API that run a trained model on a typed input and show its
answer and attention (head view, model view, layer x token summary, neuron view where there is one).

API (JSON; errors are {"error": "one line"} with a 4xx status, and the server keeps serving):
    GET  /api/runs              the runs served: name, task, input fields and their limits, kinds
    POST /api/run/{name}        body {field: text} by the run's task.inputs, e.g. {"equation": "x^2-5x+6=0"}
                                -> input, output, answer, attended, tokens, roles, per kind its sides,
                                shape (L, H, Q, K) and summary, and "maps": {kind: base64 of the
                                weights as little-endian float16}
    POST /api/run/{name}/neuron body {"input": {field: text}, "kind", "layer", "head", "query"} -> the
                                neuron view of one query (analyze/neuron.py)

The page (static/) is drawn in the browser from these numbers by the server's own script: nothing
is loaded from anywhere else. Model calls run in a thread pool, one at a time per run (a lock per
run), so the event loop keeps answering while a model works.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gen import QuadlabError

STATIC = Path(__file__).with_name("static")
# Characters per input field: an equation is short (the grader reads at most 200), a SQuAD
# question and its context fit a few windows, a text a few paragraphs. Larger bodies are refused
# before they are read.
LIMITS = {"equation": 64, "question": 512, "context": 8000, "text": 2000, "text_pair": 2000}
MAX_BODY = 64 * 1024


class TooLarge(QuadlabError):
    """A request body over MAX_BODY (413, not 400)."""


@dataclass
class Served:
    """One run behind the server: its task (train/tasks.py `Analysis`), with the lock that keeps its
    model calls one at a time, and the last example answered (the neuron view asks about it)."""

    name: str
    run_dir: Path
    task: object
    lock: threading.Lock = field(default_factory=threading.Lock)
    last: tuple = (None, None)  # (given fields, example)


def finished_runs(root: Path = Path("runs")) -> list[Path]:
    """Every finished run directory under `root` (config.yaml and its model), by name."""
    return sorted(p.parent for p in Path(root).glob("*/config.yaml") if (p.parent / "model.safetensors").is_file())


def load_runs(run_dirs: list[Path], skip_broken: bool = False, warn=print) -> dict[str, Served]:
    """{name: Served} for the run directories (named as their figures folder: the folder's name, or
    NAME for NAME/run; made unique). A run that cannot be opened is an error, or with `skip_broken`
    (the runs found under runs/) a warning."""
    from train.config import run_name
    from train.runs import analysis

    served = {}
    for run_dir in run_dirs:
        try:
            task = analysis(Path(run_dir), "serve", split=None)  # no rows: the server reads only given inputs
        except QuadlabError as err:
            if not skip_broken:
                raise
            warn(f"quadlab serve: skipping {run_dir}: {err}")
            continue
        base = run_name(run_dir)
        name, n = base, 2
        while name in served:
            name, n = f"{base}-{n}", n + 1
        served[name] = Served(name, Path(run_dir), task)
    if not served:
        raise QuadlabError("no run to serve: give run directories (e.g. `python cli.py serve runs/quadratic-tiny-seed0`) "
                           "or train one with `python cli.py train`")
    return served


def describe(run: Served) -> dict:
    from train.tasks import TASKS

    task = run.task
    return {"name": run.name, "run_dir": str(run.run_dir), "task": task.name, "title": TASKS[task.name].title,
            "inputs": list(task.inputs), "limits": {f: LIMITS[f] for f in task.inputs}, "kinds": list(task.kinds)}


def check_fields(task, body, run_dir: Path) -> dict:
    """The input fields of a request: a JSON object of strings, within LIMITS, the task's own
    (analyze.maps.check_given), with its first field given."""
    from analyze.maps import check_given

    if not isinstance(body, dict):
        raise QuadlabError(f"the request body must be a JSON object of the fields {', '.join(task.inputs)}")
    check_given(task, body, run_dir, spelled=repr)  # a field the task does not read is named as such, whatever its value
    for name, value in body.items():
        if not isinstance(value, str):
            raise QuadlabError(f"field {name!r} must be a string")
    if task.inputs[0] not in body:
        raise QuadlabError(f"the field {task.inputs[0]!r} is missing; give {' and '.join(task.inputs)}")
    for name, value in body.items():
        if len(value) > LIMITS[name]:
            raise QuadlabError(f"the {name} has {len(value):,} characters; the limit is {LIMITS[name]:,}, shorten it")
    return body


def packed(array: np.ndarray) -> bytes:
    """An array as little-endian float16 in base64: a 384-token window of a 6-layer, 12-head
    encoder has 10.6 million weights, 60 MB as JSON numbers and 28 MB this way. Read it back with
    np.frombuffer(base64.b64decode(text), "<f2").reshape(shape)."""
    import torch

    # torch converts in hardware; numpy's float16 takes a slow path for every subnormal, and most
    # attention weights of a long input are (1.4 s against 0.02 s for those 10.6 million)
    half = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).half().numpy().astype("<f2", copy=False)
    return base64.b64encode(half.tobytes())


def to_json(result: dict) -> bytes:
    """`result` as JSON, its "maps" ({kind: base64 bytes}, if any) last and joined as bytes:
    json.dumps would scan and copy the 28 MB of a MiniLM window twice (0.25 s of 1.4 on a busy
    2-core machine)."""
    text = json.dumps({k: v for k, v in result.items() if k != "maps"}, separators=(",", ":"), allow_nan=False).encode()
    if "maps" not in result:
        return text
    maps = b",".join(b'"%s":"%s"' % (kind.encode(), blob) for kind, blob in result["maps"].items())
    return text[:-1] + b',"maps":{' + maps + b"}}"


def answer(run: Served, body) -> dict:
    """The model's answer to the fields in `body` and every map the page draws (blocking: call in
    a thread)."""
    import torch

    from analyze.maps import example_maps, most_attended

    task = run.task
    given = check_fields(task, body, run.run_dir)
    with run.lock, torch.inference_mode():
        start = time.perf_counter()
        example = task.example(given=given)
        run.last = (dict(given), example)
        shown = example_maps(task.model, task.sides, example)
        seconds = time.perf_counter() - start
    kinds = {}
    for kind, maps in shown["maps"].items():
        q_side, k_side = task.sides[kind]
        kinds[kind] = {"query": q_side, "key": k_side, "shape": list(maps.shape), "summary": np.round(shown["summaries"][kind], 4).tolist()}
    roles = {side: [task.roles[side][r] for r in ids] for side, ids in shown["role_ids"].items()}
    return {"run": run.name, "task": task.name, "input": shown["input"], "output": shown["output"], "answer": shown["answer"],
            "attended": most_attended(task, shown), "tokens": shown["tokens"], "roles": roles, "kinds": kinds,
            "model_seconds": round(seconds, 4), "maps": {kind: packed(maps) for kind, maps in shown["maps"].items()}}


def neuron(run: Served, body) -> dict:
    """The neuron view (analyze/neuron.py) of one query of the example of body["input"]; hidden
    keys (masked) get null for their bias and logit."""
    import torch

    from analyze.neuron import neuron_view

    if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
        raise QuadlabError('the request body must be {"input": {fields}, "kind": ..., "layer": ..., "head": ..., "query": ...}')
    given = check_fields(run.task, body["input"], run.run_dir)
    if not isinstance(body.get("kind"), str):
        raise QuadlabError(f"kind must be one of {', '.join(run.task.kinds)}")
    for k in ("layer", "head", "query"):
        if not isinstance(body.get(k), int) or isinstance(body.get(k), bool):
            raise QuadlabError(f"{k} must be a whole number")
    with run.lock, torch.inference_mode():
        example = run.last[1] if run.last[0] == given else run.task.example(given=given)  # usually the example just shown
        view = neuron_view(run.task.model, example["batch"]["inputs"], body["kind"], body["layer"], body["head"], body["query"])
    masked = view["masked"].astype(bool).tolist()
    out = {"scaling": float(view["scaling"]), "masked": masked}
    for key in ("query", "keys", "products", "scores", "bias", "logits", "attention"):
        out[key] = np.round(view[key].astype(float), 4).tolist()
    for key in ("bias", "logits"):
        out[key] = [None if hidden else v for v, hidden in zip(out[key], masked)]
    return out


def create_app(runs: dict[str, Served]):
    """The Starlette application: the page, its static files and the JSON API over `runs`."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from train.runs import first_line

    def error(message: str, status: int) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def read_json(request):
        """The body as JSON, refused when larger than MAX_BODY before it is all read."""
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            raise TooLarge(f"the request is larger than {MAX_BODY // 1024} KiB; shorten the input")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise TooLarge(f"the request is larger than {MAX_BODY // 1024} KiB; shorten the input")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise QuadlabError(f"the request body is not JSON ({first_line(err)})") from None

    async def model_call(request, work):
        name = request.path_params["name"]
        if name not in runs:
            return error(f"no run named {name!r} here; the runs are {', '.join(runs)}", 404)
        try:
            body = await read_json(request)
            content = await run_in_threadpool(lambda: to_json(work(runs[name], body)))  # rendered there too: 28 MB for MiniLM
            return Response(content, media_type="application/json")
        except QuadlabError as err:
            return error(str(err), 413 if isinstance(err, TooLarge) else 400)
        except Exception as err:  # a bug or a model failure: one line to the page, and the server keeps serving
            print(f"quadlab serve: {first_line(err)}", file=sys.stderr)
            return error(f"the model call failed ({first_line(err)})", 500)

    async def run_example(request):
        return await model_call(request, answer)

    async def run_neuron(request):
        return await model_call(request, neuron)

    async def list_runs(request):
        return JSONResponse([describe(run) for run in runs.values()])

    async def page(request):
        return FileResponse(STATIC / "index.html")

    return Starlette(routes=[
        Route("/", page), Route("/api/runs", list_runs), Route("/api/run/{name}", run_example, methods=["POST"]),
        Route("/api/run/{name}/neuron", run_neuron, methods=["POST"]), Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ])


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or a one-line error."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        raise QuadlabError(f"cannot listen on {host}:{port} ({err.strerror or err}); choose another --port or --host") from None
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def server(app):
    """A uvicorn server for `app` on the bound socket; `.run(sockets=[sock])` serves until Ctrl-C
    or `.should_exit = True`."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))


def start_in_thread(runs: dict[str, Served], host: str = "127.0.0.1", port: int = 0):
    """Serve `runs` from a background thread (tests, benchmarks, the README's screenshot):
    (url, stop) where stop() shuts the server down and waits for it."""
    sock = listen(host, port)
    running = server(create_app(runs))
    thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)

    def stop():
        running.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return address(sock), stop
