"""The real TRELLIS.2 pipeline (microsoft/TRELLIS.2, model `microsoft/TRELLIS.2-4B`).

Nothing heavy is imported at module level: torch, trellis2, o_voxel and trimesh are
imported in `load` and `run`, so that the worker package imports (and its tests run) on
machines without a GPU. `load` imports every module the pipeline will need first
(`check_modules`, flash_attn included: TRELLIS.2 imports it only at its first attention
call), then checks the GPU and the weights, loads the model and runs a warm-up job
through `run`; a failure at any step is the worker's 503 reason, named, rather than an
ImportError in the first job.

What this module assumes about TRELLIS.2 (its public code as of early 2026; the README of
this worker says how to install it):

- `Trellis2ImageTo3DPipeline.from_pretrained(path)` reads `pipeline.json` and builds
  three samplers, `sparse_structure_sampler`, `shape_slat_sampler` and
  `tex_slat_sampler`; `.cuda()` moves it to the GPU (with `low_vram`, the default, each
  stage's model visits the GPU only while it runs).
- `run(image, seed, sparse_structure_sampler_params, shape_slat_sampler_params,
  tex_slat_sampler_params, preprocess_image, pipeline_type, max_num_tokens)` returns a
  list of `MeshWithVoxel`; the `*_cascade` pipeline types sample the shape twice (a
  512 pass, then the full resolution).
- Each sampler's `sample(model, noise, …, steps=N, …)` runs a Python loop that calls
  `self.sample_once(…)` once per step (FlowEulerSampler and its CFG / guidance-interval
  variants). The API offers no progress callback — the loop only drives a tqdm bar —
  so progress is taken by wrapping `sample` (to learn the stage and its step count)
  and `sample_once` (to count steps) on the three sampler *instances*. Instance
  attributes shadow the class methods, and the loop looks `sample_once` up on `self`,
  so the wrapper sees every step without patching TRELLIS.2's classes. Should a later
  version stop calling `sample_once`, progress only gets coarser (one report per
  stage); nothing breaks.
- `sample_shape_slat_cascade(…, lr_resolution, resolution, coords, sampler_params,
  max_num_tokens)` samples the shape at 512, then lowers `resolution` by 128 (not below
  1024) while the high-resolution shape has `max_num_tokens` tokens or more, samples it
  there with `shape_slat_sampler.sample(model, noise, …)` (`noise` a SparseTensor, one
  row of `coords` per token) and returns `(slat, resolution)`; wrapping it on the
  pipeline instance and watching the second shape pass tell which resolution a 1536 job
  really runs at (`CascadeResolution`), which the retry after an out-of-memory error needs.
- The step hook is also where a stopped job (timeout, or kiln said the task ended)
  leaves the GPU: `JobContext.progress` raises `JobCancelled` there.
- `o_voxel.postprocess.to_glb(vertices, faces, attr_volume, coords, attr_layout,
  voxel_size, aabb, decimation_target, texture_size, remesh, remesh_band,
  remesh_project)` returns a textured `trimesh.Trimesh` (PBR material), whose
  `export(path, extension_webp=True)` writes the GLB; the same mesh is written as the
  OBJ archive.
- `pipeline.rembg_model(rgb)` (BiRefNet) returns the picture with alpha added, and
  `preprocess_image` uses a picture's own alpha when it is RGBA and not fully opaque;
  the worker makes the cut-out itself (cutout.py) and sends it as `pixel_images.png`.
- `trellis2.utils.render_utils.render_snapshot(mesh, …, envmap=EnvMap(tensor))` renders
  views of the mesh; the `shaded` image of one view, with its `mask` as alpha, is the
  preview (preview.py).
- `trellis2.renderers.MeshRenderer(options).render(mesh, extrinsics, intrinsics,
  return_types=["mask", "coord"])` rasterises the mesh's positions: the position map
  `xyz_images.png` (position_map.py).

The files go to kiln in this order: `pixel_images.png` before sampling, then
`preview.png`, `xyz_images.png` and `model.glb` as each is ready, `output3d.zip` last.
"""

from __future__ import annotations

import functools
import gc
import inspect
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..export import mesh_to_obj_zip
from .base import JobContext, JobFailed, JobInput, Pipeline, PipelineUnavailable

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger("kiln_worker.trellis2")

