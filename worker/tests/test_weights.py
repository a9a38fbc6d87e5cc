"""Offline weights: every file TRELLIS.2 will read, found in a fake Hugging Face cache, and
a missing one named at start (kiln_worker/pipelines/weights.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kiln_worker.pipelines import PipelineUnavailable, weights
from kiln_worker.pipelines.trellis2 import Trellis2Pipeline
from tests.test_trellis2 import FakeTrellisPipeline, fake_gpu_stack  # noqa: F401  (a fixture)

#: microsoft/TRELLIS.2-4B's pipeline.json, reduced to what the check reads.
PIPELINE_JSON = {
    "name": "Trellis2ImageTo3DPipeline",
    "args": {
        "models": {
            "sparse_structure_flow_model": "ckpts/ss_flow_img_dit_1_3B_64_bf16",
            "sparse_structure_decoder": (
                "microsoft/TRELLIS-image-large/ckpts/ss_dec_conv3d_16l8_fp16"
            ),
            "shape_slat_flow_model_512": "ckpts/slat_flow_img2shape_dit_1_3B_512_bf16",
            "shape_slat_flow_model_1024": "ckpts/slat_flow_img2shape_dit_1_3B_1024_bf16",
            "shape_slat_decoder": "ckpts/shape_dec_next_dc_f16c32_fp16",
            "tex_slat_flow_model_512": "ckpts/slat_flow_imgshape2tex_dit_1_3B_512_bf16",
            "tex_slat_flow_model_1024": "ckpts/slat_flow_imgshape2tex_dit_1_3B_1024_bf16",
            "tex_slat_decoder": "ckpts/tex_dec_next_dc_f16c32_fp16",
            "shape_slat_encoder": "ckpts/not_loaded_by_the_image_pipeline",
        },
        "image_cond_model": {
            "name": "DinoV3FeatureExtractor",
            "args": {"model_name": "facebook/dinov3-vitl16-pretrain-lvd1689m"},
        },
        "rembg_model": {"name": "BiRefNet", "args": {"model_name": "briaai/RMBG-2.0"}},
    },
}
BIREFNET_CONFIG = {
    "auto_map": {
        "AutoConfig": "BiRefNet_config.BiRefNetConfig",
        "AutoModelForImageSegmentation": "birefnet.BiRefNet",
    }
}


def put(cache: Path, repo: str, files: dict[str, bytes | str]) -> Path:
    """Files in the layout huggingface_hub writes: refs/main -> snapshots/<commit>/."""
    org, name = repo.split("/")
    root = cache / f"models--{org}--{name}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text("0123abcd")
    snapshot = root / "snapshots" / "0123abcd"
    for file, content in files.items():
        path = snapshot / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return snapshot


def full_cache(cache: Path, *, remover: str = "briaai/RMBG-2.0") -> None:
    trellis = {"pipeline.json": json.dumps(PIPELINE_JSON)}
    for key, reference in PIPELINE_JSON["args"]["models"].items():  # type: ignore[index]
        if key in weights.MODEL_NAMES_TO_LOAD and reference.startswith("ckpts/"):
            trellis[f"{reference}.json"] = "{}"
            trellis[f"{reference}.safetensors"] = "w"
    put(cache, "microsoft/TRELLIS.2-4B", trellis)
    put(
        cache,
        "microsoft/TRELLIS-image-large",
        {
            "ckpts/ss_dec_conv3d_16l8_fp16.json": "{}",
            "ckpts/ss_dec_conv3d_16l8_fp16.safetensors": "w",
        },
    )
    put(
        cache,
        "facebook/dinov3-vitl16-pretrain-lvd1689m",
        {"config.json": "{}", "model.safetensors": "w"},
    )
    put(
        cache,
        remover,
        {
            "config.json": json.dumps(BIREFNET_CONFIG),
            "model.safetensors": "w",
            "birefnet.py": "",
            "BiRefNet_config.py": "",
        },
    )


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "hf" / "hub"
    path.mkdir(parents=True)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return path


def test_the_cache_is_where_huggingface_hub_puts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert weights.hub_cache() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert weights.hub_cache() == tmp_path / "hub"


def test_a_complete_cache_has_nothing_missing(cache: Path) -> None:
    full_cache(cache)
    assert weights.missing_files("microsoft/TRELLIS.2-4B") == []


def test_each_missing_file_is_named_with_its_repository(cache: Path) -> None:
    full_cache(cache)
    trellis = cache / "models--microsoft--TRELLIS.2-4B" / "snapshots" / "0123abcd"
    (trellis / "ckpts" / "tex_dec_next_dc_f16c32_fp16.safetensors").unlink()
    decoder = cache / "models--microsoft--TRELLIS-image-large" / "snapshots" / "0123abcd"
    (decoder / "ckpts" / "ss_dec_conv3d_16l8_fp16.json").unlink()
    remover = cache / "models--briaai--RMBG-2.0" / "snapshots" / "0123abcd"
    (remover / "birefnet.py").unlink()
    (remover / "model.safetensors").unlink()
    missing = [str(m) for m in weights.missing_files("microsoft/TRELLIS.2-4B")]
    assert missing == [
        "microsoft/TRELLIS-image-large: ckpts/ss_dec_conv3d_16l8_fp16.json",
        "microsoft/TRELLIS.2-4B: ckpts/tex_dec_next_dc_f16c32_fp16.safetensors",
        "briaai/RMBG-2.0: model.safetensors",
        "briaai/RMBG-2.0: birefnet.py (its model code)",
    ]


def test_a_model_never_fetched_is_named_by_its_pipeline_json(cache: Path) -> None:
    missing = [str(m) for m in weights.missing_files("microsoft/TRELLIS.2-4B")]
    assert missing == ["microsoft/TRELLIS.2-4B: pipeline.json (so nothing else can be checked)"]


def test_a_local_model_directory_and_another_background_remover(
    cache: Path, tmp_path: Path
) -> None:
    """KILN_WORKER_MODEL as a directory (huggingface-cli download --local-dir), the other
    repositories from the cache, and the remover of KILN_TRELLIS_REMBG_MODEL instead of
    pipeline.json's (which then need not be there at all)."""
    full_cache(cache, remover="ZhengPeng7/BiRefNet")
    snapshot = cache / "models--microsoft--TRELLIS.2-4B" / "snapshots" / "0123abcd"
    local = tmp_path / "TRELLIS.2-4B"
    snapshot.rename(local)
    assert weights.missing_files(str(local), "ZhengPeng7/BiRefNet") == []
    assert [str(m) for m in weights.missing_files(str(local))] == [
        "briaai/RMBG-2.0: config.json (and so its weights)"
    ]
    assert weights.missing_files(str(local), "none") == []


