"""The TRELLIS.2 pipeline module, without a GPU.

What can be checked here: the module imports without torch; a machine without TRELLIS.2
gets a clear start-up error; params; the sampler instrumentation (against samplers
built like TRELLIS.2's: a base loop calling `self.sample_once`, a CFG subclass calling
`super().sample` positionally); and `run` end to end against fake `torch`, `trellis2`
and `o_voxel` modules that record how they are called.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import sys
import time
import types
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image, ImageDraw

from kiln_worker.pipelines import position_map
from kiln_worker.pipelines import (
    JobCancelled,
    JobFailed,
    JobInput,
    PipelineUnavailable,
    load_pipeline,
)
from kiln_worker.pipelines.trellis2 import SamplerProgress, Trellis2Pipeline
from tests.conftest import Receiver, dispatch, png_bytes
from tests.png16 import read_png16
from tests.standin import OutOfMemoryError


class RecordingContext:
    """A JobContext that records what the pipeline reports."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.attempt = 0
        self.metadata: dict[str, Any] = {}
        self.reports: list[tuple[float, str]] = []
        self.emitted: list[tuple[str, bytes]] = []
        #: For each emitted file, how many progress reports had been made.
        self.emitted_after: list[int] = []
        self.cancel_after = cancel_after

    def progress(self, percent: float, stage: str) -> None:
        self.check_cancelled()
        self.reports.append((percent, stage))

    def emit(self, path: Path, name: str | None = None) -> None:
        self.emitted.append((name or path.name, path.read_bytes()))
        self.emitted_after.append(len(self.reports))

    def check_cancelled(self) -> None:
        if self.cancel_after is not None and len(self.reports) >= self.cancel_after:
            raise JobCancelled("timeout")

    @property
    def cancelled(self) -> bool:
        return False


# Samplers shaped like trellis2/pipelines/samplers/flow_euler.py.


class FlowEulerSampler:
    def __init__(self) -> None:
        self.steps_run = 0

    def sample_once(
        self, model: Any, x_t: Any, t: float, t_prev: float, cond: Any = None, **kwargs: Any
    ) -> Any:
        self.steps_run += 1
        if callable(model):  # a fake flow model that can fail (FakeTrellisPipeline)
            model(x_t)
        return types.SimpleNamespace(pred_x_prev=x_t)

    def sample(
        self,
        model: Any,
        noise: Any,
        cond: Any = None,
        steps: int = 50,
        rescale_t: float = 1.0,
        verbose: bool = True,
        tqdm_desc: str = "Sampling",
        **kwargs: Any,
    ) -> Any:
        sample = noise
        for i in range(steps):
            sample = self.sample_once(
                model, sample, 1 - i / steps, 1 - (i + 1) / steps, cond, **kwargs
            ).pred_x_prev
        return types.SimpleNamespace(samples=sample)


class FlowEulerCfgSampler(FlowEulerSampler):
    def sample(
        self,
        model: Any,
        noise: Any,
        cond: Any,
        neg_cond: Any,
        steps: int = 50,
        rescale_t: float = 1.0,
        guidance_strength: float = 3.0,
        verbose: bool = True,
        **kwargs: Any,
    ) -> Any:
        return super().sample(
            model,
            noise,
            cond,
            steps,
            rescale_t,
            verbose,
            neg_cond=neg_cond,
            guidance_strength=guidance_strength,
            **kwargs,
        )


NO_GPU_STACK = (
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("trellis2") is None
)


def test_module_imports_without_torch() -> None:
    """The package must import where torch is absent (this is checked where it is absent)."""
    module = importlib.reload(importlib.import_module("kiln_worker.pipelines.trellis2"))
    assert module.Trellis2Pipeline.name == "trellis2"


@pytest.mark.skipif(not NO_GPU_STACK, reason="TRELLIS.2 is installed here")
def test_missing_trellis_is_named_by_load_not_preflight() -> None:
    """The start goes on (so /health can say it); the load names every missing module."""
    pipeline = load_pipeline("trellis2")
    pipeline.preflight()
    with pytest.raises(PipelineUnavailable) as info:
        pipeline.load()
    message = str(info.value)
    assert pipeline.load_phase == "checking the Python modules"
    assert "missing or broken requirement(s) of TRELLIS.2" in message
    assert "trellis2.pipelines: " in message and "worker/install.sh" in message
    assert "flash_attn: " in message, "the lazily imported attention kernel is checked too"


def test_params_defaults_and_mapping() -> None:
    p = Trellis2Pipeline().validate_params({})
    assert p["pipeline_type"] == "1024_cascade" and p["seed"] == 42
    assert p["texture_size"] == 2048 and p["decimation_target"] == 500_000
    assert p["sparse_structure_sampler_params"] == {} and p["preview"] and p["obj"]
    p = Trellis2Pipeline().validate_params(
        {
            "resolution": "512",
            "steps": 8,
            "shape_steps": 20,
            "texture_guidance": 2,
            "seed": 7,
            "unknown": 1,
        }
    )
    assert p["pipeline_type"] == "512" and p["seed"] == 7
    assert p["sparse_structure_sampler_params"] == {"steps": 8}
    assert p["shape_sampler_params"] == {"steps": 20}
    assert p["texture_sampler_params"] == {"steps": 8, "guidance_strength": 2.0}
    assert (
        Trellis2Pipeline().validate_params({"resolution": 1536})["pipeline_type"] == "1536_cascade"
    )


