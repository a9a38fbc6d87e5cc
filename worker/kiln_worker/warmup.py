"""The warm-up: one tiny real job through a pipeline's whole path before the first job.

A worker that answers healthy and then fails every job is worse than one that says at
start what is wrong. So a pipeline's `load` ends by running its own `run` — the same
code a dispatched job runs, cut-out, sampling, decoding, preview, GLB with WebP
textures, OBJ archive — on a small built-in picture with few sampler steps. Whatever
fails there fails the load, and `/health` answers 503 with the stage that failed.

The job's files are written in a temporary directory and thrown away; only their names
and sizes are kept, for the health answer.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .pipelines.base import JobInput, Pipeline

log = logging.getLogger("kiln_worker.warmup")

#: The built-in picture's side: small, and a multiple of the models' patch sizes.
PICTURE_SIZE = 256


def warmup_picture() -> Image.Image:
    """A shaded ball on a transparent background: an object with an obvious outline.

    It has real alpha, so the cut-out uses it and background removal is not needed;
    TRELLIS.2's warm-up proves the background remover on its own (see trellis2.py).
    """
    picture = Image.new("RGBA", (PICTURE_SIZE, PICTURE_SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(picture)
    centre, radius = PICTURE_SIZE / 2, PICTURE_SIZE * 0.36
    # Concentric discs, lighter towards the upper left: a lit sphere, as far as a flow
    # model is concerned, rather than a flat disc.
    for step in range(24, 0, -1):
        r = radius * step / 24
        offset = (1 - step / 24) * radius * 0.45
        shade = int(90 + 140 * (1 - step / 24))
        box = (centre - offset - r, centre - offset - r, centre - offset + r, centre - offset + r)
        draw.ellipse(box, fill=(shade, int(shade * 0.7), int(shade * 0.45), 255))
    return picture


class WarmupContext:
    """The `JobContext` of the warm-up: records stages and files, never stopped."""

    def __init__(self, on_stage: Callable[[str], None]) -> None:
        self.attempt = 0
        self.metadata: dict[str, Any] = {}
        self.stages: list[str] = []
        self.files: dict[str, int] = {}
        self._on_stage = on_stage

    def progress(self, percent: float, stage: str) -> None:
        if not self.stages or self.stages[-1] != stage:
            self.stages.append(stage)
            self._on_stage(stage)

    def emit(self, path: Path, name: str | None = None) -> None:
        self.files[name or path.name] = path.stat().st_size

    def check_cancelled(self) -> None:
        pass

    @property
    def cancelled(self) -> bool:
        return False


def run_warmup(
    pipeline: Pipeline,
    params: dict[str, Any],
    *,
    picture: Image.Image | None = None,
    expect: tuple[str, ...] = ("model.glb",),
) -> dict[str, Any]:
    """Run `pipeline.run` once on the built-in picture with `params` (already validated).

    Sets `pipeline.load_phase` to "warming up (<stage>)" as the job moves, so that a
    failure names its stage. Raises what the run raised, or `RuntimeError` when a file
    in `expect` was not produced. Returns the seconds it took and the files it made.
    """

    def on_stage(stage: str) -> None:
        pipeline.load_phase = f"warming up ({stage})"

    pipeline.load_phase = "warming up"
    workdir = Path(tempfile.mkdtemp(prefix="kiln-warmup-"))
    try:
        image_path = workdir / "input.png"
        (picture or warmup_picture()).save(image_path, format="PNG")
        job = JobInput(
            task_id="warm-up",
            image_path=image_path,
            image_format="PNG",
            params=params,
            workdir=workdir,
            timeout=600.0,
        )
        ctx = WarmupContext(on_stage)
        started = time.monotonic()
        returned = pipeline.run(job, ctx) or []
        seconds = time.monotonic() - started
        for path in returned:
            ctx.emit(Path(path))
        pipeline.load_phase = "warming up (checking its files)"
        missing = [name for name in expect if not ctx.files.get(name)]
        if missing:
            raise RuntimeError(
                f"the warm-up job finished without {', '.join(missing)} "
                f"(it made {', '.join(sorted(ctx.files)) or 'no files'})"
            )
        return {
            "seconds": round(seconds, 2),
            "stages": ctx.stages,
            "files": ctx.files,
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