def test_sharded_weights_are_checked_shard_by_shard(cache: Path) -> None:
    shards = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    index = {"weight_map": {"a": shards[0], "b": shards[1]}}
    put(
        cache,
        "facebook/dinov3-vitl16-pretrain-lvd1689m",
        {
            "config.json": "{}",
            "model.safetensors.index.json": json.dumps(index),
            "model-00001-of-00002.safetensors": "w",
        },
    )
    dinov3 = "facebook/dinov3-vitl16-pretrain-lvd1689m"
    missing = [str(m) for m in weights._transformers_model(dinov3, cache)]
    assert missing == ["facebook/dinov3-vitl16-pretrain-lvd1689m: model-00002-of-00002.safetensors"]


def test_offline_with_a_missing_file_fails_the_load_naming_it(
    fake_gpu_stack: dict[str, Any],  # noqa: F811
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    full_cache(cache)
    dinov3 = cache / "models--facebook--dinov3-vitl16-pretrain-lvd1689m" / "snapshots" / "0123abcd"
    (dinov3 / "model.safetensors").unlink()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipeline = Trellis2Pipeline()
    with pytest.raises(PipelineUnavailable) as info:
        pipeline.load()
    assert pipeline.load_phase == "checking the weights"
    message = str(info.value)
    assert "offline (HF_HUB_OFFLINE=1) and 1 file(s)" in message
    assert "facebook/dinov3-vitl16-pretrain-lvd1689m: model.safetensors" in message
    assert str(cache) in message
    assert FakeTrellisPipeline.instances == [], "nothing was loaded"


def test_offline_with_everything_cached_loads(
    fake_gpu_stack: dict[str, Any],  # noqa: F811
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    full_cache(cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KILN_TRELLIS_WARMUP", "0")
    Trellis2Pipeline().load()
    assert FakeTrellisPipeline.instances[0].path == "microsoft/TRELLIS.2-4B"


def test_online_missing_files_are_only_logged(
    fake_gpu_stack: dict[str, Any],  # noqa: F811
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("KILN_TRELLIS_WARMUP", "0")
    with caplog.at_level("INFO"):
        Trellis2Pipeline().load()
    assert "downloaded now from Hugging Face" in caplog.text