#: What the pipeline imports, checked by importing each at start (a compiled extension
#: that is present but does not load — built for another torch or CUDA — counts as
#: missing), and how to get it. The TRELLIS.2 install script is worker/install.sh.
REQUIRED_MODULES = {
    "torch": "PyTorch 2.6 built for CUDA 12.4 (worker/install.sh installs it)",
    "torchvision": "torchvision 0.21 for CUDA 12.4 (worker/install.sh)",
    "transformers": "transformers>=4.56,<5 (worker/install.sh)",
    "trellis2.pipelines": "the TRELLIS.2 checkout on PYTHONPATH (worker/install.sh clones it)",
    "trellis2.renderers": "the TRELLIS.2 checkout on PYTHONPATH, and its renderers' "
    "dependencies (worker/install.sh)",
    "o_voxel": "TRELLIS.2's o-voxel extension (worker/install.sh)",
    "nvdiffrast.torch": "nvdiffrast 0.4.0 (worker/install.sh)",
    "nvdiffrec_render": "nvdiffrec's renderer, for the preview (worker/install.sh)",
    "utils3d": "utils3d (worker/install.sh)",
    "cumesh": "CuMesh (worker/install.sh)",
    "flex_gemm": "FlexGEMM (worker/install.sh)",
    "cv2": "opencv-python-headless (worker/install.sh)",
    "trimesh": "trimesh (pip install -e 'worker[gpu]')",
    "huggingface_hub": "huggingface_hub (pip install -e 'worker[gpu]')",
}
#: The module each attention backend of TRELLIS.2 imports at its first attention call
#: (`ATTN_BACKEND`, `SPARSE_ATTN_BACKEND`; both default to flash_attn). Imported at
#: start here, so that a missing one is not found by the first job.
ATTENTION_MODULES = {
    "flash_attn": ("flash_attn", "flash-attn 2.7.3 (worker/install.sh builds it)"),
    "flash_attn_3": ("flash_attn_interface", "FlashAttention 3 (hopper build)"),
    "xformers": ("xformers.ops", "xformers for this torch"),
}
#: transformers 5 removed what TRELLIS.2's DINOv3 feature extractor reads; 4.56 is the
#: first with DINOv3.
TRANSFORMERS_RANGE = ((4, 56), (5, 0))

#: `resolution` param → TRELLIS.2 pipeline type (as TRELLIS.2's own app maps them).
PIPELINE_TYPES = {512: "512", 1024: "1024_cascade", 1536: "1536_cascade"}
#: The resolution each pipeline type ends at (before TRELLIS.2's own token cap).
PIPELINE_RESOLUTIONS = {"512": 512, "1024": 1024, "1024_cascade": 1024, "1536_cascade": 1536}
#: The default cap on the 1536 cascade's tokens, for a 24 GB card. TRELLIS.2 lowers a
#: 1536 job's resolution by 128 at a time (not below 1024) while the shape has more
#: tokens than this; its own default, 49152, was set on A100/H100 (40–80 GB), and users
#: report the 1536 cascade running out of memory on 24 GB cards. Only the 1536 cascade
#: reads it. Not measured on an RTX 4090 yet: raise it with KILN_TRELLIS_MAX_NUM_TOKENS
#: on a bigger card.
MAX_NUM_TOKENS_24GB = 32768
#: Cards with less memory than this get a warning at start (TRELLIS.2 asks for 24 GB;
#: a "24 GB" card reports about 23.6 GiB).
MIN_VRAM_BYTES = 22 * 2**30
#: The warm-up job's params (`KILN_TRELLIS_WARMUP=1`): the 512 pipeline with few steps
#: and a small texture, through every stage of `run`.
WARMUP_PARAMS = {
    "resolution": 512,
    "steps": 4,
    "texture_size": 512,
    "decimation_target": 20_000,
    "seed": 0,
}
ALL_PIPELINE_TYPES = ("512", "1024", "1024_cascade", "1536_cascade")
TEXTURE_SIZES = (512, 1024, 2048, 4096)

#: Where each stage sits on the job's 0–100 scale. Sampling dominates the time on a
#: GPU (TRELLIS.2's README: shape ~60 %, material ~40 % of sampling); GLB export
#: (remeshing, UV unwrapping, texture baking) takes seconds more.
SAMPLER_STAGES = {
    # sampler key: (stage name, start %, end %)
    "sparse_structure": ("sampling_structure", 5.0, 25.0),
    "shape": ("sampling_shape", 25.0, 55.0),
    "texture": ("sampling_texture", 55.0, 80.0),
}
PROGRESS_DECODING = 80.0
PROGRESS_PREVIEW = 84.0
PROGRESS_POSITION_MAP = 86.0
PROGRESS_GLB = 87.0
PROGRESS_OBJ = 97.0
#: The position map's side when there is no cut-out to match (`preprocess_image` off).
POSITION_MAP_SIZE = 512


