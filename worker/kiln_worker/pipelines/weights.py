"""Which weight files TRELLIS.2 will read, and whether they are on this machine.

TRELLIS.2's `from_pretrained(model)` reads the model's `pipeline.json` and then loads
from four Hugging Face repositories (microsoft/TRELLIS.2-4B's `pipeline.json`, early
2026):

- the model itself: `ckpts/<name>.json` and `.safetensors` for each flow model and
  decoder it names (`microsoft/TRELLIS.2-4B`, or a local directory);
- the sparse-structure decoder of TRELLIS v1, named by repository
  (`microsoft/TRELLIS-image-large/ckpts/ss_dec_conv3d_16l8_fp16`);
- the image encoder (`image_cond_model`, `facebook/dinov3-vitl16-pretrain-lvd1689m`),
  loaded with transformers;
- the background remover (`rembg_model`, `briaai/RMBG-2.0`), loaded with transformers
  and its repository's own code (`trust_remote_code`).

On a box without network (`HF_HUB_OFFLINE=1`) each of them must already be in the
Hugging Face cache (or the model directory); a missing one would otherwise surface as
an exception from deep inside the load. `missing_files` lists every file that is not
there, by repository and name, so the worker can say it at start.

The cache layout read here is huggingface_hub's documented one:
`{cache}/models--{org}--{name}/refs/main` holds a commit, and
`{cache}/models--{org}--{name}/snapshots/{commit}/{file}` the files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The models TRELLIS.2's image-to-3D pipeline loads from `pipeline.json`'s `models`
#: (`Trellis2ImageTo3DPipeline.model_names_to_load`); it skips the others.
MODEL_NAMES_TO_LOAD = (
    "sparse_structure_flow_model",
    "sparse_structure_decoder",
    "shape_slat_flow_model_512",
    "shape_slat_flow_model_1024",
    "shape_slat_decoder",
    "tex_slat_flow_model_512",
    "tex_slat_flow_model_1024",
    "tex_slat_decoder",
)
#: A transformers model's weights, in the forms `from_pretrained` accepts.
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def offline() -> bool:
    """Whether huggingface_hub will refuse to download (`HF_HUB_OFFLINE`)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cache() -> Path:
    """The Hugging Face hub cache, found as huggingface_hub finds it."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.environ[name]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


@dataclass(frozen=True)
class Source:
    """A repository id or a local directory, and where its files are on this machine."""

    name: str
    local: Path | None

    def find(self, file: str) -> Path | None:
        if self.local is None:
            return None
        path = self.local / file
        return path if path.is_file() else None


def source(name: str, cache: Path | None = None) -> Source:
    """`name` as a local directory if it is one, else as a repository in the cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        return Source(name, path)
    parts = name.split("/")
    if len(parts) != 2 or not all(parts):
        return Source(name, None)
    repo = (cache or hub_cache()) / f"models--{parts[0]}--{parts[1]}"
    try:
        commit = (repo / "refs" / "main").read_text().strip()
    except OSError:
        return Source(name, None)
    snapshot = repo / "snapshots" / commit
    return Source(name, snapshot if snapshot.is_dir() else None)


@dataclass
class Missing:
    """One file TRELLIS.2 will read that is not on this machine."""

    where: str
    file: str
    why: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.file}" + (f" ({self.why})" if self.why else "")


def missing_files(model: str, rembg_model: str | None = None) -> list[Missing]:
    """Every file `from_pretrained(model)` needs that is neither in `model` (a local
    directory) nor in the Hugging Face cache. `rembg_model` replaces the background
    remover `pipeline.json` names (`"none"`: no background remover)."""
    cache = hub_cache()
    main = source(model, cache)
    config_path = main.find("pipeline.json")
    if config_path is None:
        return [Missing(model, "pipeline.json", "so nothing else can be checked")]
    try:
        args = json.loads(config_path.read_text())["args"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [Missing(model, "pipeline.json", f"unreadable: {err}")]

    missing: list[Missing] = []
    for key in MODEL_NAMES_TO_LOAD:
        reference = (args.get("models") or {}).get(key)
        if not isinstance(reference, str):
            continue
        missing += _checkpoint(main, reference, cache)
    encoder = ((args.get("image_cond_model") or {}).get("args") or {}).get("model_name")
    if isinstance(encoder, str):
        missing += _transformers_model(encoder, cache)
    remover = rembg_model or ((args.get("rembg_model") or {}).get("args") or {}).get("model_name")
    if isinstance(remover, str) and remover.lower() != "none":
        missing += _transformers_model(remover, cache)
    return missing


def _checkpoint(main: Source, reference: str, cache: Path) -> list[Missing]:
    """A TRELLIS.2 checkpoint (`<reference>.json` + `.safetensors`): inside the model
    first, as TRELLIS.2 tries it, else `org/repo/path` in the cache."""
    files = [f"{reference}.json", f"{reference}.safetensors"]
    if all(main.find(f) for f in files):
        return []
    parts = reference.split("/")
    if len(parts) > 2 and not reference.startswith(("ckpts/", "./")):
        other = source("/".join(parts[:2]), cache)
        inside = ["/".join(parts[2:]) + suffix for suffix in (".json", ".safetensors")]
        return [Missing(other.name, f) for f in inside if other.find(f) is None]
    return [Missing(main.name, f) for f in files if main.find(f) is None]


def _transformers_model(name: str, cache: Path) -> list[Missing]:
    """A transformers model: `config.json`, its weights, and the code files its
    `auto_map` names (a `trust_remote_code` model such as BiRefNet)."""
    model = source(name, cache)
    config_path = model.find("config.json")
    if config_path is None:
        return [Missing(name, "config.json", "and so its weights")]
    missing: list[Missing] = []
    try:
        config: dict[str, Any] = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        return [Missing(name, "config.json", f"unreadable: {err}")]
    index = model.find("model.safetensors.index.json")
    if index is not None:
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as err:
            missing.append(Missing(name, "model.safetensors.index.json", f"unreadable: {err}"))
            shards = set()
        missing += [Missing(name, shard) for shard in sorted(shards) if model.find(shard) is None]
    elif not any(model.find(f) for f in TRANSFORMERS_WEIGHTS):
        missing.append(Missing(name, "model.safetensors"))
    auto_map = config.get("auto_map") or {}
    if isinstance(auto_map, dict):
        modules = {
            str(target).split("--")[-1].rsplit(".", 1)[0] + ".py"
            for target in auto_map.values()
            if isinstance(target, str) and "." in target
        }
        missing += [
            Missing(name, m, "its model code") for m in sorted(modules) if not model.find(m)
        ]
    return missing
