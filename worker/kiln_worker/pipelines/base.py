"""What a pipeline is to the worker, and the errors it can raise.

A pipeline is loaded once at start-up (`load`, the warm-up) and then runs one job at a
time per slot (`run`) on a worker thread. It reports progress and hands over result
files through a `JobContext`; the worker does all the HTTP. Pipelines other than
TRELLIS.2 (or the tests' stand-in) subclass `Pipeline` and are selected with
`KILN_WORKER_PIPELINE=module:Class`.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..config import Settings

#: Result file names kiln accepts: 1–128 of `A–Z a–z 0–9 . - _`, not starting with `.`.
RESULT_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")


class PipelineUnavailable(Exception):
    """The pipeline cannot run on this machine (missing packages, no GPU, no weights)."""


class JobCancelled(Exception):
    """The job was stopped by the worker (timeout, or kiln said the task has ended).

    `JobContext.progress` and `JobContext.check_cancelled` raise it; a pipeline lets it
    propagate (catching it would keep the GPU busy for a job nobody waits for).
    """


class JobFailed(Exception):
    """The job failed with a message meant for people; it becomes the `failed` status' error."""


@dataclass
class JobInput:
    """One job, as the pipeline sees it."""

    task_id: str
    #: The input picture, saved in `workdir`.
    image_path: Path
    #: The picture's format as Pillow named it: `JPEG`, `PNG` or `WEBP`.
    image_format: str
    #: The validated options (what `Pipeline.validate_params` returned).
    params: dict[str, Any]
    #: A directory of the job's own (the retry after an out-of-memory error gets another
    #: inside it), removed when the job ends.
    workdir: Path
    #: Seconds the job may take; the worker stops it then.
    timeout: float = 180.0
    extra: dict[str, Any] = field(default_factory=dict)


class JobContext(Protocol):
    """The worker's side of a running job, as the pipeline thread uses it."""

    #: 0 for the first attempt, 1 for the retry after a CUDA out-of-memory error.
    attempt: int
    #: What the pipeline wants kept with the result (the settings it really used); sent
    #: with the `completed` status and kept by kiln as the result's `metadata.provider.worker`.
    metadata: dict[str, Any]

    def progress(self, percent: float, stage: str) -> None:
        """Report progress (0–100) and a snake_case stage name.

        Cheap and non-blocking: call it as often as convenient (the worker throttles).
        Raises `JobCancelled` when the job has been stopped.
        """

    def emit(self, path: Path, name: str | None = None) -> None:
        """Hand over a finished result file now; it is sent to kiln while the job goes on.

        The file is deleted once sent. `name` defaults to the file's name.
        """

    def check_cancelled(self) -> None:
        """Raise `JobCancelled` when the job has been stopped."""

    @property
    def cancelled(self) -> bool: ...


class Pipeline:
    """Base class of pipelines. Subclasses override `run` and usually `load`."""

    #: Announced as `worker` in `GET /health`.
    name: str = "pipeline"
    #: What the pipeline runs (e.g. the model), for the start-up log.
    version: str = "0"

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings
        #: What `load` is doing now, as a phrase after "while" ("checking the GPU"):
        #: `/health` shows it while loading, and names it when loading fails.
        self.load_phase = "loading the model"
        #: What the warm-up measured (seconds, peak VRAM …), shown by `/health` once ready.
        self.warmup_report: dict[str, Any] | None = None

    def preflight(self) -> None:
        """Cheap checks before the server starts; raise `PipelineUnavailable` to refuse to start.

        Runs on the main thread before the port is bound, so it must not load models.
        Only for mistakes in the configuration itself: what the machine lacks (packages,
        GPU, weights) is found by `load`, so that `/health` can say it.
        """

    def load(self) -> None:
        """Check the machine, load the model and warm it up. Runs once, on a thread, while
        `/health` says `loading`; whatever it raises makes `/health` answer 503
        `unhealthy` with the reason, for as long as the worker runs.

        Set `load_phase` before each step so that the reason says which step failed.
        """

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check a dispatch's `params`; raise `ValueError` (→ 400) for bad values.

        Unknown keys should be ignored: kiln passes the client's params through.
        """
        return dict(params)

    def run(self, job: JobInput, ctx: JobContext) -> list[Path]:
        """Run one job on the calling thread; return the result files not already emitted."""
        raise NotImplementedError

    def settings_after_oom(
        self, params: dict[str, Any], first_attempt: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The params of the second attempt after a GPU out-of-memory error.

        `params` are the first attempt's, as `validate_params` returned them (complete);
        `first_attempt` is what that attempt had put in `JobContext.metadata` when it ran
        out of memory — where a model that adapts its own settings while it runs (TRELLIS.2's
        1536 cascade) says what it had come down to. A pipeline that knows which settings
        cost memory returns lower ones, complete (they are not validated again; the
        worker records the change with the result); `None` means there is nothing lower
        to try, and the job fails at once. By default: the same params, after the cache
        was freed.
        """
        return dict(params)

    def free_memory(self) -> None:
        """Release cached memory: after every job, and before the retry after an OOM."""
        gc.collect()

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether `exc` is a GPU out-of-memory error (the job is then retried once)."""
        return is_out_of_memory(exc)


_OOM_MESSAGES = (
    "cuda out of memory",
    "out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cuda error: out of memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """Recognise a CUDA out-of-memory error without importing torch.

    torch raises `torch.cuda.OutOfMemoryError` (also exported as `torch.OutOfMemoryError`,
    a `RuntimeError` subclass) from the caching allocator, and plain `RuntimeError`s
    saying "CUDA error: out of memory" or "CUBLAS_STATUS_ALLOC_FAILED" from kernels and
    libraries. Extensions (flash-attn, nvdiffrast, CuMesh) wrap them in their own
    RuntimeErrors, so the chain of causes is searched too. Matching by class *name*
    keeps torch out of this module and lets tests raise a look-alike.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ == "OutOfMemoryError":
            return True
        if isinstance(current, RuntimeError):
            message = str(current).lower()
            if any(pattern in message for pattern in _OOM_MESSAGES):
                return True
        current = current.__cause__ or current.__context__
    return False
