"""Running jobs: slots, the GPU thread, OOM retry, timeouts, and the final status.

The life of a job, once `POST /generate3d` accepted it:

1. Its picture goes to a directory of its own under the temp dir.
2. The pipeline runs on a worker thread (GPU work blocks; the event loop must not).
   Progress and finished files flow back through the loop to the job's `JobReporter`,
   which sends them to kiln while the pipeline goes on.
3. A CUDA out-of-memory error frees the cache and retries the run once (seed 002 §6).
4. The job ends in one of four ways:
   - the pipeline returns: remaining files are sent, then `completed`;
   - the pipeline raises: `failed` with a sentence saying why;
   - the time limit passes: the pipeline is told to stop, `failed` with a timeout;
   - kiln answers a callback with 409 (the task ended there) or refuses it for good:
     the pipeline is told to stop and nothing more is sent (except a `failed` status
     after a 413 or after giving up on a result, when kiln may still record it).
5. Its slot is freed *before* the final status is sent, so that kiln, which dispatches
   the next queued task as soon as it records the status, never finds the worker busy.
   A stopped pipeline keeps its slot until its thread has really returned: the GPU is
   not free before that.
6. Its directory is removed.

Python cannot kill a thread, so "stop" means: `JobContext.progress` and
`check_cancelled` raise `JobCancelled` from then on, and the pipeline checks them at
every sampler step. A thread that does not return within `stop_grace` seconds turns the
health answer to `unhealthy`, so kiln takes the worker out of rotation until it is
restarted.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .callbacks import CallbackClient, JobReporter, Outcome
from .pipelines.base import (
    RESULT_NAME,
    JobCancelled,
    JobFailed,
    JobInput,
    Pipeline,
)

log = logging.getLogger("kiln_worker.jobs")

OOM_MESSAGE = (
    "The GPU ran out of memory (CUDA out of memory), also on a second try after freeing "
    "its cache. Try a lower resolution or texture size, or a smaller picture."
)
OOM_NOTHING_LOWER = (
    "The GPU ran out of memory (CUDA out of memory) at the lowest settings this worker "
    "tries. Make sure nothing else uses the GPU (nvidia-smi), or use a card with more memory."
)


class Busy(Exception):
    """Every slot is taken (→ 429)."""


class AlreadyRunning(Exception):
    """A job with this task id is running here (→ 409)."""


class RunContext:
    """The `JobContext` handed to the pipeline thread (see pipelines/base.py)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, reporter: JobReporter, task_id: str
    ) -> None:
        self._loop = loop
        self._reporter = reporter
        self._task_id = task_id
        self._cancel = threading.Event()
        self.cancel_reason = ""
        self.attempt = 0
        #: Sent with the `completed` status (see pipelines/base.py, `JobContext.metadata`).
        self.metadata: dict[str, Any] = {}
        #: Names emitted so far, across attempts: a retry does not send a file twice
        #: (kiln refuses the same name with different bytes with 409).
        self.emitted: list[str] = []
        self._lock = threading.Lock()

    # Called from the pipeline thread.

    def progress(self, percent: float, stage: str) -> None:
        self.check_cancelled()
        self._call(self._reporter.offer_progress, float(percent), stage)

    def emit(self, path: Path, name: str | None = None) -> None:
        self.check_cancelled()
        accepted = self._register(Path(path), name)
        if accepted is not None:
            self._call(self._reporter.offer_result, *accepted)

    def emit_from_loop(self, path: Path) -> None:
        """`emit` for the loop thread (the files a pipeline returned instead of emitting)."""
        accepted = self._register(Path(path), None)
        if accepted is not None:
            self._reporter.offer_result(*accepted)

    def _register(self, path: Path, name: str | None) -> tuple[Path, str] | None:
        name = name or path.name
        if not RESULT_NAME.match(name):
            raise ValueError(
                f"result file name `{name}` is not 1-128 characters of A-Z a-z 0-9 . - _ "
                "(not starting with `.`)"
            )
        with self._lock:
            if name in self.emitted:
                log.info("task %s: %s was already sent by an earlier attempt", self._task_id, name)
                path.unlink(missing_ok=True)
                return None
            self.emitted.append(name)
        return path, name

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled(self.cancel_reason or "the job was stopped")

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # Called from the loop.

    def cancel(self, reason: str) -> None:
        if not self._cancel.is_set():
            self.cancel_reason = reason
            self._cancel.set()

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the worker is shutting down
            raise JobCancelled("the worker is shutting down") from None


