"""Test harness: a real worker and a real callback receiver, on loopback sockets.

Both run uvicorn on a thread with a socket bound to 127.0.0.1:0, so every test talks
HTTP over real sockets as kiln would. The receiver plays kiln's callback side: it
verifies every signature (with the worker's own Verifier and, for JSON bodies, with the
official `standardwebhooks` package), records each callback, and answers with scripted
status codes when a test wants kiln to fail.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kiln_worker.app import create_app
from kiln_worker.config import Settings
from kiln_worker.pipelines import Pipeline
from kiln_worker.signing import Secret, SignatureError, Verifier, signed_headers
from tests.standin import StandInPipeline

SECRET_TEXT = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()
OTHER_SECRET_TEXT = "whsec_" + base64.b64encode(bytes(range(101, 133))).decode()


def png_bytes(color: tuple[int, int, int] = (200, 120, 40), size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


_RUNNING_SERVERS: list[ServerThread] = []


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 with a port chosen by the system.

    Servers started by a test are stopped together after it (uvicorn notices a stop
    request within 0.1 s; stopping them one by one would add that up).
    """

    def __init__(self, app: Any) -> None:
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are
        # TCP, and accepted connections inherit the listener's proto (see __main__._bind).
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), daemon=True
        )

    def start(self, *, per_test: bool = True) -> ServerThread:
        if per_test:
            _RUNNING_SERVERS.append(self)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(autouse=True)
def _stop_servers() -> Iterator[None]:
    yield
    servers = list(_RUNNING_SERVERS)
    _RUNNING_SERVERS.clear()
    for server in servers:
        server.server.should_exit = True
    for server in servers:
        server.stop()


@dataclass
class Call:
    """One callback as the receiver saw it."""

    kind: str  # "progress" | "result" | "status"
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int
    at: float
    json: dict[str, Any] | None = None
    name: str | None = None
    filename: str | None = None
    file_type: str | None = None
    data: bytes | None = None
    signature_error: str | None = None
    official_ok: bool | None = None


@dataclass
class Receiver:
    """kiln's callback endpoints, recorded."""

    secret: str = SECRET_TEXT
    #: Scripted answers: key -> status codes answered in turn before 200. Keys are
    #: "progress", "status", "result" (any file) or "result:model.glb" (one file).
    script: dict[str, list[int]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.verifier = Verifier(Secret(self.secret))
        self.cond = threading.Condition()
        self.server = ServerThread(
            Starlette(routes=[Route("/cb/{rest:path}", self._handle, methods=["POST"])])
        )

    @property
    def url(self) -> str:
        return f"{self.server.url}/cb"

    async def _handle(self, request: Request) -> JSONResponse:
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        rest = request.path_params["rest"]
        kind = rest.split("/", 1)[0]
        call = Call(
            kind=kind,
            path="/" + rest,
            headers=headers,
            body=body,
            answered=200,
            at=time.monotonic(),
        )
        try:
            self.verifier.verify(headers, body)
        except SignatureError as err:
            call.signature_error = str(err)
        if kind == "result":

            async def replay() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            form = await Request(request.scope, replay).form()
            name = form.get("name")
            upload = form.get("file")
            call.name = name if isinstance(name, str) else None
            if upload is not None and not isinstance(upload, str):
                call.filename = upload.filename
                call.file_type = upload.content_type
                call.data = await upload.read()
        else:
            call.json = json.loads(body)
            call.official_ok = _official_verify(self.secret, body, headers)
        status = 401 if call.signature_error else self._scripted(call)
        call.answered = status
        with self.cond:
            self.calls.append(call)
            self.cond.notify_all()
        if status == 200:
            return JSONResponse({"ok": True})
        return JSONResponse(
            {"error": {"code": "scripted", "message": f"scripted {status}"}}, status_code=status
        )

    def _scripted(self, call: Call) -> int:
        for key in (f"{call.kind}:{call.name}", call.kind):
            queue = self.script.get(key)
            if queue:
                return queue.pop(0)
        return 200

    def wait_for(
        self, predicate: Callable[[list[Call]], bool], timeout: float = 10.0
    ) -> list[Call]:
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self.calls), timeout=timeout):
                raise AssertionError(f"timed out; calls so far: {self.summary()}")
            return list(self.calls)

    def wait_status(self, timeout: float = 10.0) -> Call:
        calls = self.wait_for(
            lambda cs: any(c.kind == "status" and c.answered == 200 for c in cs), timeout
        )
        return next(c for c in calls if c.kind == "status" and c.answered == 200)

    def of(self, kind: str) -> list[Call]:
        with self.cond:
            return [c for c in self.calls if c.kind == kind]

    def summary(self) -> list[str]:
        out = []
        for c in self.calls:
            what = (
                c.name
                if c.kind == "result"
                else (c.json or {}).get("status") or (c.json or {}).get("progress")
            )
            out.append(f"{c.kind}:{what}->{c.answered}")
        return out


