"""``bpo label RUN``: the page where people label a phase's pairs (Starlette, served by uvicorn).

Every request carries the run's token (``?token=``, printed with the URL; 403 without it), so
nobody else on the machine can post labels. A label is on disk (fsync'd) before the page hears
back, so a reload or a killed server loses nothing given. Requests run in uvicorn's thread pool;
the store's lock makes concurrent labellers safe (a pair is never labelled twice by one person,
nor beyond its overlap). The page is one HTML file, no build step.
"""

from __future__ import annotations

import html
import json
import secrets
from importlib.resources import files
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from bpo.human.labels import Item, LabelError, LabelQueue, LabelStore

KEYS = {"1": "left", "2": "right", "t": "tie", "s": "skip"}
MAX_BODY = 16 * 1024  # a label is a few dozen bytes; anything much larger is refused unread


class BadRequest(Exception):
    """A request body the API cannot take: too large (413), not a JSON object (400)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; refused before reading when it announces more than MAX_BODY bytes,
    and while reading when it sends more (a body without a length)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        raise BadRequest(413, f"request body of {length} bytes; at most {MAX_BODY} are taken")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise BadRequest(413, f"request body over {MAX_BODY} bytes")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(400, f"request body is not UTF-8 JSON ({type(err).__name__})") from None
    if not isinstance(obj, dict):
        raise BadRequest(400, f"request body must be a JSON object, not {type(obj).__name__}")
    return obj


class LabelPage:
    """The label page's endpoints over run ``out``'s label store; every request must carry the run's token."""

    def __init__(self, out: str | Path, overlap: int, phases: int):
        self.store, self.phases = LabelStore(out, overlap), phases
        self.token = self.store.queue.token()
        self.page = files("bpo.human").joinpath("label_page.html").read_text(encoding="utf-8")

    def guarded(self, endpoint):
        async def run(request: Request) -> Response:
            given = request.query_params.get("token") or request.headers.get("x-bpo-token") or ""
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                return JSONResponse({"error": "wrong or missing token: use the URL bpo label printed"}, 403)
            try:
                return await endpoint(request)
            except LabelError as err:
                return JSONResponse({"error": str(err)}, 409)
            except BadRequest as err:
                return JSONResponse({"error": str(err)}, err.status)

        return run

    def shown(self, item: Item | None, labeller: str) -> dict[str, Any]:
        """The pair as the page shows it (left/right, never the sampled order) and the progress."""
        store = self.store
        if store.queue.phases() != sorted({i.phase for i in store.items.values()}):
            store.refresh()  # training queued a new phase while the server ran
        phase = item.phase if item else max(store.queue.phases(), default=0)
        progress = {**store.progress(phase), "phases": self.phases, "mine": store.given().get(labeller, 0)}
        if item is None:
            return {"item": None, "progress": progress}
        left, right = item.responses[item.left], item.responses[1 - item.left]
        return {"item": {"id": item.id, "prompt": item.prompt, "left": left, "right": right}, "progress": progress}

    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.page)

    async def next_pair(self, request: Request) -> Response:
        who = request.query_params.get("labeller", "")
        return JSONResponse(self.shown(self.store.next_item(who, request.query_params.get("id")), who))

    async def label(self, request: Request) -> Response:
        data = await json_body(request)
        who, key, pair = str(data.get("labeller") or ""), str(data.get("key")), str(data.get("id"))
        if key not in KEYS:
            raise LabelError(f"key {key!r}: use 1 (left), 2 (right), t (tie) or s (skip)")
        item = self.store.items.get(pair)
        if item is None:
            raise LabelError(f"pair {pair!r} is not in this run's label queue")
        choice = {"1": item.left, "2": 1 - item.left}.get(key)
        await _in_thread(self.store.add, who, pair, choice, key == "s")
        return JSONResponse(self.shown(self.store.next_item(who), who))

    async def undo(self, request: Request) -> Response:
        who = str((await json_body(request)).get("labeller") or "")
        pair = await _in_thread(self.store.undo, who)
        return JSONResponse(self.shown(self.store.next_item(who, pair), who))

    async def summary(self, request: Request) -> Response:
        return HTMLResponse(summary_html(self.store, self.phases))


def create_app(out: str | Path, overlap: int, phases: int) -> Starlette:
    """The label page and its API for run ``out`` (``phases``: F, shown as progress)."""
    page = LabelPage(out, overlap, phases)
    return Starlette(
        routes=[
            Route("/", page.guarded(page.index)),
            Route("/api/next", page.guarded(page.next_pair)),
            Route("/api/label", page.guarded(page.label), methods=["POST"]),
            Route("/api/undo", page.guarded(page.undo), methods=["POST"]),
            Route("/summary", page.guarded(page.summary)),
        ]
    )


async def _in_thread(fn, *args):
    """Run a blocking store call (an fsync) off the event loop, so other labellers are not held up."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def summary_html(store: LabelStore, phases: int) -> str:
    """Progress per phase, labels per person and agreement between raters, as a small HTML page."""
    rows = []
    for phase in store.queue.phases():
        p = store.progress(phase)
        rows.append(f"<tr><td>{phase + 1} of {phases}</td><td>{p['labelled']} of {p['pairs']}</td></tr>")
    who_rows = "".join(f"<tr><td>{html.escape(w)}</td><td>{n}</td></tr>" for w, n in sorted(store.given().items()))
    agree = "".join(
        f"<tr><td>{html.escape(' / '.join(r['raters']))}</td><td>{r['pairs']}</td><td>{r['agreement']:.0%}</td>"
        f"<td>{'n/a' if r['kappa'] is None else format(r['kappa'], '.2f')}</td></tr>"
        for r in store.agreement()
    )
    return (
        "<!doctype html><meta charset=utf-8><title>bpo labels: summary</title>"
        "<style>body{font:15px system-ui;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
        "td,th{border:1px solid #ccc;padding:.3em .8em}</style><h1>Labels</h1>"
        f"<table><tr><th>phase</th><th>pairs labelled</th></tr>{''.join(rows)}</table>"
        f"<table><tr><th>labeller</th><th>labels</th></tr>{who_rows}</table>"
        "<h2>Agreement</h2><p>On the pairs both raters labelled (set annotator.overlap=2 or more for people to "
        "overlap): percent agreement and Cohen's kappa over response 1 / response 2 / tie.</p>"
        f"<table id=agreement><tr><th>raters</th><th>pairs</th><th>agreement</th><th>kappa</th></tr>{agree}</table>"
    )


def serve(out: str | Path, overlap: int, phases: int, host: str, port: int, say=print) -> None:
    """Serve the page until Ctrl-C, holding the label queue's lock (one writer of labels.jsonl)."""
    import socket

    import uvicorn

    from bpo.io import FolderLock

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:  # say it now, in one line
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as err:
            raise LabelError(f"cannot serve on {host}:{port} ({err.strerror}); pass --port with a free port") from None
    lock = FolderLock(Path(out) / "labels", what="label queue")
    try:
        app = create_app(out, overlap, phases)
        token = LabelQueue(out).token()
        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        if host not in ("127.0.0.1", "localhost", "::1"):
            say(
                f"warning: serving on {host} over plain HTTP: the token travels in clear. For labellers elsewhere "
                f"prefer the default host and an SSH tunnel (ssh -L {port}:127.0.0.1:{port} THIS_MACHINE)"
            )
        say(f"label the pairs at http://{shown_host}:{port}/?token={token}&labeller=YOUR_NAME")
        say(f"summary: http://{shown_host}:{port}/summary?token={token}   (Ctrl-C stops; nothing given is lost)")
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        lock.release()