@dataclass
class Job:
    task_id: str
    callback_url: str
    image: bytes
    image_format: str
    params: dict[str, object]
    timeout: float
    accepted_at: float = field(default_factory=time.monotonic)
    context: RunContext | None = None


@dataclass
class FinalStatus:
    status: str  # "completed" | "failed"
    error: str | None = None
    metadata: dict[str, Any] | None = None


class Runner:
    """Owns the slots and runs accepted jobs to their end."""

    def __init__(
        self,
        pipeline: Pipeline,
        client: CallbackClient,
        *,
        slots: int = 1,
        tmp_dir: Path,
        progress_interval: float = 0.25,
        stop_grace: float = 120.0,
        cancel_wait: float = 5.0,
    ) -> None:
        self.pipeline = pipeline
        self.client = client
        self.slots = slots
        self.tmp_dir = tmp_dir
        self.progress_interval = progress_interval
        self.stop_grace = stop_grace
        #: How long a stopped job may take to return before its status goes out anyway.
        self.cancel_wait = min(cancel_wait, stop_grace)
        #: Jobs holding a slot, by task id.
        self._jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set when a stopped job's thread outlived `stop_grace`: the GPU is wedged.
        self.stuck: str | None = None

    @property
    def running(self) -> int:
        return len(self._jobs)

    def submit(self, job: Job) -> None:
        """Take a slot for `job` and start it; `AlreadyRunning` or `Busy` otherwise.

        Synchronous on purpose: no `await` between the check and taking the slot, so two
        dispatches arriving together cannot both get the last slot.
        """
        if job.task_id in self._jobs:
            raise AlreadyRunning(job.task_id)
        if len(self._jobs) >= self.slots:
            raise Busy()
        self._jobs[job.task_id] = job
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"job-{job.task_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def shutdown(self) -> None:
        """Stop every job without a final status: kiln re-dispatches tasks of a worker that left."""
        for job in list(self._jobs.values()):
            if job.context is not None:
                job.context.cancel("the worker is shutting down")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one job ---------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        loop = asyncio.get_running_loop()
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"job-{job.task_id[:64]}-", dir=self.tmp_dir))
        reporter = JobReporter(
            self.client, job.callback_url, job.task_id, interval=self.progress_interval
        )
        ctx = RunContext(loop, reporter, job.task_id)
        job.context = ctx
        reporter.start()
        work: asyncio.Future[list[Path]] | None = None
        slot_released = False

        def release_slot() -> None:
            nonlocal slot_released
            if not slot_released:
                slot_released = True
                self._jobs.pop(job.task_id, None)

        try:
            extension = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}.get(job.image_format, "img")
            image_path = workdir / f"input.{extension}"
            image_path.write_bytes(job.image)
            job_input = JobInput(
                task_id=job.task_id,
                image_path=image_path,
                image_format=job.image_format,
                params=dict(job.params),
                workdir=workdir,
                timeout=job.timeout,
            )
            work = _in_daemon_thread(
                loop, f"kiln-job-{job.task_id[:32]}", self._work, job_input, ctx
            )
            # Whatever path the job takes, its outcome counts as seen (no asyncio warning).
            work.add_done_callback(lambda f: f.cancelled() or f.exception())
            final = await self._supervise(job, ctx, reporter, work)
            # Nothing may follow the status: stop the reporter first.
            await reporter.abort()
            if not work.done():
                # Stopped (timeout, or kiln ended the task): give the pipeline a moment to
                # notice, so that the slot is free when kiln reads the status.
                await asyncio.wait({work}, timeout=self.cancel_wait)
            if work.done():
                release_slot()
            if final is not None:
                await self._send_status(job, final)
            if not work.done():
                await self._await_stopped(job, work)
        except asyncio.CancelledError:
            ctx.cancel("the worker is shutting down")
            raise
        except Exception:
            # A bug in the worker itself: say so rather than leave the task hanging.
            log.exception("task %s: the worker failed while running it", job.task_id)
            ctx.cancel("worker error")
            await reporter.abort()
            if work is None or work.done():
                release_slot()
            await self._send_status(
                job, FinalStatus("failed", "Internal error in the worker (see its log).")
            )
            if work is not None and not work.done():
                await self._await_stopped(job, work)
        finally:
            release_slot()
            await reporter.abort()
            if work is not None and not work.done():
                # The thread may still write in workdir: remove it when the thread returns.
                work.add_done_callback(lambda _: shutil.rmtree(workdir, ignore_errors=True))
            else:
                shutil.rmtree(workdir, ignore_errors=True)

    async def _supervise(
        self,
        job: Job,
        ctx: RunContext,
        reporter: JobReporter,
        work: asyncio.Future[list[Path]],
    ) -> FinalStatus | None:
        """Wait for the pipeline, the deadline or kiln's word; return the status to send."""
        deadline = job.accepted_at + job.timeout
        stopped: asyncio.Future[Any] = asyncio.ensure_future(reporter.stopped_event.wait())
        try:
            waited: set[asyncio.Future[Any]] = {work, stopped}
            done, _ = await asyncio.wait(
                waited,
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if work in done:
                try:
                    leftovers = work.result()
                except JobCancelled:
                    return self._after_stop(reporter)
                except JobFailed as err:
                    log.warning("task %s: failed: %s", job.task_id, err)
                    return FinalStatus("failed", str(err))
                except Exception as err:
                    log.error(
                        "task %s: the %s pipeline failed",
                        job.task_id,
                        self.pipeline.name,
                        exc_info=err,
                    )
                    return FinalStatus("failed", _describe_failure(self.pipeline.name, err))
                try:
                    for path in leftovers:
                        if Path(path).exists():
                            ctx.emit_from_loop(Path(path))
                except ValueError as err:  # a badly named file: a bug in the pipeline
                    log.error("task %s: %s", job.task_id, err)
                    return FinalStatus("failed", f"The {self.pipeline.name} pipeline failed: {err}")
                try:
                    await asyncio.wait_for(
                        reporter.drain(), timeout=max(0.0, deadline - time.monotonic())
                    )
                except asyncio.TimeoutError:
                    return self._timed_out(job)
                if reporter.stopped is not None:
                    return self._after_stop(reporter)
                log.info(
                    "task %s: completed in %.1f s; sent %s",
                    job.task_id,
                    time.monotonic() - job.accepted_at,
                    ", ".join(reporter.delivered) or "no files",
                )
                return FinalStatus("completed", metadata=dict(ctx.metadata) or None)
            if stopped in done:
                ctx.cancel("kiln ended the task")
                return self._after_stop(reporter)
            ctx.cancel("timeout")
            return self._timed_out(job)
        finally:
            stopped.cancel()

    def _timed_out(self, job: Job) -> FinalStatus:
        log.warning("task %s: timed out after %g s", job.task_id, job.timeout)
        return FinalStatus(
            "failed",
            f"Generation timed out: the job did not finish within {job.timeout:g} seconds.",
        )

    def _after_stop(self, reporter: JobReporter) -> FinalStatus | None:
        """The status to send after callbacks stopped, if kiln can still take one."""
        delivery = reporter.stopped
        if delivery is None:
            # The pipeline was cancelled by us without a callback stopping (shutdown).
            return None
        if delivery.outcome is Outcome.ENDED:
            return None  # the task is over at kiln: it wants nothing more
        name = reporter.current or "a result file"
        if delivery.outcome is Outcome.REJECTED and delivery.status_code == 413:
            return FinalStatus(
                "failed", f"The result file {name} is larger than kiln accepts ({delivery.detail})."
            )
        if delivery.outcome is Outcome.GAVE_UP:
            return FinalStatus(
                "failed",
                f"The worker could not deliver {name} to kiln after {delivery.attempts} "
                f"attempts ({delivery.detail}).",
            )
        # 400, 401, 403, 404: kiln would refuse a status the same way.
        return None

    async def _send_status(self, job: Job, final: FinalStatus) -> None:
        delivery = await self.client.status(
            job.callback_url, job.task_id, final.status, final.error, final.metadata
        )
        if delivery.ok:
            log.info("task %s: status %s recorded by kiln", job.task_id, final.status)
        elif delivery.outcome is Outcome.ENDED:
            log.info("task %s: kiln had already ended the task (%s)", job.task_id, delivery.detail)
        else:
            log.error(
                "task %s: status %s not delivered: %s (%s)",
                job.task_id,
                final.status,
                delivery.outcome.value,
                delivery.detail,
            )

    async def _await_stopped(self, job: Job, work: asyncio.Future[list[Path]]) -> None:
        """Hold the slot until the stopped thread returns; flag the worker if it never does."""
        done, _ = await asyncio.wait({work}, timeout=self.stop_grace)
        if not done:
            self.stuck = (
                f"task {job.task_id} did not stop within {self.stop_grace:g} s after it was "
                "told to; restart the worker"
            )
            log.error("%s", self.stuck)
            await asyncio.wait({work})
            log.warning("task %s stopped at last; the worker is healthy again", job.task_id)
            self.stuck = None

    # -- the pipeline thread ---------------------------------------------------------

    def _work(self, job: JobInput, ctx: RunContext) -> list[Path]:
        """Run the pipeline, retrying once after a CUDA out-of-memory error.

        The retry runs with the settings the pipeline chooses for it (lower ones, for
        TRELLIS.2: the same settings would most likely run out of memory again), and the
        change goes with the result's metadata.
        """
        try:
            for attempt in (0, 1):
                ctx.attempt = attempt
                oom = False
                try:
                    return list(self.pipeline.run(job, ctx) or [])
                except JobCancelled:
                    raise
                except Exception as err:
                    if not self.pipeline.is_out_of_memory(err):
                        raise
                    log.warning(
                        "task %s: CUDA out of memory on attempt %d: %s",
                        job.task_id,
                        attempt + 1,
                        err,
                    )
                    oom = True
                # Outside the `except` block on purpose: there the exception's traceback
                # still references the frames that hold the GPU tensors, and freeing the
                # cache would free nothing.
                if oom:
                    self.pipeline.free_memory()
                    if attempt == 1:
                        raise JobFailed(OOM_MESSAGE)
                    # What the first attempt recorded tells the pipeline what it really
                    # ran; the result's metadata is the retry's own.
                    first_attempt = dict(ctx.metadata)
                    ctx.metadata.clear()
                    lower = self.pipeline.settings_after_oom(dict(job.params), first_attempt)
                    if lower is None:
                        raise JobFailed(OOM_NOTHING_LOWER)
                    changed = {
                        key: {"from": job.params.get(key), "to": value}
                        for key, value in lower.items()
                        if job.params.get(key) != value
                    }
                    # Files the first attempt already sent stay as they are (kiln keeps
                    # the first of a name): they show the first attempt's model.
                    ctx.metadata["out_of_memory_retry"] = {
                        "changed": changed,
                        "kept_from_first_attempt": list(ctx.emitted),
                    }
                    log.warning(
                        "task %s: retrying %s",
                        job.task_id,
                        "with " + ", ".join(
                            f"{key} {change['from']} -> {change['to']}"
                            for key, change in changed.items()
                        )
                        if changed
                        else "with the same settings",
                    )
                    # A directory of its own: files of the first attempt may still wait
                    # to be sent under the names the retry writes (and drops, as sent).
                    retry_dir = job.workdir / "retry"
                    retry_dir.mkdir(exist_ok=True)
                    job = replace(job, params=lower, workdir=retry_dir)
                    ctx.progress(0, "retrying_after_out_of_memory")
            raise AssertionError("unreachable")
        finally:
            try:
                self.pipeline.free_memory()
            except Exception:
                log.exception("task %s: freeing memory after the job failed", job.task_id)


def _in_daemon_thread(
    loop: asyncio.AbstractEventLoop, name: str, fn: Callable[..., list[Path]], *args: object
) -> asyncio.Future[list[Path]]:
    """Run `fn` on a new daemon thread; its outcome arrives in the returned future.

    Daemon, rather than an executor's thread: the interpreter does not wait for daemon
    threads at exit, so a worker told to stop is not held up by a GPU job that is still
    finishing its current step.
    """
    future: asyncio.Future[list[Path]] = loop.create_future()

    def settle(result: list[Path] | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result or [])

    def target() -> None:
        try:
            result = fn(*args)
        except Exception as err:  # handed to the loop, which decides
            outcome: tuple[list[Path] | None, BaseException | None] = (None, err)
        except BaseException as err:  # SystemExit & co. must not unwind the event loop
            outcome = (None, RuntimeError(f"{type(err).__name__}: {err}"))
        else:
            outcome = (result, None)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


def _describe_failure(pipeline: str, err: BaseException) -> str:
    text = " ".join(str(err).split())
    if len(text) > 300:
        text = text[:297] + "…"
    return f"The {pipeline} pipeline failed: {type(err).__name__}" + (f": {text}" if text else "")
