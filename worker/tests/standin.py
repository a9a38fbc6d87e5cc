"""A stand-in for TRELLIS.2 that runs anywhere: no GPU, no weights, a few milliseconds.

It behaves like the real pipeline as the worker sees it — stages with step progress, the
cut-out `pixel_images.png` emitted before sampling, then `preview.png` (transparent
background), the position map `xyz_images.png` (16-bit, the encoding of
kiln_worker/pipelines/position_map.py) and a textured `model.glb` emitted as each is
ready, an `output3d.zip` (OBJ + MTL + texture) returned at the end — and can be told to
misbehave, so that the worker's
protocol, retries, OOM handling and timeouts are tested without a GPU. kiln's Rust
conformance suite and integration tests run the worker with it:

    cd worker && KILN_WORKER_SECRET=whsec_… \\
        KILN_WORKER_PIPELINE=tests.standin:StandInPipeline \\
        .venv/bin/python -m kiln_worker --host 127.0.0.1 --port 0

Dispatch `params` it understands (others are ignored, as a real pipeline would):
    steps         int 1–100000, sampling steps (default 4)
    step_seconds  float 0–60, time per step (default KILN_STANDIN_STEP_SECONDS or 0.005)
    fail          "error" | "oom" | "oom_once": raise an error / a CUDA-OOM look-alike on
                  every attempt / on the first attempt only
    fail_at       "sampling" (default) | "export": where `fail` strikes; "export" is after
                  the preview was emitted
    outputs       list of "cutout", "preview", "xyz", "glb", "zip" (default all five)
    resolution    512, 1024 (default) or 1536: does nothing but be lowered by the OOM
                  retry, as TRELLIS.2's is (1536 -> 1024 -> 512; nothing below 512)
Environment: KILN_STANDIN_LOAD_SECONDS (load time, default 0), KILN_STANDIN_LOAD_UNTIL_FILE=PATH
(the load lasts until PATH exists, so a test decides when the worker becomes ready),
KILN_STANDIN_LOAD_FAIL=PHASE (the load fails there, like TRELLIS.2's would, and /health
answers 503 unhealthy with the reason): `modules` (a CUDA extension missing), `gpu` (no
GPU), `weights` (a weight file missing offline), `model` or `1` (the model fails to
load), `warmup-sampling`, `warmup-export` (the warm-up job fails in that stage),
`warmup-glb` (the warm-up job makes no model.glb). KILN_STANDIN_WARMUP=0 skips the
warm-up job, which otherwise runs the stand-in's own `run` once (kiln_worker/warmup.py).

Tests in this directory can also hold the warm-up or every job at a gate (`hold_load`,
`hold_runs`) and let them go when they have checked what they wanted: no timing guesses.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageStat

from kiln_worker.export import mesh_to_obj_zip
from kiln_worker.pipelines import JobContext, JobInput, Pipeline, PipelineUnavailable

OUTPUTS = ("cutout", "preview", "xyz", "glb", "zip")
#: Where KILN_STANDIN_LOAD_FAIL can make the load fail, and the phase it names.
LOAD_PHASES = {
    "modules": "checking the Python modules",
    "gpu": "checking the GPU",
    "weights": "checking the weights",
    "model": "loading the model",
}
LOAD_FAILURES = {
    "modules": PipelineUnavailable(
        "1 module cannot be imported:\n  - flash_attn: ImportError: No module named "
        "'flash_attn' (stand-in)"
    ),
    "gpu": PipelineUnavailable("PyTorch sees no CUDA GPU (stand-in)"),
    "weights": PipelineUnavailable(
        "offline (HF_HUB_OFFLINE=1) and 1 file is not in the cache:\n  - "
        "microsoft/TRELLIS.2-4B: ckpts/stand_in.safetensors (stand-in)"
    ),
    "model": RuntimeError("stand-in model failed to load (KILN_STANDIN_LOAD_FAIL)"),
}
RESOLUTIONS = (512, 1024, 1536)
#: The preview's and, without a cut-out, the position map's side.
PREVIEW_SIZE = 256


class OutOfMemoryError(RuntimeError):
    """Looks like `torch.cuda.OutOfMemoryError` to the worker: same class name and message."""


class StandInPipeline(Pipeline):
    name = "standin"
    version = "1"

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        self.load_seconds = float(os.environ.get("KILN_STANDIN_LOAD_SECONDS", "0") or 0)
        fail = os.environ.get("KILN_STANDIN_LOAD_FAIL", "").strip()
        self.fail_load: str | None = {"": None, "0": None, "1": "model"}.get(fail, fail)
        self.warmup = os.environ.get("KILN_STANDIN_WARMUP", "1") not in ("0", "false", "no")
        self.step_seconds = float(os.environ.get("KILN_STANDIN_STEP_SECONDS", "0.005") or 0)
        self.load_until_file = os.environ.get("KILN_STANDIN_LOAD_UNTIL_FILE", "") or None
        self.loaded = threading.Event()
        self._load_gate = threading.Event()
        self._load_gate.set()
        self._run_gate = threading.Event()
        self._run_gate.set()
        #: Set when a job reached the run gate (it is running, and held).
        self.holding = threading.Event()
        #: What happened, for the tests: (task_id, attempt, outcome) per run.
        self.runs: list[tuple[str, int, str]] = []
        #: The `resolution` param of each run (the OOM retry lowers it).
        self.resolutions: list[int] = []
        self.free_memory_calls = 0
        #: What `settings_after_oom` was told the first attempt recorded, per retry.
        self.first_attempts: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def preflight(self) -> None:
        try:
            import numpy  # noqa: F401
            import trimesh  # noqa: F401
        except ImportError as err:
            raise PipelineUnavailable(
                f"the stand-in needs numpy and trimesh (pip install -e 'worker[test]'): {err}"
            ) from err

    def hold_load(self) -> None:
        self._load_gate.clear()

    def release_load(self) -> None:
        self._load_gate.set()

    def hold_runs(self) -> None:
        self._run_gate.clear()

    def release_runs(self) -> None:
        self._run_gate.set()

    def load(self) -> None:
        if self.load_seconds:
            time.sleep(self.load_seconds)
        if self.load_until_file:
            deadline = time.monotonic() + 600
            while not os.path.exists(self.load_until_file) and time.monotonic() < deadline:
                time.sleep(0.01)
        self._load_gate.wait(timeout=60)
        for key, phase in LOAD_PHASES.items():
            self.load_phase = phase
            if self.fail_load == key:
                raise LOAD_FAILURES[key]
        if self.warmup or (self.fail_load or "").startswith("warmup-"):
            self._warm_up()
        self.loaded.set()

    def _warm_up(self) -> None:
        from kiln_worker.warmup import run_warmup

        params: dict[str, Any] = {"steps": 2, "step_seconds": 0}
        if self.fail_load in ("warmup-sampling", "warmup-export"):
            params.update(fail="error", fail_at=self.fail_load.removeprefix("warmup-"))
        if self.fail_load == "warmup-glb":
            params["outputs"] = ["cutout", "preview"]
        report = run_warmup(self, self.validate_params(params))
        self.warmup_report = {**report, "device": "stand-in (no GPU)"}

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        steps = params.get("steps", 4)
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 100_000:
            raise ValueError("steps must be an integer from 1 to 100000")
        out["steps"] = steps
        step_seconds = params.get("step_seconds", self.step_seconds)
        if (
            not isinstance(step_seconds, (int, float))
            or isinstance(step_seconds, bool)
            or not 0 <= step_seconds <= 60
        ):
            raise ValueError("step_seconds must be a number from 0 to 60")
        out["step_seconds"] = float(step_seconds)
        fail = params.get("fail")
        if fail not in (None, "error", "oom", "oom_once"):
            raise ValueError("fail must be one of error, oom, oom_once")
        out["fail"] = fail
        fail_at = params.get("fail_at", "sampling")
        if fail_at not in ("sampling", "export"):
            raise ValueError("fail_at must be sampling or export")
        out["fail_at"] = fail_at
        outputs = params.get("outputs", list(OUTPUTS))
        if not isinstance(outputs, list) or any(o not in OUTPUTS for o in outputs):
            raise ValueError(f"outputs must be a list of {', '.join(OUTPUTS)}")
        out["outputs"] = outputs
        resolution = params.get("resolution", 1024)
        if resolution not in RESOLUTIONS:
            raise ValueError("resolution must be 512, 1024 or 1536")
        out["resolution"] = resolution
        return out

    def settings_after_oom(
        self, params: dict[str, Any], first_attempt: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        self.first_attempts.append(dict(first_attempt))
        lower = [r for r in RESOLUTIONS if r < params.get("resolution", 1024)]
        if not lower:
            return None
        return {**params, "resolution": lower[-1]}

    def run(self, job: JobInput, ctx: JobContext) -> list[Path]:
        params = job.params  # validated, as the worker always does
        if job.task_id != "warm-up":
            self.resolutions.append(params["resolution"])
        try:
            files = self._run(job, ctx, params)
        except BaseException as err:
            self._record(job.task_id, ctx.attempt, type(err).__name__)
            raise
        self._record(job.task_id, ctx.attempt, "ok")
        return files

    def _run(self, job: JobInput, ctx: JobContext, params: dict[str, Any]) -> list[Path]:
        ctx.progress(0, "preprocessing")
        while not self._run_gate.is_set():
            self.holding.set()
            ctx.check_cancelled()
            self._run_gate.wait(timeout=0.005)
        with Image.open(job.image_path) as img:
            picture = img.copy()
        color = tuple(int(c) for c in ImageStat.Stat(picture.convert("RGB")).mean)
        map_size = PREVIEW_SIZE
        if "cutout" in params["outputs"]:
            from kiln_worker.pipelines.cutout import cut_out

            cutout = cut_out(picture, _remove_background).image
            pixel_images = job.workdir / "pixel_images.png"
            cutout.save(pixel_images, format="PNG")
            map_size = cutout.width
            ctx.emit(pixel_images)
        steps = params["steps"]
        for step in range(steps):
            if step == steps // 2 and params["fail_at"] == "sampling":
                self._maybe_fail(params, ctx)
            time.sleep(params["step_seconds"])
            ctx.progress(5 + 75 * (step + 1) / steps, "sampling")

        files: list[Path] = []
        ctx.progress(82, "rendering_preview")
        if "preview" in params["outputs"]:
            preview = job.workdir / "preview.png"
            _draw_preview(color).save(preview, format="PNG")
            ctx.emit(preview)
        if "xyz" in params["outputs"]:
            from kiln_worker.pipelines import position_map

            xyz = job.workdir / "xyz_images.png"
            points, inside = _cube_front_positions(map_size)
            position_map.write_png16(position_map.encode(points, inside), xyz)
            ctx.emit(xyz)
        if params["fail_at"] == "export":
            self._maybe_fail(params, ctx)
        mesh = _textured_cube(color)
        ctx.progress(88, "exporting_glb")
        if "glb" in params["outputs"]:
            glb = job.workdir / "model.glb"
            glb.write_bytes(mesh.export(file_type="glb"))
            ctx.emit(glb)
        ctx.progress(95, "exporting_obj")
        if "zip" in params["outputs"]:
            # Returned rather than emitted: the worker sends returned files at the end.
            files.append(mesh_to_obj_zip(mesh, job.workdir / "output3d.zip"))
        return files

    def _maybe_fail(self, params: dict[str, Any], ctx: JobContext) -> None:
        fail = params["fail"]
        if fail == "error":
            raise RuntimeError("the stand-in pipeline failed on purpose")
        if fail == "oom" or (fail == "oom_once" and ctx.attempt == 0):
            raise OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total "
                "capacity; stand-in)"
            )

    def free_memory(self) -> None:
        with self._lock:
            self.free_memory_calls += 1
        gc.collect()

    def _record(self, task_id: str, attempt: int, outcome: str) -> None:
        if task_id == "warm-up":  # the tests count dispatched jobs
            return
        with self._lock:
            self.runs.append((task_id, attempt, outcome))


def _remove_background(rgb: Image.Image) -> Image.Image:
    """The stand-in's background removal: the ellipse inscribed in the picture is the
    object (never empty, whatever the picture), as TRELLIS.2's rembg returns it: RGBA."""
    mask = Image.new("L", rgb.size, 0)
    ImageDraw.Draw(mask).ellipse((0, 0, rgb.width - 1, rgb.height - 1), fill=255)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(mask)
    return rgba