class Trellis2Pipeline(Pipeline):
    """TRELLIS.2-4B image-to-3D on one CUDA GPU."""

    name = "trellis2"
    version = "TRELLIS.2-4B"

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__(settings)
        env = os.environ
        self.model = settings.model if settings is not None else "microsoft/TRELLIS.2-4B"
        warmup = env.get("KILN_TRELLIS_WARMUP", "1").strip().lower()
        #: Set when the renderer has no `coord` output: no position maps, by design.
        self.position_map_unsupported = False
        #: "tiny" (WARMUP_PARAMS), "full" (the default params: a real job's peak VRAM)
        #: or "off".
        self.warmup = {"0": "off", "false": "off", "no": "off", "full": "full"}.get(
            warmup, "tiny"
        )
        self.envmap_path = env.get("KILN_TRELLIS_ENVMAP", "").strip() or None
        #: Replaces the background remover pipeline.json names (a BiRefNet checkpoint:
        #: a Hugging Face id or a directory), or "none"; README.md, "Licences".
        self.rembg_model = env.get("KILN_TRELLIS_REMBG_MODEL", "").strip() or None
        low_vram = env.get("KILN_TRELLIS_LOW_VRAM", "").strip().lower()
        self.low_vram: bool | None = None if not low_vram else low_vram not in ("0", "false", "no")
        self.defaults = {
            "resolution": _env_int("KILN_TRELLIS_RESOLUTION", 1024),
            "texture_size": _env_int("KILN_TRELLIS_TEXTURE_SIZE", 2048),
            "decimation_target": _env_int("KILN_TRELLIS_DECIMATION_TARGET", 500_000),
            "max_num_tokens": _env_int("KILN_TRELLIS_MAX_NUM_TOKENS", MAX_NUM_TOKENS_24GB),
        }
        self.progress = SamplerProgress()
        self.cascade = CascadeResolution(self._settings_used)
        self._pipe: Any = None
        self._envmap: Any = None
        self._position_renderer: Any = None

    # -- start-up ------------------------------------------------------------------

    def preflight(self) -> None:
        """Only the configuration: what the machine lacks is found by `load`, so that
        `/health` answers 503 with it (and `kiln worker-check` shows it)."""
        try:
            self.validate_params({})
        except ValueError as err:
            raise PipelineUnavailable(f"bad KILN_TRELLIS_* default: {err}") from err

    def load(self) -> None:
        """Check the modules, the GPU and the weights, load the model, warm it up.

        Each step sets `load_phase`, so that a failure is reported as "failed while
        checking the GPU: …" and the like; nothing here is caught and logged away.
        """
        # Both must be set before torch / cv2 are imported (TRELLIS.2's example does the same).
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")

        self.load_phase = "checking the Python modules"
        check_modules()
        import torch

        self.load_phase = "checking the GPU"
        if not torch.cuda.is_available():
            raise PipelineUnavailable(
                "PyTorch sees no CUDA GPU: check the NVIDIA driver (nvidia-smi) and that torch "
                "is the CUDA 12.4 build (python -c 'import torch; print(torch.version.cuda)')"
            )
        device = torch.cuda.get_device_properties(0)
        if device.total_memory < MIN_VRAM_BYTES:
            log.warning(
                "%s has %.1f GiB: TRELLIS.2 needs a 24 GB card; expect out-of-memory failures",
                device.name,
                device.total_memory / 2**30,
            )

        self.load_phase = "checking the weights"
        self._check_weights()

        self.load_phase = "loading the model"
        log.info(
            "loading %s on %s (%.1f GiB)…", self.model, device.name, device.total_memory / 2**30
        )
        pipe = self._from_pretrained()
        if self.low_vram is not None:
            pipe.low_vram = self.low_vram
        pipe.cuda()
        for key, attr in (
            ("sparse_structure", "sparse_structure_sampler"),
            ("shape", "shape_slat_sampler"),
            ("texture", "tex_slat_sampler"),
        ):
            self.progress.instrument(getattr(pipe, attr), key)
        self.cascade.instrument(pipe)
        self._pipe = pipe
        self.load_phase = "making the preview's lighting"
        self._envmap = self._make_envmap(torch)
        if self.warmup == "off":
            log.warning(
                "KILN_TRELLIS_WARMUP=0: no warm-up job, so the first real job is the first "
                "to use the attention kernels, decoders and GLB export"
            )
        else:
            self._warm_up(torch, device)
        log.info(
            "TRELLIS.2 ready; %.1f GiB of GPU memory reserved",
            torch.cuda.memory_reserved() / 2**30,
        )

    def _check_weights(self) -> None:
        """Offline (`HF_HUB_OFFLINE=1`), every file TRELLIS.2 will read must be here:
        name the missing ones now. Online they are downloaded on load (logged)."""
        from . import weights

        missing = weights.missing_files(self.model, self.rembg_model)
        if not missing:
            return
        lines = "\n".join(f"  - {m}" for m in missing)
        if weights.offline():
            raise PipelineUnavailable(
                f"offline (HF_HUB_OFFLINE=1) and {len(missing)} file(s) TRELLIS.2 reads are "
                f"not in the Hugging Face cache ({weights.hub_cache()}) or the model "
                f"directory:\n{lines}\nFetch them on a connected machine as worker/README.md "
                '("Weights") says, then copy the cache here.'
            )
        log.info("not cached yet, downloaded now from Hugging Face:\n%s", lines)

    def _from_pretrained(self) -> Any:
        """`Trellis2ImageTo3DPipeline.from_pretrained`, with the background remover of
        KILN_TRELLIS_REMBG_MODEL instead of pipeline.json's when it is set: the one in
        pipeline.json is then never downloaded nor loaded."""
        from trellis2.pipelines import Trellis2ImageTo3DPipeline
        from trellis2.pipelines import rembg as rembg_module

        choice = self.rembg_model
        if choice is None:
            return Trellis2ImageTo3DPipeline.from_pretrained(self.model)
        original = rembg_module.BiRefNet

        def replacement(**kwargs: Any) -> Any:
            if choice.lower() == "none":
                return None
            return original(**{**kwargs, "model_name": choice})

        rembg_module.BiRefNet = replacement
        try:
            pipe = Trellis2ImageTo3DPipeline.from_pretrained(self.model)
        finally:
            rembg_module.BiRefNet = original
        log.info("background remover: %s (KILN_TRELLIS_REMBG_MODEL)", choice)
        return pipe

    def _make_envmap(self, torch: Any) -> Any:
        """The lighting of the preview render: an HDR file if configured, else uniform light."""
        from trellis2.renderers import EnvMap

        if self.envmap_path:
            import cv2

            image = cv2.imread(self.envmap_path, cv2.IMREAD_UNCHANGED)
            if image is None:
                raise PipelineUnavailable(f"cannot read KILN_TRELLIS_ENVMAP={self.envmap_path}")
            pixels = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            return EnvMap(torch.tensor(pixels, dtype=torch.float32, device="cuda"))
        return EnvMap(torch.full((256, 512, 3), 1.0, dtype=torch.float32, device="cuda"))

    def _warm_up(self, torch: Any, device: Any) -> None:
        """One tiny real job through `run` — cut-out, the three samplers (attention
        kernels, sparse convolutions), the decoders, preview, position map, `to_glb`,
        the GLB with WebP textures, the OBJ archive — so that a broken install fails now,
        named, instead of with the first job. Its time and peak VRAM go to `/health`.

        The background remover runs once on its own first: the warm-up picture has
        alpha (so that the job does not depend on what a remover makes of a drawing).
        """
        from ..warmup import run_warmup, warmup_picture

        if self._pipe.rembg_model is not None:
            self.load_phase = "warming up (background removal)"
            removed = self._remove_background(warmup_picture().convert("RGB"))
            if getattr(removed, "mode", None) != "RGBA":
                raise RuntimeError("the background remover did not return an RGBA picture")
        params = self.validate_params({} if self.warmup == "full" else dict(WARMUP_PARAMS))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        try:
            # The renders are proven too: a renderer that imports but fails when it
            # runs would otherwise leave every job without its preview (and position
            # map, unless this TRELLIS.2's renderer has no `coord` output at all).
            report = run_warmup(self, params, expect=("preview.png", "model.glb", "output3d.zip"))
            if "xyz_images.png" not in report["files"] and not self.position_map_unsupported:
                raise RuntimeError(
                    "the warm-up job made no xyz_images.png: the position-map render failed"
                )
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_reserved()
        finally:
            self.free_memory()
        settings = dict(self._settings_used(params, None))
        self.warmup_report = {
            **report,
            "settings": settings,
            "peak_vram_mib": int(peak // 2**20),
            "device": device.name,
            "total_vram_mib": int(device.total_memory // 2**20),
        }
        log.info(
            "warm-up job done in %.1f s at %s, peak %.1f GiB of GPU memory (PyTorch's; the "
            "CUDA context adds about 0.5 GiB)",
            report["seconds"],
            settings,
            peak / 2**30,
        )

    # -- params --------------------------------------------------------------------

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check the options a client may set; unknown keys are ignored.

        resolution (512 | 1024 | 1536) or pipeline_type; seed; steps (all stages) or
        sparse_structure_steps / shape_steps / texture_steps; sparse_structure_guidance /
        shape_guidance / texture_guidance; texture_size (512–4096); decimation_target;
        remesh, preprocess_image, preview, xyz, obj, webp (booleans); max_num_tokens.
        """
        p = dict(params)
        out: dict[str, Any] = {}
        resolution = _int(p, "resolution", self.defaults["resolution"], 512, 1536)
        if resolution not in PIPELINE_TYPES:
            raise ValueError("resolution must be 512, 1024 or 1536")
        pipeline_type = p.get("pipeline_type", PIPELINE_TYPES[resolution])
        if pipeline_type not in ALL_PIPELINE_TYPES:
            raise ValueError(f"pipeline_type must be one of {', '.join(ALL_PIPELINE_TYPES)}")
        out["pipeline_type"] = pipeline_type
        out["seed"] = _int(p, "seed", 42, 0, 2**31 - 1)
        steps = p.get("steps")
        for stage in ("sparse_structure", "shape", "texture"):
            sampler: dict[str, Any] = {}
            stage_steps = p.get(f"{stage}_steps", steps)
            if stage_steps is not None:
                sampler["steps"] = _int(
                    {f"{stage}_steps": stage_steps}, f"{stage}_steps", 0, 1, 100
                )
            if f"{stage}_guidance" in p:
                sampler["guidance_strength"] = _float(p, f"{stage}_guidance", 0.0, 0.0, 20.0)
            out[f"{stage}_sampler_params"] = sampler
        texture_size = _int(p, "texture_size", self.defaults["texture_size"], 512, 4096)
        if texture_size not in TEXTURE_SIZES:
            raise ValueError("texture_size must be 512, 1024, 2048 or 4096")
        out["texture_size"] = texture_size
        out["decimation_target"] = _int(
            p, "decimation_target", self.defaults["decimation_target"], 10_000, 2_000_000
        )
        out["max_num_tokens"] = _int(
            p, "max_num_tokens", self.defaults["max_num_tokens"], 1024, 262_144
        )
        for flag in ("remesh", "preprocess_image", "preview", "xyz", "obj", "webp"):
            out[flag] = _bool(p, flag, True)
        return out

    def settings_after_oom(
        self, params: dict[str, Any], first_attempt: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """One step down, on what costs the memory: 1536 → 1024 (cascade), 1024 → 512,
        then at 512 a texture above 1024 → 1024; `None` below that. `params` are what
        `validate_params` returned (complete), and so is the result: it is not validated
        again, which would lose the per-stage steps.

        The retry never runs the settings that just ran out of memory again: freeing
        the cache only helps against fragmentation, which `expandable_segments` already
        limits. So a 1536 job that the token cap had already brought down to 1024
        (`first_attempt["settings"]["resolution"]`, see `CascadeResolution`) goes to 512:
        as `1024_cascade` it would run the same. Halving `max_num_tokens` instead would do
        nothing to a 1024 job (TRELLIS.2 reads it only in the 1536 cascade).
        """
        lower = dict(params)
        pipeline_type = params["pipeline_type"]
        if pipeline_type == "1536_cascade":
            reached = (first_attempt.get("settings") or {}).get("resolution")
            at_1024 = isinstance(reached, int) and reached <= 1024
            lower["pipeline_type"] = "512" if at_1024 else "1024_cascade"
        elif pipeline_type in ("1024", "1024_cascade"):
            lower["pipeline_type"] = "512"
        elif params["texture_size"] > 1024:
            lower["texture_size"] = 1024
        else:
            return None
        return lower

    @staticmethod
    def _settings_used(
        p: dict[str, Any], mesh: Any, resolution: int | None = None
    ) -> dict[str, Any]:
        """The settings a job ran with, for its result's metadata. `resolution` is the
        one TRELLIS.2 decoded at, read from the mesh (its voxels are 1/resolution wide):
        the 1536 cascade lowers it itself when the shape has more than `max_num_tokens`.
        Before there is a mesh, `resolution` is what the cascade is known to run at."""
        if resolution is None:
            resolution = PIPELINE_RESOLUTIONS.get(p["pipeline_type"])
        try:
            if mesh is not None:
                resolution = round(1 / float(mesh.voxel_size))
        except (TypeError, ValueError, ZeroDivisionError, AttributeError):
            pass
        return {
            "pipeline_type": p["pipeline_type"],
            "resolution": resolution,
            "max_num_tokens": p["max_num_tokens"],
            "texture_size": p["texture_size"],
            "decimation_target": p["decimation_target"],
            "seed": p["seed"],
        }

    # -- one job ---------------------------------------------------------------------

    def run(self, job: JobInput, ctx: JobContext) -> list[Path]:
        import o_voxel
        import torch
        from PIL import Image

        from .cutout import cut_out, normalise_mode

        if self._pipe is None:
            raise RuntimeError("the TRELLIS.2 pipeline is not loaded")
        p = job.params  # complete: app.py validates a dispatch's params even when absent
        ctx.progress(0, "preprocessing")
        with Image.open(job.image_path) as opened:
            image = normalise_mode(opened.copy())

        # The cut-out goes to kiln at once (it is ready long before the model), and is
        # what TRELLIS.2 gets: no second background removal (see cutout.py).
        model_input, preprocess = image, p["preprocess_image"]
        cutout_size: int | None = None
        if p["preprocess_image"]:
            cutout = cut_out(image, self._remove_background)
            pixel_images = job.workdir / "pixel_images.png"
            cutout.image.save(pixel_images, format="PNG")
            cutout_size = cutout.image.width
            ctx.emit(pixel_images)
            model_input, preprocess = cutout.model_input()
        ctx.check_cancelled()

        cascade = p["pipeline_type"].endswith("_cascade")
        with torch.no_grad():
            with self.progress.job(ctx, shape_passes=2 if cascade else 1), self.cascade.job(ctx, p):
                meshes = self._pipe.run(
                    model_input,
                    seed=p["seed"],
                    sparse_structure_sampler_params=p["sparse_structure_sampler_params"],
                    shape_slat_sampler_params=p["shape_sampler_params"],
                    tex_slat_sampler_params=p["texture_sampler_params"],
                    preprocess_image=preprocess,
                    pipeline_type=p["pipeline_type"],
                    max_num_tokens=p["max_num_tokens"],
                )
            ctx.check_cancelled()
            mesh = meshes[0]
            del meshes
            ctx.metadata["settings"] = self._settings_used(p, mesh)
            mesh.simplify(16777216)  # nvdiffrast's limit, as TRELLIS.2's example does

            if p["preview"]:
                ctx.progress(PROGRESS_PREVIEW, "rendering_preview")
                preview = job.workdir / "preview.png"
                if self._render_preview(mesh, preview, torch):
                    ctx.emit(preview)

            if p["xyz"]:
                ctx.progress(PROGRESS_POSITION_MAP, "rendering_position_map")
                xyz = job.workdir / "xyz_images.png"
                if self._render_position_map(mesh, cutout_size or POSITION_MAP_SIZE, xyz, torch):
                    ctx.emit(xyz)

            ctx.progress(PROGRESS_GLB, "exporting_glb")
            textured = o_voxel.postprocess.to_glb(
                vertices=mesh.vertices,
                faces=mesh.faces,
                attr_volume=mesh.attrs,
                coords=mesh.coords,
                attr_layout=mesh.layout,
                voxel_size=mesh.voxel_size,
                aabb=[[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]],
                decimation_target=p["decimation_target"],
                texture_size=p["texture_size"],
                remesh=p["remesh"],
                remesh_band=1,
                remesh_project=0,
                verbose=False,
            )
            del mesh
            ctx.check_cancelled()
            glb = job.workdir / "model.glb"
            textured.export(str(glb), extension_webp=p["webp"])
            ctx.emit(glb)
        gc.collect()
        torch.cuda.empty_cache()

        if not p["obj"]:
            return []
        ctx.progress(PROGRESS_OBJ, "exporting_obj")
        return [mesh_to_obj_zip(textured, job.workdir / "output3d.zip")]

    def _remove_background(self, rgb: Any) -> Any:
        """TRELLIS.2's `rembg_model` on `rgb`, moved to the GPU only meanwhile in low-VRAM
        mode, as `preprocess_image` does; it returns the picture with alpha added."""
        pipe = self._pipe
        rembg = pipe.rembg_model
        if rembg is None:
            raise JobFailed(
                "This worker removes no backgrounds (KILN_TRELLIS_REMBG_MODEL=none): send a "
                "picture with a transparent background, or preprocess_image=false."
            )
        low_vram = getattr(pipe, "low_vram", False)
        if low_vram:
            rembg.to(getattr(pipe, "device", "cuda"))
        try:
            return rembg(rgb)
        finally:
            if low_vram:
                rembg.cpu()

    def _render_preview(self, mesh: Any, path: Path, torch: Any) -> bool:
        """Render one shaded view to `path`, transparent around the model; a failure costs
        the preview, not the job."""
        from PIL import Image
        from trellis2.utils import render_utils

        from .preview import transparent_preview

        try:
            frames = render_utils.render_snapshot(
                mesh, resolution=512, r=2, fov=36, nviews=1, envmap=self._envmap, verbose=False
            )
            key = "shaded" if "shaded" in frames else next(iter(frames))
            coverage = next((frames[k] for k in ("mask", "alpha") if frames.get(k)), None)
            if coverage is None:
                log.info("the renderer returned no mask: the preview keeps its black background")
                Image.fromarray(frames[key][0]).save(path, format="PNG")
            else:
                transparent_preview(frames[key][0], coverage[0]).save(path, format="PNG")
            return True
        except Exception as err:
            if self.is_out_of_memory(err):
                raise  # the retry after freeing memory handles it
            log.warning("preview render failed, sending no preview: %s", err)
            return False
        finally:
            torch.cuda.empty_cache()

    def _render_position_map(self, mesh: Any, size: int, path: Path, torch: Any) -> bool:
        """Render the front view's surface positions to `path` (position_map.py says how).

        `render_frames` would clip the coordinates to 8 bits, so `MeshRenderer.render` is
        called directly, without supersampling or anti-aliasing: both blend a silhouette
        pixel's position with the empty background's zeros. A TRELLIS.2 whose renderer
        has no `coord` output gets no position map, and the job goes on.
        """
        from . import position_map

        try:
            from trellis2.renderers import MeshRenderer
        except ImportError:
            log.info("this TRELLIS.2 has no MeshRenderer: sending no position map")
            return False
        try:
            vertices = mesh.vertices
            camera = position_map.front_camera(
                vertices.min(dim=0).values.cpu().numpy(), vertices.max(dim=0).values.cpu().numpy()
            )
            if self._position_renderer is None:
                self._position_renderer = MeshRenderer(
                    {"ssaa": 1, "antialias": False, "chunk_size": None}
                )
            renderer = self._position_renderer
            renderer.rendering_options.resolution = size
            renderer.rendering_options.near = camera.near
            renderer.rendering_options.far = camera.far
            rendered = renderer.render(
                mesh,
                torch.tensor(camera.extrinsics, dtype=torch.float32, device="cuda"),
                torch.tensor(camera.intrinsics, dtype=torch.float32, device="cuda"),
                return_types=["mask", "coord"],
            )
            if rendered.get("coord") is None or rendered.get("mask") is None:
                log.info("TRELLIS.2's MeshRenderer gave no `coord`: sending no position map")
                self.position_map_unsupported = True
                return False
            # (3, H, W) and (H, W) on the GPU; rows top to bottom (OpenCV's y is down).
            coords = rendered["coord"].permute(1, 2, 0).float().cpu().numpy()
            inside = rendered["mask"].float().cpu().numpy() > 0.5
            encoded = position_map.encode(position_map.trellis_to_gltf(coords), inside)
            position_map.write_png16(encoded, path)
            return True
        except Exception as err:
            if self.is_out_of_memory(err):
                raise
            log.warning("position map render failed, sending no xyz_images.png: %s", err)
            return False
        finally:
            torch.cuda.empty_cache()

    def free_memory(self) -> None:
        """Collect garbage and return cached GPU memory to the driver.

        After an OOM in low-VRAM mode, a stage's model may have been left on the GPU
        (TRELLIS.2 moves it back to the CPU only when the stage ends normally); it is
        moved back here so that the retry starts from a clean card.
        """
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available():
            return
        pipe = self._pipe
        if pipe is not None and getattr(pipe, "low_vram", False):
            try:
                for model in getattr(pipe, "models", {}).values():
                    model.cpu()
                for extra in ("image_cond_model", "rembg_model"):
                    component = getattr(pipe, extra, None)
                    if component is not None and hasattr(component, "cpu"):
                        component.cpu()
            except Exception:
                log.exception("moving TRELLIS.2's models back to the CPU failed")
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()


# -- the job a wrapper on the shared pipeline works for ------------------------------------

_State = TypeVar("_State")


class _PerJob(Generic[_State]):
    """The state of the job that the wrappers installed on the pipeline serve, kept per
    thread: the pipeline and its samplers outlive jobs, and outside a job (the warm-up)
    the wrappers find none and do nothing."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def _running(self, state: _State) -> Iterator[None]:
        self._local.current = state
        try:
            yield
        finally:
            self._local.current = None

    def _current(self) -> _State | None:
        return getattr(self._local, "current", None)


# -- progress from the samplers' steps ---------------------------------------------------


@dataclass
class _JobProgress:
    ctx: JobContext
    shape_passes: int
    calls: dict[str, int] = field(default_factory=dict)
    key: str | None = None
    steps: int = 1
    done: int = 0
    start: float = 0.0
    end: float = 0.0


class SamplerProgress(_PerJob[_JobProgress]):
    """Turns sampler steps into `JobContext.progress` calls.

    One instance serves the pipeline for its lifetime; the job it reports for is kept
    per thread, so the wrapped samplers know whose progress a step is (and do nothing
    during the warm-up, which runs outside any job).
    """

    def job(self, ctx: JobContext, *, shape_passes: int = 1) -> AbstractContextManager[None]:
        return self._running(_JobProgress(ctx, shape_passes))

    def started(self, key: str, steps: int) -> None:
        state = self._current()
        if state is None or key not in SAMPLER_STAGES:
            return
        stage, start, end = SAMPLER_STAGES[key]
        passes = state.shape_passes if key == "shape" else 1
        index = min(state.calls.get(key, 0), passes - 1)
        state.calls[key] = state.calls.get(key, 0) + 1
        width = (end - start) / passes
        state.key, state.steps, state.done = key, max(1, steps), 0
        state.start, state.end = start + width * index, start + width * (index + 1)
        state.ctx.progress(state.start, stage)

    def step(self, key: str) -> None:
        state = self._current()
        if state is None or state.key != key:
            return
        state.done = min(state.done + 1, state.steps)
        stage = SAMPLER_STAGES[key][0]
        state.ctx.progress(
            state.start + (state.end - state.start) * state.done / state.steps, stage
        )
        if key == "texture" and state.done == state.steps:
            # The pipeline decodes the latents right after the last texture step.
            state.ctx.progress(PROGRESS_DECODING, "decoding")

    def instrument(self, sampler: Any, key: str) -> None:
        """Wrap `sampler.sample` and `sampler.sample_once` on this instance (see module doc)."""
        if getattr(sampler, "_kiln_progress", False):
            return
        sample = sampler.sample
        sample_once = sampler.sample_once
        signature = inspect.signature(sample)
        steps_param = signature.parameters.get("steps")
        default_steps = (
            steps_param.default
            if steps_param is not None and steps_param.default is not inspect.Parameter.empty
            else 1
        )

        @functools.wraps(sample)
        def sample_with_progress(*args: Any, **kwargs: Any) -> Any:
            try:
                steps = signature.bind_partial(*args, **kwargs).arguments.get(
                    "steps", default_steps
                )
            except TypeError:
                steps = kwargs.get("steps", default_steps)
            self.started(key, int(steps))
            return sample(*args, **kwargs)

        @functools.wraps(sample_once)
        def sample_once_with_progress(*args: Any, **kwargs: Any) -> Any:
            result = sample_once(*args, **kwargs)
            self.step(key)
            return result

        sampler.sample = sample_with_progress
        sampler.sample_once = sample_once_with_progress
        sampler._kiln_progress = True


# -- the resolution a cascade really runs at ---------------------------------------------


@dataclass
class _CascadeJob:
    ctx: JobContext
    params: dict[str, Any]
    shape_passes: int = 0


class CascadeResolution(_PerJob[_CascadeJob]):
    """Records in the job's metadata (`settings`, with its `resolution`) the resolution a
    1536 job's shape is sampled at, as soon as it is known, for `settings_after_oom`.

    TRELLIS.2 lowers it by 128 while the shape has `max_num_tokens` tokens or more, down
    to 1024; a first attempt that came down to 1024 and then ran out of memory would run
    the same again as `1024_cascade`. It is known
    - when `sample_shape_slat_cascade` returns it (an out-of-memory error in the texture
      pass, the decoders or the export);
    - when the second shape pass starts with `max_num_tokens` tokens or more: TRELLIS.2
      stops lowering above 1024 only for fewer tokens, so it stopped at 1024.
    An error inside the second shape pass of a shape with fewer tokens leaves it unknown:
    the loop stopped at the first resolution under the cap, which may be 1024 too
    (README.md, "24 GB cards").

    Outside a job nothing is recorded.
    """

    def __init__(self, settings_used: Callable[..., dict[str, Any]]) -> None:
        super().__init__()
        self._settings_used = settings_used

    def job(self, ctx: JobContext, params: dict[str, Any]) -> AbstractContextManager[None]:
        return self._running(_CascadeJob(ctx, params))

    def known(self, resolution: int) -> None:
        state = self._current()
        if state is None:
            return
        state.ctx.metadata["settings"] = self._settings_used(
            state.params, None, resolution=resolution
        )

    def shape_pass(self, noise: Any) -> None:
        state = self._current()
        if state is None:
            return
        state.shape_passes += 1
        if state.shape_passes != 2 or state.params["pipeline_type"] != "1536_cascade":
            return
        tokens = _token_count(noise)
        if tokens is not None and tokens >= state.params["max_num_tokens"]:
            self.known(1024)

    def instrument(self, pipe: Any) -> None:
        """Wrap `sample_shape_slat_cascade` and the shape sampler's `sample` on these
        instances (after `SamplerProgress.instrument`, whose wrapper keeps the signature)."""
        if getattr(pipe, "_kiln_cascade", False):
            return
        cascade = getattr(pipe, "sample_shape_slat_cascade", None)
        if cascade is not None:

            @functools.wraps(cascade)
            def cascade_with_resolution(*args: Any, **kwargs: Any) -> Any:
                result = cascade(*args, **kwargs)
                try:
                    resolution = int(result[1])
                except (TypeError, ValueError, IndexError):
                    log.info("sample_shape_slat_cascade returned no resolution")
                else:
                    self.known(resolution)
                return result

            pipe.sample_shape_slat_cascade = cascade_with_resolution

        sampler = pipe.shape_slat_sampler
        sample = sampler.sample
        signature = inspect.signature(sample)

        @functools.wraps(sample)
        def sample_seen(*args: Any, **kwargs: Any) -> Any:
            try:
                noise = signature.bind_partial(*args, **kwargs).arguments.get("noise")
            except TypeError:
                noise = args[1] if len(args) > 1 else kwargs.get("noise")
            self.shape_pass(noise)
            return sample(*args, **kwargs)

        sampler.sample = sample_seen
        pipe._kiln_cascade = True


def _token_count(noise: Any) -> int | None:
    """The rows of a SparseTensor (one per token), or None for anything else."""
    for attr in ("coords", "feats"):
        try:
            return int(getattr(noise, attr).shape[0])
        except (AttributeError, IndexError, TypeError, ValueError):
            continue
    return None


# -- the modules ------------------------------------------------------------------------


def attention_modules(env: dict[str, str] | None = None) -> dict[str, str]:
    """The modules TRELLIS.2's attention backends will import, with how to get each."""
    env = dict(os.environ) if env is None else env
    dense = env.get("ATTN_BACKEND") or "flash_attn"
    sparse = env.get("SPARSE_ATTN_BACKEND") or env.get("ATTN_BACKEND") or "flash_attn"
    if sparse not in ATTENTION_MODULES:  # TRELLIS.2 ignores other values for sparse
        sparse = "flash_attn"
    return dict(ATTENTION_MODULES[b] for b in (dense, sparse) if b in ATTENTION_MODULES)


def check_modules() -> None:
    """Import everything the pipeline will use; `PipelineUnavailable` listing every
    module that does not import (with why, and how to get it), a transformers outside
    TRELLIS.2's range, and a Pillow without WebP (the GLB's textures)."""
    import importlib

    problems: list[str] = []
    for name, how in {**REQUIRED_MODULES, **attention_modules()}.items():
        try:
            importlib.import_module(name)
        except Exception as err:  # ImportError, or an OSError/RuntimeError from a .so
            text = " ".join(str(err).split())[:300]
            problems.append(f"{name}: {type(err).__name__}: {text} — {how}")
    transformers = sys.modules.get("transformers")
    version = getattr(transformers, "__version__", None)
    if version is not None:
        parts = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
        low, high = TRANSFORMERS_RANGE
        if not low <= parts < high:
            problems.append(
                f"transformers {version}: TRELLIS.2 needs >=4.56,<5 (5 removed what its "
                "DINOv3 feature extractor reads) — pip install 'transformers>=4.56,<5'"
            )
    from PIL import __version__ as pillow_version
    from PIL import features

    if not features.check("webp"):
        problems.append(
            f"Pillow {pillow_version} has no WebP support (TRELLIS.2's setup.sh installs "
            "pillow-simd, which can lose it), and the GLB's textures are WebP — "
            "pip uninstall -y pillow-simd pillow && pip install 'pillow>=10,<13' "
            "(worker/install.sh does this)"
        )
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise PipelineUnavailable(
            f"{len(problems)} missing or broken requirement(s) of TRELLIS.2:\n{lines}\n"
            "Run worker/install.sh (worker/README.md), or select another pipeline with "
            "KILN_WORKER_PIPELINE."
        )


# -- param helpers ----------------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise PipelineUnavailable(f"{name}=`{raw}` is not an integer") from None


def _int(p: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = p.get(key, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{key} must be an integer from {low} to {high}")
    return value


def _float(p: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = p.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{key} must be a number from {low:g} to {high:g}")
    return float(value)


def _bool(p: dict[str, Any], key: str, default: bool) -> bool:
    value = p.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value
