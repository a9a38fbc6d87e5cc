"""Signed callbacks to kiln, with retries (worker protocol, "Callbacks").

`CallbackClient` delivers one callback: it signs every attempt anew (new `webhook-id`,
fresh timestamp), retries with exponential backoff and jitter when kiln could not record
it (5xx, 429, or no answer), and stops at once on the answers that say retrying is
pointless (409: the task has ended; 400/401/403/404/413 and other 4xx).

`JobReporter` sends one job's callbacks in order from a single asyncio task: result
files in the order the pipeline finished them, progress coalesced to the latest value
and throttled between them. The final status is sent by the job runner once the
reporter has drained (see jobs.py), so it is always the job's last callback.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from .signing import Secret, signed_headers

log = logging.getLogger("kiln_worker.callbacks")


class Outcome(enum.Enum):
    OK = "ok"
    #: kiln answered 409: the task has ended there (finished, timed out, canceled).
    ENDED = "ended"
    #: kiln refused the callback for good (400, 401, 403, 404, 413, other 4xx).
    REJECTED = "rejected"
    #: Every attempt failed with a 5xx, 429 or a network error.
    GAVE_UP = "gave_up"


@dataclass(frozen=True)
class Delivery:
    outcome: Outcome
    status_code: int | None = None
    #: A short description for logs and error messages (kiln's answer, or the error).
    detail: str = ""
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits about `base * 2**n`, capped."""

    attempts: int = 8
    base: float = 0.5
    maximum: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based).

        "Equal jitter": half the exponential delay, plus a random part up to the other
        half, so retries from many jobs spread out but never come back immediately.
        """
        ceiling = min(self.maximum, self.base * 2.0**attempt)
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


def encode_multipart(
    fields: list[tuple[str, str]], files: list[tuple[str, str, str, bytes]]
) -> tuple[bytes, str]:
    """Build a multipart/form-data body in memory, so that its exact bytes can be signed.

    `files` holds (field name, file name, content type, bytes). Returns the body and the
    Content-Type header value.
    """
    boundary = f"kiln-worker-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, filename, content_type, data in files:
        parts.append(
            (
                f"--{boundary}\r\n"
                f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: {content_type}\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


#: Content types of the files workers send; a fixed table, not the system's mime.types,
#: so that the same file is sent the same way on every machine.
CONTENT_TYPES = {
    ".glb": "model/gltf-binary",
    ".gltf": "model/gltf+json",
    ".obj": "model/obj",
    ".mtl": "model/mtl",
    ".zip": "application/zip",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".mp4": "video/mp4",
    ".json": "application/json",
}


def content_type_for(name: str) -> str:
    dot = name.rfind(".")
    return CONTENT_TYPES.get(name[dot:].lower() if dot >= 0 else "", "application/octet-stream")


Sleep = Callable[[float], Awaitable[None]]


class CallbackClient:
    """Delivers signed callbacks to kiln."""

    def __init__(
        self,
        secret: Secret,
        http: httpx.AsyncClient,
        policy: RetryPolicy | None = None,
        *,
        progress_attempts: int = 2,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._http = http
        self.policy = policy or RetryPolicy()
        self._progress_attempts = progress_attempts
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock

    async def deliver(
        self,
        url: str,
        body: bytes,
        content_type: str,
        *,
        what: str,
        attempts: int | None = None,
    ) -> Delivery:
        """POST `body` to `url` until kiln records it or says to stop."""
        attempts = attempts or self.policy.attempts
        detail = ""
        status: int | None = None
        for attempt in range(attempts):
            headers = signed_headers(self._secret, body, now=self._clock())
            headers["content-type"] = content_type
            try:
                response = await self._http.post(url, content=body, headers=headers)
            except httpx.HTTPError as err:  # connection refused, reset, timeout, …
                status = None
                detail = _error_text(err)
            except Exception as err:
                # Not the network: a URL httpx refuses (InvalidURL is no HTTPError), or a
                # bug. Every attempt would fail alike, and raising would end the job's
                # reporter without a word.
                detail = _error_text(err)
                log.error("%s: giving up: %s", what, detail)
                return Delivery(Outcome.GAVE_UP, None, detail, attempt + 1)
            else:
                status = response.status_code
                detail = _describe(response)
                if 200 <= status < 300:
                    return Delivery(Outcome.OK, status, detail, attempt + 1)
                if status == 409:
                    return Delivery(Outcome.ENDED, status, detail, attempt + 1)
                if 400 <= status < 500 and status != 429:
                    return Delivery(Outcome.REJECTED, status, detail, attempt + 1)
            if attempt + 1 < attempts:
                delay = self.policy.delay(attempt, self._rng)
                log.warning(
                    "%s: attempt %d/%d failed (%s); retrying in %.2f s",
                    what,
                    attempt + 1,
                    attempts,
                    detail,
                    delay,
                )
                await self._sleep(delay)
        return Delivery(Outcome.GAVE_UP, status, detail, attempts)

    async def progress(self, base: str, task_id: str, percent: int, stage: str) -> Delivery:
        body = json.dumps(
            {"taskId": task_id, "progress": percent, "stage": stage}, separators=(",", ":")
        ).encode()
        return await self.deliver(
            f"{base}/progress",
            body,
            "application/json",
            what=f"task {task_id}: progress {percent}% ({stage})",
            attempts=self._progress_attempts,
        )

    async def result(self, base: str, task_id: str, name: str, data: bytes) -> Delivery:
        body, content_type = encode_multipart(
            [("name", name)], [("file", name, content_type_for(name), data)]
        )
        return await self.deliver(
            f"{base}/result/{quote(task_id, safe='')}",
            body,
            content_type,
            what=f"task {task_id}: result {name} ({len(data)} bytes)",
        )

    async def status(
        self,
        base: str,
        task_id: str,
        status: str,
        error: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Delivery:
        payload: dict[str, Any] = {"taskId": task_id, "status": status}
        if error is not None:
            payload["error"] = error
        if metadata:
            payload["metadata"] = metadata
        body = json.dumps(payload, separators=(",", ":")).encode()
        return await self.deliver(
            f"{base}/status", body, "application/json", what=f"task {task_id}: status {status}"
        )


def _error_text(err: Exception) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _describe(response: httpx.Response) -> str:
    """`HTTP 503: <kiln's error message>`, short enough for a log line."""
    text = ""
    try:
        payload = response.json()
        if isinstance(payload, dict) and "error" in payload:
            error = payload["error"]
            message = error.get("message") if isinstance(error, dict) else error
            # Whatever a proxy or another version put there: text, for the log line.
            text = "" if message is None else str(message)
    except ValueError:
        text = response.text
    text = " ".join(text.split())[:200]
    return f"HTTP {response.status_code}" + (f": {text}" if text else "")


class JobReporter:
    """Sends one job's result and progress callbacks, in order, from one task.

    The pipeline thread never waits for the network: it offers results and progress
    through the event loop (`offer_*` run on the loop thread), and this task sends them.
    Results go first and in order; progress is coalesced to the newest value, sent only
    when it moved by at least one percent or changed stage, and at most once per
    `interval` seconds (the protocol asks for "not faster than a few times a second").
    `drain` and `abort` return only once the task has finished, so the final status,
    sent after either, is always the job's last callback.
    """

    def __init__(
        self,
        client: CallbackClient,
        callback_url: str,
        task_id: str,
        *,
        interval: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._base = callback_url
        self._task_id = task_id
        self._interval = interval
        self._clock = clock
        self._results: collections.deque[tuple[Path, str]] = collections.deque()
        self._progress: tuple[int, str] | None = None
        self._last_progress: tuple[int, str] | None = None
        self._last_progress_at = float("-inf")
        self._wake = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        #: Set when kiln answered a callback in a way that ends the job's callbacks.
        self.stopped: Delivery | None = None
        self.stopped_event = asyncio.Event()
        #: Names of the result files kiln recorded, in order.
        self.delivered: list[str] = []
        #: The result being sent now, or the one whose sending stopped the job.
        self.current: str | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"callbacks-{self._task_id}"
        )

    # -- loop-thread API -----------------------------------------------------------

    def offer_progress(self, percent: float, stage: str) -> None:
        if self._closed:
            return
        value = int(max(0.0, min(100.0, percent)))
        last = self._progress or self._last_progress
        if last is not None:
            # Never report going backwards (a retry after an OOM starts over).
            value = max(value, last[0])
            if value == last[0] and stage == last[1]:
                return
        self._progress = (value, stage)
        self._wake.set()

    def offer_result(self, path: Path, name: str) -> None:
        if self._closed or self.stopped is not None:
            _unlink(path)
            return
        self._results.append((path, name))
        self._wake.set()

    async def drain(self) -> None:
        """Accept nothing more; return once every offered result was sent (or sending stopped).

        Pending progress is dropped: the status that follows says more.
        """
        self._closed = True
        self._progress = None
        self._wake.set()
        await self._finished()

    async def abort(self) -> None:
        """Drop everything not yet sent (the job failed or was stopped), stop sending, and wait."""
        self._closed = True
        self._progress = None
        while self._results:
            _unlink(self._results.popleft()[0])
        if self._task is not None and not self._task.done():
            self._task.cancel()
        await self._finished()

    async def _finished(self) -> None:
        if self._task is not None:
            # asyncio.wait, unlike awaiting the task, does not cancel it when we are cancelled.
            await asyncio.wait({self._task})

    # -- the sending task ----------------------------------------------------------

    async def _run(self) -> None:
        try:
            while self.stopped is None:
                self._wake.clear()
                if self._results:
                    path, name = self._results.popleft()
                    await self._send_result(path, name)
                    continue
                if self._closed:
                    break
                if self._progress is not None:
                    wait = self._last_progress_at + self._interval - self._clock()
                    if wait <= 0:
                        await self._send_progress()
                    else:
                        try:
                            await asyncio.wait_for(self._wake.wait(), timeout=wait)
                        except asyncio.TimeoutError:
                            pass
                    continue
                await self._wake.wait()
        finally:
            while self._results:
                _unlink(self._results.popleft()[0])

    async def _send_progress(self) -> None:
        assert self._progress is not None
        percent, stage = self._progress
        self._progress = None
        self._last_progress = (percent, stage)
        self._last_progress_at = self._clock()
        delivery = await self._client.progress(self._base, self._task_id, percent, stage)
        if delivery.outcome in (Outcome.ENDED, Outcome.REJECTED):
            self._stop(delivery, f"progress {percent}%")
        elif not delivery.ok:
            # Progress is optional and soon stale: a lost one is not worth failing for.
            log.warning("task %s: progress callback dropped (%s)", self._task_id, delivery.detail)

    async def _send_result(self, path: Path, name: str) -> None:
        self.current = name
        try:
            data = path.read_bytes()
        except OSError as err:
            self._stop(Delivery(Outcome.REJECTED, None, f"cannot read {name}: {err}"), name)
            return
        try:
            delivery = await self._client.result(self._base, self._task_id, name, data)
        finally:
            # Sent or not, the local copy has served its purpose.
            _unlink(path)
        if delivery.ok:
            self.delivered.append(name)
            self.current = None
            log.info("task %s: sent %s (%d bytes)", self._task_id, name, len(data))
        else:
            self._stop(delivery, name)

    def _stop(self, delivery: Delivery, what: str) -> None:
        level = logging.INFO if delivery.outcome is Outcome.ENDED else logging.ERROR
        log.log(
            level,
            "task %s: callbacks stop: %s got %s (%s)",
            self._task_id,
            what,
            delivery.outcome.value,
            delivery.detail,
        )
        self.stopped = delivery
        self.stopped_event.set()


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as err:
        log.warning("cannot delete %s: %s", path, err)