def _cube_front_positions(size: int) -> tuple[Any, Any]:
    """What the real pipeline's front view sees of `_textured_cube`: its +Z face, framed
    square, so it fills the picture; glTF coordinates at the pixel centres."""
    import numpy as np

    centres = (np.arange(size) + 0.5) / size
    x = np.broadcast_to(centres - 0.5, (size, size))
    y = np.broadcast_to((0.5 - centres)[:, None], (size, size))
    points = np.stack([x, y, np.full((size, size), 0.5)], axis=-1)
    return points, np.ones((size, size), dtype=bool)


def _draw_preview(color: tuple[int, ...]) -> Image.Image:
    """A 256×256 "render" of the cube: three shaded faces on a transparent background."""
    img = Image.new("RGBA", (PREVIEW_SIZE, PREVIEW_SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    r, g, b = color[:3]

    def shade(f: float) -> tuple[int, int, int, int]:
        return (int(r * f), int(g * f), int(b * f), 255)

    top = [(128, 40), (208, 80), (128, 120), (48, 80)]
    left = [(48, 80), (128, 120), (128, 216), (48, 176)]
    right = [(128, 120), (208, 80), (208, 176), (128, 216)]
    draw.polygon(top, fill=shade(1.0))
    draw.polygon(left, fill=shade(0.7))
    draw.polygon(right, fill=shade(0.5))
    return img


def _textured_cube(color: tuple[int, ...]) -> Any:
    """A unit cube with a PBR material and texture, built like TRELLIS.2's `to_glb` result."""
    import numpy as np
    import trimesh

    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    # One vertex per face corner, so that each face gets the whole texture.
    vertices = box.vertices[box.faces].reshape(-1, 3)
    faces = np.arange(len(vertices)).reshape(-1, 3)
    normals = np.repeat(box.face_normals, 3, axis=0)
    # The box's faces come in pairs, two triangles per side: map each pair onto the square.
    first = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    second = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    uv = np.concatenate([first if i % 2 == 0 else second for i in range(len(faces))])
    texture = Image.new("RGBA", (64, 64), (*color[:3], 255))
    draw = ImageDraw.Draw(texture)
    draw.rectangle((0, 0, 63, 63), outline=(255, 255, 255, 255), width=3)
    metallic_roughness = Image.new("RGB", (8, 8), (0, 200, 0))
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=texture,
        baseColorFactor=np.array([255, 255, 255, 255], dtype=np.uint8),
        metallicRoughnessTexture=metallic_roughness,
        metallicFactor=0.0,
        roughnessFactor=1.0,
        alphaMode="OPAQUE",
        doubleSided=True,
    )
    return trimesh.Trimesh(
        vertices=vertices,
        faces=faces,
        vertex_normals=normals,
        process=False,
        visual=trimesh.visual.TextureVisuals(uv=uv, material=material),
    )
