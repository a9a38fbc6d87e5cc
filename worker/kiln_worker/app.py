"""The worker's HTTP face: `POST /generate3d` and `GET /health` (worker protocol 1).

Order of checks on a dispatch, and why:
1. size, then signature (401): nothing about an unauthenticated request is acted on;
2. readiness (503): while the model loads, or after it failed to, kiln tries elsewhere;
3. the form (400): a request that can never succeed is refused for good;
4. duplicate task id (409) before capacity (429): the running copy of the task holds a
   slot, so a re-sent dispatch must hear "already running", not "busy".
Then 202, and the job runs in the background (jobs.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
import shutil
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from . import PROTOCOL_VERSION, __version__
from .callbacks import CallbackClient, RetryPolicy
from .config import Settings
from .jobs import AlreadyRunning, Busy, Job, Runner
from .pipelines.base import Pipeline, PipelineUnavailable
from .signing import SignatureError, Verifier

log = logging.getLogger("kiln_worker.app")

#: kiln's task ids are UUIDs; anything URL-path-safe of reasonable length is accepted.
TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
IMAGE_FORMATS = {"JPEG", "PNG", "WEBP"}
#: Temp directories of jobs older than this are leftovers of a crash, removed at start-up.
STALE_JOB_DIR_SECONDS = 24 * 3600


@dataclass
class WorkerState:
    """What `/health` reports."""

    status: str = "loading"  # "loading" | "healthy" | "unhealthy"
    error: str | None = None
    loaded_at: float | None = None


class BadRequest(Exception):
    """The dispatch can never succeed (→ 400 with this message)."""


def create_app(
    settings: Settings,
    pipeline: Pipeline,
    *,
    http: httpx.AsyncClient | None = None,
    verifier: Verifier | None = None,
) -> FastAPI:
    """Build the worker app. `http` and `verifier` can be injected by tests."""
    state = WorkerState()
    verifier = verifier or Verifier(settings.secret)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = http or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.callback_timeout, connect=10.0),
            follow_redirects=False,
            headers={"user-agent": f"kiln-worker/{__version__}"},
        )
        callbacks = CallbackClient(
            settings.secret,
            client,
            RetryPolicy(
                attempts=settings.callback_attempts,
                base=settings.callback_backoff,
                maximum=settings.callback_backoff_max,
            ),
            progress_attempts=settings.progress_attempts,
        )
        runner = Runner(
            pipeline,
            callbacks,
            slots=settings.slots,
            tmp_dir=settings.tmp_dir,
            progress_interval=settings.progress_interval,
            stop_grace=settings.stop_grace,
        )
        app.state.runner = runner
        app.state.worker = state
        _remove_stale_job_dirs(settings.tmp_dir)
        _start_loading(pipeline, state, asyncio.get_running_loop())
        try:
            yield
        finally:
            await runner.shutdown()
            if http is None:
                await client.aclose()

    app = FastAPI(
        title="kiln worker",
        version=__version__,
        summary=f"kiln worker protocol {PROTOCOL_VERSION}, pipeline `{pipeline.name}`",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """Ready for jobs (200) or not (503). Unsigned probes are answered too (load balancers)."""
        runner: Runner = request.app.state.runner
        status = state.status
        error = state.error
        if status == "healthy" and runner.stuck:
            status, error = "unhealthy", runner.stuck
        body: dict[str, Any] = {
            "status": status,
            "models_loaded": state.status == "healthy",
            "protocol": PROTOCOL_VERSION,
            "slots": runner.slots,
            "running": runner.running,
            "worker": pipeline.name,
            "version": __version__,
        }
        if status == "loading":
            body["phase"] = pipeline.load_phase
        if error:
            body["error"] = error
        if pipeline.warmup_report is not None and state.status == "healthy":
            body["warmup"] = pipeline.warmup_report
        return JSONResponse(body, status_code=200 if status == "healthy" else 503)

    @app.post("/generate3d")
    async def generate3d(request: Request) -> JSONResponse:
        """Accept a job (202) and run it in the background; see the module docstring."""
        runner: Runner = request.app.state.runner
        try:
            body = await _read_body(request, settings.max_request_bytes)
        except BadRequest as err:
            return _error(400, str(err))
        try:
            verifier.verify(request.headers, body)
        except SignatureError as err:
            client = request.client.host if request.client else "?"
            log.warning("dispatch from %s refused (401): %s", client, err)
            return _error(401, str(err))

        if state.status != "healthy" or runner.stuck:
            message = (
                "the model is still loading"
                if state.status == "loading"
                else f"the worker is unhealthy: {runner.stuck or state.error}"
            )
            return JSONResponse({"error": message, "status": state.status}, status_code=503)

        try:
            job = await _parse_dispatch(request, body, settings, pipeline)
        except BadRequest as err:
            log.warning("dispatch refused (400): %s", err)
            return _error(400, str(err))

        try:
            runner.submit(job)
        except AlreadyRunning:
            log.info("task %s: dispatched again while it runs here (409)", job.task_id)
            return JSONResponse({"status": "accepted", "task_id": job.task_id}, status_code=409)
        except Busy:
            log.info("task %s: refused, all %d slot(s) busy (429)", job.task_id, runner.slots)
            return JSONResponse(
                {
                    "error": f"all {runner.slots} slot(s) are busy",
                    "slots": runner.slots,
                    "running": runner.running,
                },
                status_code=429,
            )
        log.info(
            "task %s: accepted: %s picture of %d bytes, callbacks to %s, time limit %g s",
            job.task_id,
            job.image_format,
            len(job.image),
            urlsplit(job.callback_url).netloc.rpartition("@")[2],
            job.timeout,
        )
        return JSONResponse({"status": "accepted", "task_id": job.task_id}, status_code=202)

    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"request too large: over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"request too large: over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_dispatch(
    request: Request, body: bytes, settings: Settings, pipeline: Pipeline
) -> Job:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest("expected multipart/form-data with image, task_id and callback_url")

    # The body was read once for the signature; parse the same bytes.
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=32)
    except Exception as err:  # malformed multipart
        raise BadRequest(f"malformed multipart body: {err}") from None
    try:
        return await _job_from_form(form, settings, pipeline)
    finally:
        await form.close()


async def _job_from_form(form: FormData, settings: Settings, pipeline: Pipeline) -> Job:
    image = form.get("image")
    if not isinstance(image, UploadFile):
        raise BadRequest("missing `image` file field")
    data = await image.read()
    if not data:
        raise BadRequest("the `image` file is empty")
    image_format = _image_format(data)

    task_id = await _text(form, "task_id")
    if not task_id:
        raise BadRequest("missing `task_id`")
    if not TASK_ID.match(task_id):
        raise BadRequest("`task_id` must be 1-128 characters of A-Z a-z 0-9 . - _")

    callback_url = (await _text(form, "callback_url")).rstrip("/")
    if not callback_url:
        raise BadRequest("missing `callback_url`")
    try:
        parts = urlsplit(callback_url)
        parts.port  # noqa: B018  # raises ValueError for a port that is not one
    except ValueError as err:
        raise BadRequest(f"`callback_url` is not a valid URL: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("`callback_url` must be an absolute http or https URL")
    if parts.query or parts.fragment:
        raise BadRequest("`callback_url` must not have a query or a fragment")

    # Validated even when absent (kiln leaves the field out when the params are empty):
    # a job's params are always the pipeline's complete settings, which the OOM retry
    # lowers and the metadata compares.
    raw: Any = {}
    params_text = await _text(form, "params")
    if params_text.strip():
        try:
            raw = json.loads(params_text)
        except ValueError as err:
            raise BadRequest(f"`params` is not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise BadRequest("`params` must be a JSON object")
    try:
        params = pipeline.validate_params(raw)
    except ValueError as err:
        raise BadRequest(f"invalid params: {err}") from None

    timeout = settings.timeout
    timeout_text = (await _text(form, "timeout_seconds")).strip()
    if timeout_text:
        try:
            requested = float(timeout_text)
        except ValueError:
            raise BadRequest("`timeout_seconds` must be a number of seconds") from None
        if not math.isfinite(requested) or requested <= 0:
            raise BadRequest("`timeout_seconds` must be a positive number of seconds")
        timeout = min(timeout, requested)

    return Job(
        task_id=task_id,
        callback_url=callback_url,
        image=data,
        image_format=image_format,
        params=params,
        timeout=timeout,
    )


async def _text(form: FormData, name: str) -> str:
    """A text field; a client that sent it as a file part is accepted too."""
    value = form.get(name)
    if value is None:
        return ""
    if isinstance(value, UploadFile):
        raw = await value.read()
        try:
            return raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise BadRequest(f"`{name}` is not UTF-8 text") from None
    return value.strip()


def _image_format(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as img:
            image_format = img.format or ""
            img.verify()
    except Exception:
        raise BadRequest("`image` is not a readable JPEG, PNG or WebP picture") from None
    if image_format not in IMAGE_FORMATS:
        raise BadRequest(f"unsupported image format {image_format}: JPEG, PNG or WebP only")
    return image_format


def _start_loading(pipeline: Pipeline, state: WorkerState, loop: asyncio.AbstractEventLoop) -> None:
    """Load the model on a daemon thread while `/health` answers 503 `loading`.

    A daemon thread rather than the loop's executor: a worker told to stop while it
    loads a 4B-parameter model should stop, not finish loading first.
    """

    def load() -> None:
        started = time.monotonic()
        log.info("loading the %s pipeline…", pipeline.name)
        try:
            pipeline.load()
        except BaseException as err:
            message = not_ready_reason(pipeline, err)
            log.error("%s", message, exc_info=not isinstance(err, PipelineUnavailable))
            log.error(
                "the worker stays up and answers /health with 503 and this reason; "
                "fix it and restart the worker"
            )
            _set(state, "unhealthy", message)
        else:
            report = pipeline.warmup_report
            log.info(
                "the %s pipeline is ready (%.1f s)%s",
                pipeline.name,
                time.monotonic() - started,
                f"; warm-up: {json.dumps(report)}" if report else "",
            )
            _set(state, "healthy", None)

    def _set(target: WorkerState, status: str, error: str | None) -> None:
        def apply() -> None:
            target.status = status
            target.error = error
            target.loaded_at = time.time()

        try:
            loop.call_soon_threadsafe(apply)
        except RuntimeError:  # the loop is gone: the worker stopped meanwhile
            pass

    threading.Thread(target=load, name="kiln-load", daemon=True).start()


#: Longest reason `/health` gives; the log has the whole of it.
REASON_CHARS = 2000


def not_ready_reason(pipeline: Pipeline, err: BaseException) -> str:
    """The sentence `/health` gives for a load that failed: which step, and why.

    `PipelineUnavailable` carries a message written for people (what is missing and
    how to get it); anything else is shown as its type and message.
    """
    detail = str(err) if isinstance(err, PipelineUnavailable) else f"{type(err).__name__}: {err}"
    detail = detail.strip() or type(err).__name__
    message = f"the {pipeline.name} pipeline failed while {pipeline.load_phase}: {detail}"
    if len(message) > REASON_CHARS:
        message = message[: REASON_CHARS - 1] + "…"
    return message


def _remove_stale_job_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    cutoff = time.time() - STALE_JOB_DIR_SECONDS
    for entry in root.glob("job-*"):
        try:
            if entry.is_dir() and entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass
