"""Pipelines and how the worker finds the one it is configured with.

`KILN_WORKER_PIPELINE` is `trellis2` (the real TRELLIS.2 pipeline), `module:Class`
(imported like uvicorn imports apps, with the working directory on `sys.path`), or
`path/to/file.py:Class`. Nothing heavy is imported here: the TRELLIS.2 module keeps torch
and friends inside its methods, so the package imports on machines without them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .base import (
    JobCancelled,
    JobContext,
    JobFailed,
    JobInput,
    Pipeline,
    PipelineUnavailable,
    is_out_of_memory,
)

if TYPE_CHECKING:
    from ..config import Settings

BUILTIN = {
    "trellis2": "kiln_worker.pipelines.trellis2:Trellis2Pipeline",
}

__all__ = [
    "BUILTIN",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobInput",
    "Pipeline",
    "PipelineUnavailable",
    "is_out_of_memory",
    "load_pipeline",
]


def load_pipeline(spec: str, settings: Settings | None = None) -> Pipeline:
    """Import and construct the pipeline named by `spec`; `PipelineUnavailable` when it can't."""
    target = BUILTIN.get(spec, spec)
    module_name, sep, class_name = target.rpartition(":")
    if not sep or not module_name or not class_name:
        raise PipelineUnavailable(
            f"KILN_WORKER_PIPELINE=`{spec}` is neither a built-in pipeline "
            f"({', '.join(sorted(BUILTIN))}) nor `module:Class` / `file.py:Class`"
        )
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            module = _import_file(Path(module_name))
        else:
            cwd = os.getcwd()
            if cwd not in sys.path:
                sys.path.insert(0, cwd)
            module = importlib.import_module(module_name)
    except PipelineUnavailable:
        raise
    except Exception as err:  # an ImportError, or anything the module raised on import
        raise PipelineUnavailable(
            f"cannot import the pipeline module `{module_name}`: {type(err).__name__}: {err}"
        ) from err
    cls = getattr(module, class_name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, Pipeline):
        raise PipelineUnavailable(
            f"`{class_name}` in `{module_name}` is not a kiln_worker.pipelines.Pipeline subclass"
        )
    return cls(settings)


def _import_file(path: Path) -> object:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise PipelineUnavailable(f"the pipeline file `{path}` does not exist")
    name = f"kiln_worker_pipeline_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PipelineUnavailable(f"cannot import `{path}` as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # The file's directory goes on sys.path so that it can import its neighbours.
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    return module