def _official_verify(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    from standardwebhooks.webhooks import Webhook

    try:
        Webhook(secret).verify(body.decode(), headers, json_parse=False)
    except Exception:
        return False
    return True


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.server.start()
    yield r  # stopped by _stop_servers


@dataclass
class WorkerHandle:
    url: str
    pipeline: Pipeline
    settings: Settings
    app: Any
    server: ServerThread

    @property
    def runner(self) -> Any:
        return self.app.state.runner

    def health(self) -> httpx.Response:
        return httpx.get(f"{self.url}/health", timeout=5)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until no job holds a slot."""
        deadline = time.monotonic() + timeout
        while self.runner.running:
            if time.monotonic() > deadline:
                raise AssertionError("the worker still runs a job")
            time.sleep(0.005)

    def wait_healthy(self, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            response = self.health()
            if response.status_code == 200:
                return response.json()
            if time.monotonic() > deadline:
                raise AssertionError(f"worker not healthy: {response.json()}")
            time.sleep(0.01)


def test_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        secret=Secret(SECRET_TEXT),
        host="127.0.0.1",
        port=0,
        tmp_dir=tmp_path / "jobs",
        timeout=30.0,
        callback_attempts=4,
        callback_backoff=0.01,
        callback_backoff_max=0.04,
        callback_timeout=5.0,
        progress_interval=0.02,
        stop_grace=5.0,
    )
    values.update(overrides)
    return Settings(**values)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def start_worker(
    tmp_dir: Path,
    pipeline: Pipeline | None = None,
    *,
    wait_ready: bool = True,
    per_test: bool = True,
    **overrides: Any,
) -> WorkerHandle:
    settings = test_settings(tmp_dir, **overrides)
    pipeline = pipeline or StandInPipeline(settings)
    app = create_app(settings, pipeline)
    server = ServerThread(app).start(per_test=per_test)
    handle = WorkerHandle(server.url, pipeline, settings, app, server)
    if wait_ready:
        handle.wait_healthy()
    return handle


@pytest.fixture
def make_worker(tmp_path: Path) -> Callable[..., WorkerHandle]:
    """Start a worker (stand-in pipeline unless given) for this test; stopped after it."""

    def start(pipeline: Pipeline | None = None, **overrides: Any) -> WorkerHandle:
        return start_worker(tmp_path, pipeline, **overrides)

    return start


def build_dispatch(
    worker_url: str,
    *,
    task_id: str | None = "0192f7c4-1111-7aaa-8bbb-000000000001",
    callback_url: str | None = None,
    image: bytes | None = None,
    image_name: str = "picture.png",
    image_type: str = "image/png",
    params: Any = None,
    timeout_seconds: Any = None,
    extra: dict[str, str] | None = None,
) -> httpx.Request:
    """A dispatch as kiln sends it, multipart encoded by httpx (not by the worker's encoder)."""
    data: dict[str, str] = {}
    if task_id is not None:
        data["task_id"] = task_id
    if callback_url is not None:
        data["callback_url"] = callback_url
    if params is not None:
        data["params"] = params if isinstance(params, str) else json.dumps(params)
    if timeout_seconds is not None:
        data["timeout_seconds"] = str(timeout_seconds)
    data.update(extra or {})
    files = {"image": (image_name, png_bytes() if image is None else image, image_type)}
    request = httpx.Request("POST", f"{worker_url}/generate3d", data=data, files=files)
    request.read()
    return request


def send(
    request: httpx.Request,
    *,
    secret: str | None = SECRET_TEXT,
    headers: dict[str, str] | None = None,
    now: float | None = None,
) -> httpx.Response:
    """Sign (unless `secret` is None) and send a built request."""
    if secret is not None:
        request.headers.update(signed_headers(Secret(secret), request.content, now=now))
    request.headers.update(headers or {})
    with httpx.Client(timeout=10) as client:
        return client.send(request)


def dispatch(worker_url: str, **kwargs: Any) -> httpx.Response:
    return send(build_dispatch(worker_url, **kwargs))