@pytest.mark.parametrize(
    "params",
    [
        {"resolution": 768},
        {"steps": 0},
        {"steps": 101},
        {"texture_size": 3000},
        {"seed": -1},
        {"obj": "yes"},
        {"pipeline_type": "2048"},
        {"shape_guidance": 99},
        {"decimation_target": 5},
    ],
)
def test_bad_params_are_refused(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Trellis2Pipeline().validate_params(params)


def test_defaults_fit_a_24_gb_card(monkeypatch: pytest.MonkeyPatch) -> None:
    p = Trellis2Pipeline().validate_params({})
    assert p["pipeline_type"] == "1024_cascade" and p["max_num_tokens"] == 32768
    monkeypatch.setenv("KILN_TRELLIS_MAX_NUM_TOKENS", "49152")
    assert Trellis2Pipeline().validate_params({})["max_num_tokens"] == 49152


@pytest.mark.parametrize(
    ("params", "changed"),
    [
        ({"resolution": 1536}, {"pipeline_type": "1024_cascade"}),
        ({"resolution": 1024}, {"pipeline_type": "512"}),
        ({"pipeline_type": "1024"}, {"pipeline_type": "512"}),
        ({"resolution": 512, "texture_size": 4096}, {"texture_size": 1024}),
        ({"resolution": 512, "texture_size": 1024}, None),
    ],
)
def test_the_oom_retry_lowers_the_settings(
    params: dict[str, Any], changed: dict[str, Any] | None
) -> None:
    pipeline = Trellis2Pipeline()
    before = pipeline.validate_params(params)
    after = pipeline.settings_after_oom(before, {})
    if changed is None:
        assert after is None, "nothing lower: no second attempt with the same settings"
        return
    assert after is not None
    assert {k: v for k, v in after.items() if before[k] != v} == changed
    assert pipeline.validate_params({}) is not after


@pytest.mark.parametrize(
    ("default", "changed"),
    [
        ("512", {"texture_size": 1024}),
        ("1024", {"pipeline_type": "512"}),
        ("1536", {"pipeline_type": "1024_cascade"}),
    ],
)
def test_the_oom_retry_lowers_the_default_settings(
    monkeypatch: pytest.MonkeyPatch, default: str, changed: dict[str, Any]
) -> None:
    """A dispatch without params runs the defaults: the retry lowers those, whole."""
    monkeypatch.setenv("KILN_TRELLIS_RESOLUTION", default)
    pipeline = Trellis2Pipeline()
    before = pipeline.validate_params({})
    after = pipeline.settings_after_oom(dict(before), {})
    assert after is not None and after.keys() == before.keys()
    assert {k: v for k, v in after.items() if before[k] != v} == changed


def test_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_TRELLIS_RESOLUTION", "512")
    monkeypatch.setenv("KILN_TRELLIS_TEXTURE_SIZE", "1024")
    p = Trellis2Pipeline().validate_params({})
    assert p["pipeline_type"] == "512" and p["texture_size"] == 1024


def test_sampler_steps_become_progress() -> None:
    progress = SamplerProgress()
    structure, shape, texture = FlowEulerCfgSampler(), FlowEulerCfgSampler(), FlowEulerSampler()
    for sampler, key in ((structure, "sparse_structure"), (shape, "shape"), (texture, "texture")):
        progress.instrument(sampler, key)
        progress.instrument(sampler, key)  # idempotent
    ctx = RecordingContext()
    with progress.job(ctx, shape_passes=2):  # a cascade: the shape is sampled twice
        structure.sample("m", 0, "cond", "neg", steps=4, verbose=False)
        shape.sample("m", 0, cond="c", neg_cond="n", steps=3)
        shape.sample("m", 0, cond="c", neg_cond="n", steps=3)
        texture.sample("m", 0, "c", 5)  # steps given positionally
    assert (structure.steps_run, shape.steps_run, texture.steps_run) == (4, 6, 5)
    values = [v for v, _ in ctx.reports]
    assert values == sorted(values), "progress never goes backwards"
    assert values[0] == 5.0 and values[-1] == 80.0
    stages = [s for _, s in ctx.reports]
    assert stages[0] == "sampling_structure" and stages[-1] == "decoding"
    assert stages.count("sampling_shape") == 2 * (1 + 3)
    # The two shape passes split the shape range in halves.
    shape_values = [v for v, s in ctx.reports if s == "sampling_shape"]
    assert (
        shape_values[0] == 25.0
        and shape_values[3] == 40.0
        and shape_values[4] == 40.0
        and shape_values[-1] == 55.0
    )


def test_steps_outside_a_job_report_nothing() -> None:
    """The warm-up runs the samplers with no job: nothing to report, nothing to break."""
    progress = SamplerProgress()
    sampler = FlowEulerSampler()
    progress.instrument(sampler, "shape")
    sampler.sample("m", 0, steps=3)
    assert sampler.steps_run == 3


def test_a_stopped_job_leaves_the_sampler_loop() -> None:
    progress = SamplerProgress()
    sampler = FlowEulerCfgSampler()
    progress.instrument(sampler, "sparse_structure")
    ctx = RecordingContext(cancel_after=3)
    with pytest.raises(JobCancelled), progress.job(ctx):
        sampler.sample("m", 0, "c", "n", steps=50)
    assert sampler.steps_run == 3


# -- run() against fake torch / trellis2 / o_voxel -------------------------------------


class FakeTensor:
    """The few torch.Tensor methods the pipeline calls, over a numpy array."""

    def __init__(self, array: Any) -> None:
        import numpy as np

        self.array = np.asarray(array)

    def min(self, dim: int) -> Any:
        return types.SimpleNamespace(values=FakeTensor(self.array.min(axis=dim)))

    def max(self, dim: int) -> Any:
        return types.SimpleNamespace(values=FakeTensor(self.array.max(axis=dim)))

    def permute(self, *axes: int) -> FakeTensor:
        return FakeTensor(self.array.transpose(axes))

    def float(self) -> FakeTensor:
        return FakeTensor(self.array.astype("float32"))

    def cpu(self) -> FakeTensor:
        return self

    def numpy(self) -> Any:
        return self.array


#: The fake model's box, in TRELLIS.2's coordinates (Z up).
MESH_LOWER, MESH_UPPER = (-0.3, -0.2, -0.4), (0.3, 0.2, 0.4)


class FakeMesh:
    def __init__(self, resolution: int = 1024) -> None:
        self.vertices = FakeTensor([MESH_LOWER, MESH_UPPER])
        self.faces, self.attrs, self.coords = "F", "A", "C"
        self.layout = {"base_color": slice(0, 3)}
        self.voxel_size = 1 / resolution
        self.simplified_to: int | None = None

    def simplify(self, target: int) -> None:
        self.simplified_to = target


class FakeRembg:
    """TRELLIS.2's BiRefNet as the pipeline sees it: a disc of foreground, alpha added."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, int]]] = []
        self.moves: list[str] = []

    def to(self, device: str) -> None:
        self.moves.append(str(device))

    def cpu(self) -> None:
        self.moves.append("cpu")

    def __call__(self, image: Any) -> Any:
        from PIL import Image, ImageDraw

        self.calls.append((image.mode, image.size))
        mask = Image.new("L", image.size, 0)
        w, h = image.size
        ImageDraw.Draw(mask).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=255)
        image.putalpha(mask)
        return image


class FakeMeshRenderer:
    """`trellis2.renderers.MeshRenderer`: records the camera, returns known positions."""

    instances: ClassVar[list[FakeMeshRenderer]] = []

    def __init__(self, rendering_options: dict[str, Any] | None = None) -> None:
        self.rendering_options = types.SimpleNamespace(**(rendering_options or {}))
        self.calls: list[dict[str, Any]] = []
        self.rendered: dict[str, Any] = {}
        FakeMeshRenderer.instances.append(self)

    def render(
        self, mesh: Any, extrinsics: Any, intrinsics: Any, return_types: Any = ()
    ) -> dict[str, Any]:
        import numpy as np

        size = self.rendering_options.resolution
        self.calls.append(
            {"extrinsics": extrinsics, "intrinsics": intrinsics, "types": list(return_types)}
        )
        # A ramp of positions over the picture, inside a centred square.
        rows, cols = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        coord = np.stack([cols - 0.5, -0.2 + 0.01 * rows, 0.5 - rows], axis=0) * 0.9
        mask = np.zeros((size, size), dtype=np.float32)
        mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
        self.rendered = {"coord": coord.astype(np.float32), "mask": mask}
        return {"coord": FakeTensor(coord.astype(np.float32)), "mask": FakeTensor(mask)}


def sparse_noise(tokens: int) -> Any:
    """The shape of TRELLIS.2's SparseTensor noise as far as the pipeline looks: one row
    of `coords` per token."""
    return types.SimpleNamespace(coords=np.zeros((tokens, 4), dtype=np.int32))


class FakeTrellisPipeline:
    instances: ClassVar[list[FakeTrellisPipeline]] = []
    #: The high-resolution shape's tokens at each resolution the 1536 cascade tries
    #: (fewer than any cap when not given).
    tokens_at: ClassVar[dict[int, int]] = {}
    #: Where the first run's flow model runs out of memory: "shape_lr", "shape_hr" (the
    #: cascade's two shape passes) or "texture"; None: nowhere.
    oom_in: ClassVar[str | None] = None

    def __init__(self) -> None:
        self.rembg_model = FakeRembg()
        self.sparse_structure_sampler = FlowEulerCfgSampler()
        self.shape_slat_sampler = FlowEulerCfgSampler()
        self.tex_slat_sampler = FlowEulerCfgSampler()
        self.low_vram = True
        self.models = {"flow": types.SimpleNamespace(cpu=lambda: None)}
        self.calls: list[dict[str, Any]] = []
        self.on_cuda = False
        self.ran_out_of_memory = False
        #: What sample_shape_slat_cascade returned, per call.
        self.cascades: list[int] = []

    @classmethod
    def from_pretrained(cls, path: str) -> FakeTrellisPipeline:
        pipe = cls()
        pipe.path = path
        cls.instances.append(pipe)
        return pipe

    def cuda(self) -> None:
        self.on_cuda = True

    def run(self, image: Any, **kwargs: Any) -> list[FakeMesh]:
        self.calls.append(dict(kwargs, image_size=image.size, image_mode=image.mode))

        def steps(key: str) -> int:
            return int(kwargs.get(key, {}).get("steps", 3))

        self.sparse_structure_sampler.sample(
            "m", 0, cond="c", neg_cond="n", steps=steps("sparse_structure_sampler_params")
        )
        pipeline_type = kwargs.get("pipeline_type", "1024_cascade")
        shape_params = kwargs.get("shape_slat_sampler_params", {})
        if pipeline_type.endswith("cascade"):
            _, resolution = self.sample_shape_slat_cascade(
                {"cond": "c", "neg_cond": "n"},
                {"cond": "c", "neg_cond": "n"},
                self.flow_model("shape_lr"),
                self.flow_model("shape_hr"),
                512,
                {"1024_cascade": 1024, "1536_cascade": 1536}[pipeline_type],
                "coords",
                shape_params,
                kwargs.get("max_num_tokens", 49152),
            )
        else:
            resolution = int(pipeline_type)
            self.shape_slat_sampler.sample(
                "m",
                sparse_noise(1000),
                cond="c",
                neg_cond="n",
                steps=steps("shape_slat_sampler_params"),
            )
        self.tex_slat_sampler.sample(
            self.flow_model("texture"),
            0,
            cond="c",
            neg_cond="n",
            steps=steps("tex_slat_sampler_params"),
        )
        return [FakeMesh(resolution)]

    def sample_shape_slat_cascade(
        self,
        lr_cond: dict[str, Any],
        cond: dict[str, Any],
        flow_model_lr: Any,
        flow_model: Any,
        lr_resolution: int,
        resolution: int,
        coords: Any,
        sampler_params: dict[str, Any],
        max_num_tokens: int = 49152,
    ) -> tuple[Any, int]:
        """TRELLIS.2's: the shape at 512, then at `resolution`, lowered by 128 (not below
        1024) while the shape has `max_num_tokens` tokens or more."""
        params = {"steps": 3, **sampler_params}
        self.shape_slat_sampler.sample(flow_model_lr, sparse_noise(1000), **lr_cond, **params)
        hr_resolution = resolution
        while True:
            tokens = self.tokens_at.get(hr_resolution, 1000)
            if tokens < max_num_tokens or hr_resolution == 1024:
                break
            hr_resolution -= 128
        self.shape_slat_sampler.sample(flow_model, sparse_noise(tokens), **cond, **params)
        self.cascades.append(hr_resolution)
        return "slat", hr_resolution

    def flow_model(self, where: str) -> Any:
        """A flow model that runs out of memory at its first step where `oom_in` says,
        once per pipeline."""

        def step(x_t: Any) -> None:
            if self.oom_in == where and not self.ran_out_of_memory:
                self.ran_out_of_memory = True
                raise OutOfMemoryError(f"CUDA out of memory (fake, in {where})")

        return step


@pytest.fixture
def fake_gpu_stack(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from tests.standin import _textured_cube

    recorded: dict[str, Any] = {"to_glb": [], "exports": [], "empty_cache": 0, "snapshots": []}
    torch = types.ModuleType("torch")
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        get_device_properties=lambda i: types.SimpleNamespace(
            name="NVIDIA GeForce RTX 4090 (fake)", total_memory=24e9
        ),
        empty_cache=lambda: recorded.__setitem__("empty_cache", recorded["empty_cache"] + 1),
        ipc_collect=lambda: None,
        memory_reserved=lambda: 18.5e9,
        synchronize=lambda: None,
        reset_peak_memory_stats=lambda: recorded.__setitem__("peak_reset", True),
        max_memory_reserved=lambda: 6 * 2**30,
    )
    torch.cuda = cuda  # type: ignore[attr-defined]
    torch.no_grad = contextlib.nullcontext  # type: ignore[attr-defined]
    torch.float32 = "float32"  # type: ignore[attr-defined]
    torch.full = lambda shape, value, dtype=None, device=None: ("full", shape, value, device)  # type: ignore[attr-defined]

    trellis2 = types.ModuleType("trellis2")
    pipelines = types.ModuleType("trellis2.pipelines")
    pipelines.Trellis2ImageTo3DPipeline = FakeTrellisPipeline  # type: ignore[attr-defined]
    renderers = types.ModuleType("trellis2.renderers")
    renderers.EnvMap = lambda image: ("envmap", image)  # type: ignore[attr-defined]
    renderers.MeshRenderer = FakeMeshRenderer  # type: ignore[attr-defined]
    FakeMeshRenderer.instances.clear()
    torch.tensor = lambda data, dtype=None, device=None: data  # type: ignore[attr-defined]
    utils = types.ModuleType("trellis2.utils")
    render_utils = types.ModuleType("trellis2.utils.render_utils")

    def render_snapshot(mesh: Any, **kwargs: Any) -> dict[str, Any]:
        import numpy as np

        recorded["snapshots"].append(kwargs)
        # Like PbrMeshRenderer through render_frames: shaded over black, coverage as mask.
        mask = np.zeros((8, 8, 3), dtype=np.uint8)
        mask[2:6, 2:6] = 255
        mask[2:6, 1] = 128
        shaded = np.where(mask > 0, 128, 0).astype(np.uint8)
        shaded[2:6, 1] = 64
        return {"shaded": [shaded], "normal": [], "mask": [mask]}

    render_utils.render_snapshot = render_snapshot  # type: ignore[attr-defined]
    utils.render_utils = render_utils  # type: ignore[attr-defined]

    o_voxel = types.ModuleType("o_voxel")
    postprocess = types.ModuleType("o_voxel.postprocess")

    def to_glb(**kwargs: Any) -> Any:
        recorded["to_glb"].append(kwargs)
        cube = _textured_cube((90, 160, 220))
        original_export = cube.export

        def export(path: str, **options: Any) -> Any:
            recorded["exports"].append(options)
            Path(path).write_bytes(original_export(file_type="glb"))

        cube.export = export
        return cube

    postprocess.to_glb = to_glb  # type: ignore[attr-defined]
    o_voxel.postprocess = postprocess  # type: ignore[attr-defined]

    rembg = types.ModuleType("trellis2.pipelines.rembg")

    class BiRefNet(FakeRembg):
        def __init__(self, model_name: str = "ZhengPeng7/BiRefNet") -> None:
            super().__init__()
            self.model_name = model_name

    rembg.BiRefNet = BiRefNet  # type: ignore[attr-defined]
    pipelines.rembg = rembg  # type: ignore[attr-defined]
    transformers = types.ModuleType("transformers")
    transformers.__version__ = "4.57.3"  # type: ignore[attr-defined]
    # What check_modules imports besides the modules faked above: present, empty.
    for name in (
        "torchvision",
        "nvdiffrast",
        "nvdiffrast.torch",
        "nvdiffrec_render",
        "utils3d",
        "cumesh",
        "flex_gemm",
        "cv2",
        "huggingface_hub",
        "flash_attn",
    ):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("ATTN_BACKEND", raising=False)
    monkeypatch.delenv("SPARSE_ATTN_BACKEND", raising=False)

    for name, module in {
        "torch": torch,
        "transformers": transformers,
        "trellis2": trellis2,
        "trellis2.pipelines": pipelines,
        "trellis2.pipelines.rembg": rembg,
        "trellis2.renderers": renderers,
        "trellis2.utils": utils,
        "trellis2.utils.render_utils": render_utils,
        "o_voxel": o_voxel,
        "o_voxel.postprocess": postprocess,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    FakeTrellisPipeline.instances.clear()
    return recorded


def stage_index(ctx: RecordingContext, stage: str) -> int:
    return [s for _, s in ctx.reports].index(stage)


def emitted_index(ctx: RecordingContext, name: str) -> int:
    """How many progress reports came before `name` was emitted (the index of the first
    report after it)."""
    return ctx.emitted_after[[n for n, _ in ctx.emitted].index(name)]


def job_for(tmp_path: Path, params: dict[str, Any]) -> JobInput:
    image = tmp_path / "input.png"
    image.write_bytes(png_bytes())
    return JobInput(
        task_id="t-1", image_path=image, image_format="PNG", params=params, workdir=tmp_path
    )


def test_load_and_run_drive_trellis_as_documented(
    fake_gpu_stack: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_TRELLIS_LOW_VRAM", "0")
    pipeline = Trellis2Pipeline()
    pipeline.load()
    pipe = FakeTrellisPipeline.instances[0]
    assert pipe.path == "microsoft/TRELLIS.2-4B" and pipe.on_cuda and pipe.low_vram is False
    assert len(pipe.calls) == 1 and pipe.calls[0]["pipeline_type"] == "512", "warm-up ran"
    pipe.rembg_model.calls.clear()
    warm_glb = fake_gpu_stack["to_glb"].pop()
    assert warm_glb["texture_size"] == 512 and fake_gpu_stack["exports"].pop() == {
        "extension_webp": True
    }
    FakeMeshRenderer.instances[0].calls.clear()

    ctx = RecordingContext()
    params = pipeline.validate_params(
        {"steps": 4, "texture_size": 1024, "decimation_target": 200_000}
    )
    files = pipeline.run(job_for(tmp_path, params), ctx)

    call = pipe.calls[1]
    assert call["seed"] == 42 and call["pipeline_type"] == "1024_cascade"
    assert call["sparse_structure_sampler_params"] == {"steps": 4}
    assert call["shape_slat_sampler_params"] == {"steps": 4}
    assert call["tex_slat_sampler_params"] == {"steps": 4}
    # The default cap on the 1536 cascade's tokens is the one for 24 GB cards.
    assert call["preprocess_image"] is True and call["max_num_tokens"] == 32768
    assert ctx.metadata["settings"] == {
        "pipeline_type": "1024_cascade",
        "resolution": 1024,
        "max_num_tokens": 32768,
        "texture_size": 1024,
        "decimation_target": 200_000,
        "seed": 42,
    }
    glb_call = fake_gpu_stack["to_glb"][0]
    assert glb_call["texture_size"] == 1024 and glb_call["decimation_target"] == 200_000
    assert glb_call["aabb"] == [[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]] and glb_call["remesh"] is True
    assert (
        glb_call["attr_layout"] == {"base_color": slice(0, 3)}
        and glb_call["voxel_size"] == 1 / 1024
    )
    assert fake_gpu_stack["exports"] == [{"extension_webp": True}]
    assert fake_gpu_stack["snapshots"][0]["envmap"] == (
        "envmap",
        ("full", (256, 512, 3), 1.0, "cuda"),
    )

    # The cut-out before sampling, then the preview, the position map and the model;
    # the archive is returned.
    emitted = dict(ctx.emitted)
    assert [name for name, _ in ctx.emitted] == [
        "pixel_images.png",
        "preview.png",
        "xyz_images.png",
        "model.glb",
    ]
    assert emitted["model.glb"][:4] == b"glTF"
    cut = Image.open(io.BytesIO(emitted["pixel_images.png"]))
    assert cut.format == "PNG" and cut.mode == "RGBA" and cut.width == cut.height
    # The picture had no alpha: rembg ran once, here, and TRELLIS.2 got the RGBA cut-out
    # (so its own preprocessing takes the alpha path: no second rembg).
    assert pipe.rembg_model.calls == [("RGB", (32, 32))]
    assert call["image_mode"] == "RGBA" and call["image_size"] == cut.size
    assert pipe.rembg_model.moves == [], "not low-VRAM: rembg stays where it is"
    assert emitted_index(ctx, "pixel_images.png") <= stage_index(ctx, "sampling_structure")

    preview = Image.open(io.BytesIO(emitted["preview.png"]))
    assert preview.mode == "RGBA"
    alpha = np.asarray(preview.getchannel("A"))
    assert alpha[0, 0] == 0 and alpha[3, 3] == 255 and alpha[3, 1] == 128
    assert np.asarray(preview)[3, 1, :3].tolist() == [128, 128, 128], "edge colour unblended"

    # The position map: the renderer's positions, in glTF's frame, at the cut-out's size.
    renderer = FakeMeshRenderer.instances[0]
    assert renderer.calls[0]["types"] == ["mask", "coord"]
    assert renderer.rendering_options.ssaa == 1 and renderer.rendering_options.antialias is False
    assert renderer.rendering_options.resolution == cut.width
    xyz = read_png16(emitted["xyz_images.png"])
    assert xyz.shape == (cut.height, cut.width, 4)
    points, inside = position_map.decode(xyz)
    coord = renderer.rendered["coord"].transpose(1, 2, 0)
    expected = np.stack([coord[..., 0], coord[..., 2], -coord[..., 1]], axis=-1)
    mask = renderer.rendered["mask"] > 0
    assert np.array_equal(inside, mask)
    assert np.abs(points[mask] - expected[mask]).max() <= 1 / 65535
    assert not xyz[~mask].any()
    # The camera frames the mesh's box from TRELLIS.2's −Y (glTF's +Z).
    camera = position_map.front_camera(np.array(MESH_LOWER), np.array(MESH_UPPER))
    assert np.allclose(renderer.calls[0]["extrinsics"], camera.extrinsics)
    assert np.allclose(renderer.calls[0]["intrinsics"], camera.intrinsics)
    assert [f.name for f in files] == ["output3d.zip"]
    assert "model.obj" in zipfile.ZipFile(io.BytesIO(files[0].read_bytes())).namelist()

    stages = [s for _, s in ctx.reports]
    for stage in (
        "preprocessing",
        "sampling_structure",
        "sampling_shape",
        "sampling_texture",
        "decoding",
        "rendering_preview",
        "rendering_position_map",
        "exporting_glb",
        "exporting_obj",
    ):
        assert stage in stages
    values = [v for v, _ in ctx.reports]
    assert values == sorted(values)


def test_run_without_preview_and_obj(
    fake_gpu_stack: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_TRELLIS_WARMUP", "0")
    pipeline = Trellis2Pipeline()
    pipeline.load()
    ctx = RecordingContext()
    files = pipeline.run(
        job_for(
            tmp_path,
            pipeline.validate_params(
                {"preview": False, "xyz": False, "obj": False, "webp": False, "resolution": 512}
            ),
        ),
        ctx,
    )
    assert files == [] and [n for n, _ in ctx.emitted] == ["pixel_images.png", "model.glb"]
    assert FakeMeshRenderer.instances == []
    assert fake_gpu_stack["exports"] == [{"extension_webp": False}]
    assert FakeTrellisPipeline.instances[0].calls[0]["pipeline_type"] == "512"


def test_a_picture_with_alpha_is_its_own_cut_out(
    fake_gpu_stack: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_TRELLIS_WARMUP", "0")
    pipeline = Trellis2Pipeline()
    pipeline.load()
    pipe = FakeTrellisPipeline.instances[0]
    picture = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    ImageDraw.Draw(picture).ellipse((8, 4, 47, 43), fill=(30, 60, 90, 255))
    job = job_for(tmp_path, pipeline.validate_params({"resolution": 512}))
    picture.save(job.image_path, format="PNG")
    ctx = RecordingContext()
    pipeline.run(job, ctx)

    assert pipe.rembg_model.calls == [], "the picture's own alpha is used"
    cut = Image.open(io.BytesIO(dict(ctx.emitted)["pixel_images.png"]))
    assert cut.mode == "RGBA" and cut.width == cut.height
    assert np.asarray(cut.getchannel("A")).min() == 0
    assert pipe.calls[0]["image_mode"] == "RGBA" and pipe.calls[0]["preprocess_image"] is True


def test_low_vram_moves_rembg_to_the_gpu_only_meanwhile(
    fake_gpu_stack: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_TRELLIS_WARMUP", "0")
    pipeline = Trellis2Pipeline()
    pipeline.load()
    pipe = FakeTrellisPipeline.instances[0]
    pipe.device = "cuda:0"
    job = job_for(tmp_path, pipeline.validate_params({"resolution": 512}))
    pipeline.run(job, RecordingContext())
    assert pipe.low_vram and pipe.rembg_model.moves == ["cuda:0", "cpu"]


def test_without_preprocessing_the_picture_goes_in_as_given(
    fake_gpu_stack: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_TRELLIS_WARMUP", "0")
    pipeline = Trellis2Pipeline()
    pipeline.load()
    pipe = FakeTrellisPipeline.instances[0]
    ctx = RecordingContext()
    params = pipeline.validate_params({"preprocess_image": False, "resolution": 512})
    pipeline.run(job_for(tmp_path, params), ctx)
    assert pipe.rembg_model.calls == []
    assert pipe.calls[0]["image_mode"] == "RGB" and pipe.calls[0]["preprocess_image"] is False
    assert [n for n, _ in ctx.emitted] == ["preview.png", "xyz_images.png", "model.glb"]
    assert FakeMeshRenderer.instances[0].rendering_options.resolution == 512


def test_a_renderer_without_coord_costs_only_the_position_map(
    fake_gpu_stack: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_TRELLIS_WARMUP", "0")

    def render(self: Any, mesh: Any, extrinsics: Any, intrinsics: Any, **kw: Any) -> Any:
        return {"mask": FakeTensor(np.ones((4, 4)))}

    monkeypatch.setattr(FakeMeshRenderer, "render", render)
    pipeline = Trellis2Pipeline()
    pipeline.load()
    ctx = RecordingContext()
    pipeline.run(job_for(tmp_path, pipeline.validate_params({"resolution": 512})), ctx)
    assert [n for n, _ in ctx.emitted] == ["pixel_images.png", "preview.png", "model.glb"]


def test_free_memory_empties_the_cuda_cache(fake_gpu_stack: dict[str, Any]) -> None:
    pipeline = Trellis2Pipeline()
    before = fake_gpu_stack["empty_cache"]
    pipeline.free_memory()
    assert fake_gpu_stack["empty_cache"] == before + 1


def test_no_cuda_is_a_load_error(fake_gpu_stack: dict[str, Any]) -> None:
    sys.modules["torch"].cuda.is_available = lambda: False  # type: ignore[attr-defined]
    with pytest.raises(PipelineUnavailable, match="no CUDA GPU"):
        Trellis2Pipeline().load()


# -- the retry of a 1536 job ---------------------------------------------------------------

#: A shape with more tokens than the 24 GB cap (32768) at every resolution the cascade tries.
OVER_THE_CAP = {1536: 90_000, 1408: 70_000, 1280: 55_000, 1152: 40_000, 1024: 33_000}


@pytest.mark.parametrize(
    ("oom_in", "tokens_at", "known", "retry"),
    [
        # The cascade had returned: the resolution it ended at is known.
        ("texture", OVER_THE_CAP, 1024, "512"),
        ("texture", {1536: 90_000, 1408: 40_000, 1280: 20_000}, 1280, "1024_cascade"),
        # Inside the high-resolution pass, with the cap's tokens or more: TRELLIS.2 goes
        # on with that many only at 1024.
        ("shape_hr", OVER_THE_CAP, 1024, "512"),
        # Under the cap: it stopped lowering, at 1536 here; one step down.
        ("shape_hr", {}, None, "1024_cascade"),
        # Under the cap at 1024 itself: not told apart from the case above (README.md,
        # "24 GB cards"), so the retry repeats the 1024 shape.
        ("shape_hr", {**OVER_THE_CAP, 1024: 20_000}, None, "1024_cascade"),
        ("shape_lr", OVER_THE_CAP, None, "1024_cascade"),
    ],
)
def test_the_retry_of_a_1536_job_steps_below_the_resolution_it_reached(
    fake_gpu_stack: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    oom_in: str,
    tokens_at: dict[int, int],
    known: int | None,
    retry: str,
) -> None:
    monkeypatch.setenv("KILN_TRELLIS_WARMUP", "0")
    monkeypatch.setattr(FakeTrellisPipeline, "tokens_at", tokens_at)
    monkeypatch.setattr(FakeTrellisPipeline, "oom_in", oom_in)
    pipeline = Trellis2Pipeline()
    pipeline.load()
    params = pipeline.validate_params({"resolution": 1536, "steps": 5})
    ctx = RecordingContext()
    with pytest.raises(OutOfMemoryError):
        pipeline.run(job_for(tmp_path, params), ctx)
    settings = ctx.metadata.get("settings", {})
    assert settings.get("resolution") == known
    if known is not None:
        assert settings["pipeline_type"] == "1536_cascade"
    after = pipeline.settings_after_oom(dict(params), ctx.metadata)
    assert after == {**params, "pipeline_type": retry}
    assert after["shape_sampler_params"] == {"steps": 5}


def test_the_worker_retries_a_1536_job_that_came_down_to_1024_at_512(
    fake_gpu_stack: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    make_worker: Any,
    receiver: Receiver,
) -> None:
    monkeypatch.setenv("KILN_TRELLIS_WARMUP", "0")
    monkeypatch.setattr(FakeTrellisPipeline, "tokens_at", OVER_THE_CAP)
    monkeypatch.setattr(FakeTrellisPipeline, "oom_in", "texture")
    worker = make_worker(Trellis2Pipeline())
    response = dispatch(worker.url, callback_url=receiver.url, params={"resolution": 1536})
    assert response.status_code == 202
    status = receiver.wait_status()
    assert status.json is not None and status.json["status"] == "completed"
    metadata = status.json["metadata"]
    assert metadata["out_of_memory_retry"] == {
        "changed": {"pipeline_type": {"from": "1536_cascade", "to": "512"}},
        "kept_from_first_attempt": ["pixel_images.png"],
    }
    assert metadata["settings"]["pipeline_type"] == "512"
    assert metadata["settings"]["resolution"] == 512
    pipe = FakeTrellisPipeline.instances[0]
    assert [call["pipeline_type"] for call in pipe.calls] == ["1536_cascade", "512"]
    assert pipe.cascades == [1024]


# -- never healthy while broken -----------------------------------------------------------


def test_a_missing_attention_kernel_fails_the_load_named(
    fake_gpu_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """flash_attn is imported by TRELLIS.2 only at its first attention call: checked here."""
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # `import flash_attn` fails
    pipeline = Trellis2Pipeline()
    with pytest.raises(PipelineUnavailable) as info:
        pipeline.load()
    assert pipeline.load_phase == "checking the Python modules"
    assert "flash_attn: ModuleNotFoundError" in str(info.value)
    assert "flash-attn 2.7.3" in str(info.value)
    assert FakeTrellisPipeline.instances == [], "nothing loaded"


def test_the_attention_backend_decides_which_kernel_is_checked(
    fake_gpu_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", types.ModuleType("xformers.ops"))
    monkeypatch.setenv("ATTN_BACKEND", "xformers")
    monkeypatch.setenv("KILN_TRELLIS_WARMUP", "0")
    Trellis2Pipeline().load()  # flash_attn is not needed with xformers everywhere


def test_transformers_5_and_a_pillow_without_webp_are_refused(
    fake_gpu_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import features

    sys.modules["transformers"].__version__ = "5.0.1"  # type: ignore[attr-defined]
    real_check = features.check
    monkeypatch.setattr(features, "check", lambda f: False if f == "webp" else real_check(f))
    with pytest.raises(PipelineUnavailable) as info:
        Trellis2Pipeline().load()
    message = str(info.value)
    assert "2 missing or broken requirement(s) of TRELLIS.2" in message
    assert "transformers 5.0.1: TRELLIS.2 needs >=4.56,<5" in message
    assert "no WebP support" in message and "pillow-simd" in message


def test_the_warm_up_runs_the_whole_job_and_reports_time_and_vram(
    fake_gpu_stack: dict[str, Any],
) -> None:
    pipeline = Trellis2Pipeline()
    pipeline.load()
    pipe = FakeTrellisPipeline.instances[0]
    # The background remover on its own, then one job: every stage, every file.
    assert pipe.rembg_model.calls == [("RGB", (256, 256))]
    assert pipe.calls[0]["pipeline_type"] == "512"
    assert pipe.calls[0]["shape_slat_sampler_params"] == {"steps": 4}
    assert fake_gpu_stack["peak_reset"] and fake_gpu_stack["exports"] == [{"extension_webp": True}]
    report = pipeline.warmup_report
    assert report is not None
    assert report["peak_vram_mib"] == 6 * 1024 and report["total_vram_mib"] == 22888
    assert report["device"] == "NVIDIA GeForce RTX 4090 (fake)"
    assert report["settings"]["pipeline_type"] == "512"
    assert report["settings"]["texture_size"] == 512
    assert set(report["files"]) == {
        "pixel_images.png",
        "preview.png",
        "xyz_images.png",
        "model.glb",
        "output3d.zip",
    }
    assert report["stages"][:2] == ["preprocessing", "sampling_structure"]
    assert "exporting_glb" in report["stages"]


def test_a_warm_up_failure_names_its_stage(
    fake_gpu_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_to_glb(**kwargs: Any) -> Any:
        raise RuntimeError("CuMesh: no kernel image is available for execution on the device")

    monkeypatch.setattr(sys.modules["o_voxel"].postprocess, "to_glb", broken_to_glb)
    pipeline = Trellis2Pipeline()
    with pytest.raises(RuntimeError, match="no kernel image"):
        pipeline.load()
    assert pipeline.load_phase == "warming up (exporting_glb)"
    assert pipeline.warmup_report is None


def test_a_preview_render_that_fails_fails_the_warm_up(
    fake_gpu_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A job carries on without its preview; the warm-up must not.
    def broken_snapshot(mesh: Any, **kwargs: Any) -> Any:
        raise RuntimeError("nvdiffrast: cudaErrorNoKernelImageForDevice")

    render_utils = sys.modules["trellis2.utils.render_utils"]
    monkeypatch.setattr(render_utils, "render_snapshot", broken_snapshot)
    pipeline = Trellis2Pipeline()
    with pytest.raises(RuntimeError, match="without preview.png"):
        pipeline.load()
    assert pipeline.warmup_report is None


def test_a_position_map_render_that_fails_fails_the_warm_up_but_a_missing_coord_does_not(
    fake_gpu_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any, mesh: Any, extrinsics: Any, intrinsics: Any, **kw: Any) -> Any:
        raise RuntimeError("rasterize failed")

    monkeypatch.setattr(FakeMeshRenderer, "render", broken)
    with pytest.raises(RuntimeError, match="no xyz_images.png"):
        Trellis2Pipeline().load()

    def without_coord(self: Any, mesh: Any, extrinsics: Any, intrinsics: Any, **kw: Any) -> Any:
        return {"mask": FakeTensor(np.ones((4, 4)))}

    monkeypatch.setattr(FakeMeshRenderer, "render", without_coord)
    pipeline = Trellis2Pipeline()
    pipeline.load()
    report = pipeline.warmup_report
    assert report is not None and "xyz_images.png" not in report["files"]


def test_health_is_503_with_the_reason_when_a_module_is_missing(
    fake_gpu_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch, make_worker: Any
) -> None:
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    worker = make_worker(Trellis2Pipeline(), wait_ready=False)
    deadline = time.monotonic() + 10
    while worker.health().json()["status"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.01)
    health = worker.health()
    assert health.status_code == 503
    error = health.json()["error"]
    assert error.startswith(
        "the trellis2 pipeline failed while checking the Python modules: 1 missing or "
        "broken requirement(s) of TRELLIS.2:"
    )
    assert "flash_attn: ModuleNotFoundError" in error


def test_health_shows_the_warm_up_once_ready(
    fake_gpu_stack: dict[str, Any], make_worker: Any
) -> None:
    worker = make_worker(Trellis2Pipeline())
    body = worker.health().json()
    assert body["status"] == "healthy" and body["worker"] == "trellis2"
    assert body["warmup"]["peak_vram_mib"] == 6144 and body["warmup"]["seconds"] >= 0


# -- the background remover ----------------------------------------------------------------


def test_a_permissive_background_remover_replaces_pipeline_jsons(
    fake_gpu_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """KILN_TRELLIS_REMBG_MODEL is given to TRELLIS.2's own BiRefNet class while it loads
    pipeline.json, so the gated remover named there is never fetched."""
    built: list[dict[str, Any]] = []
    rembg = sys.modules["trellis2.pipelines.rembg"]

    def from_pretrained(cls: Any, path: str) -> FakeTrellisPipeline:
        pipe = FakeTrellisPipeline()
        pipe.rembg_model = rembg.BiRefNet(model_name="briaai/RMBG-2.0")  # as pipeline.json
        built.append({"model_name": pipe.rembg_model.model_name})
        FakeTrellisPipeline.instances.append(pipe)
        return pipe

    monkeypatch.setattr(FakeTrellisPipeline, "from_pretrained", classmethod(from_pretrained))
    monkeypatch.setenv("KILN_TRELLIS_REMBG_MODEL", "ZhengPeng7/BiRefNet")
    monkeypatch.setenv("KILN_TRELLIS_WARMUP", "0")
    original = rembg.BiRefNet
    Trellis2Pipeline().load()
    assert built == [{"model_name": "ZhengPeng7/BiRefNet"}]
    assert rembg.BiRefNet is original, "TRELLIS.2's class is left as it was"


def test_no_background_remover_needs_pictures_with_alpha(
    fake_gpu_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def from_pretrained(cls: Any, path: str) -> FakeTrellisPipeline:
        pipe = FakeTrellisPipeline()
        pipe.rembg_model = sys.modules["trellis2.pipelines.rembg"].BiRefNet()
        FakeTrellisPipeline.instances.append(pipe)
        return pipe

    monkeypatch.setattr(FakeTrellisPipeline, "from_pretrained", classmethod(from_pretrained))
    monkeypatch.setenv("KILN_TRELLIS_REMBG_MODEL", "none")
    pipeline = Trellis2Pipeline()
    pipeline.load()  # the warm-up picture has alpha: nothing to remove
    assert FakeTrellisPipeline.instances[0].rembg_model is None
    with pytest.raises(JobFailed, match="removes no backgrounds"):
        pipeline.run(job_for(tmp_path, pipeline.validate_params({})), RecordingContext())
