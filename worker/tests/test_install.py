"""worker/install.sh: ShellCheck-clean, and run end to end with its heavy steps stubbed.

The stubs are a fake `python3.10` (which makes the venv's `python`: pip installs and
import checks are logged and answered), a fake `git` and `nvidia-smi` on PATH, and a fake
CUDA toolkit whose `nvcc` says 12.4. What is checked is the script's own logic: the order
and the flags of the steps, the transformers pin, the WebP repair, what it persists, and
that it stops at the first failure naming the step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "install.sh"

FAKE_PYTHON = r"""#!/usr/bin/env bash
# A stand-in for python: logs every call; answers pip, venv and -c checks.
echo "python $*" >>"$FAKE_LOG"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    mkdir -p "$3/bin"
    cp "$0" "$3/bin/python"
    echo "# activate" >"$3/bin/activate"
    exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
    if [ -n "${FAKE_PIP_FAIL:-}" ] && [[ "$*" == *"$FAKE_PIP_FAIL"* ]]; then
        echo "ERROR: Failed building wheel (stub)" >&2
        exit 1
    fi
    if [[ "$*" == *"install --no-cache-dir pillow"* ]]; then
        touch "$FAKE_STATE/webp"
    fi
    exit 0
fi
if [ "$1" = "-c" ]; then
    case "$2" in
    *'features.check("webp")'*)
        [ "${FAKE_WEBP:-yes}" = yes ] || [ -e "$FAKE_STATE/webp" ]
        exit $?
        ;;
    "import "*)
        if [ "${2#import }" = "${FAKE_IMPORT_FAIL:-}" ]; then
            echo "ModuleNotFoundError: No module named '${2#import }' (stub)" >&2
            exit 1
        fi
        ;;
    esac
    exit 0
fi
exit 0
"""

FAKE_GIT = r"""#!/usr/bin/env bash
echo "git $*" >>"$FAKE_LOG"
if [ "$1" = "clone" ]; then
    dest="${*: -1}"
    mkdir -p "$dest/.git" "$dest/o-voxel"
fi
exit 0
"""


def write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write(bin_dir / "python3.10", FAKE_PYTHON)
    write(bin_dir / "git", FAKE_GIT)
    write(bin_dir / "nvidia-smi", "#!/usr/bin/env bash\nexit 0\n")
    cuda = tmp_path / "cuda-12.4"
    (cuda / "bin").mkdir(parents=True)
    write(
        cuda / "bin" / "nvcc",
        '#!/usr/bin/env bash\necho "Cuda compilation tools, release 12.4, V12.4.131"\n',
    )
    (tmp_path / "state").mkdir()
    return {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "KILN_PREFIX": str(tmp_path / "kiln"),
        "CUDA_HOME": str(cuda),
        "PYTHON": "python3.10",
        "FAKE_LOG": str(tmp_path / "calls.log"),
        "FAKE_STATE": str(tmp_path / "state"),
    }


def run(env: dict[str, str], **extra: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=60,
    )
    log = Path(env["FAKE_LOG"])
    calls = log.read_text().splitlines() if log.exists() else []
    return done, calls


def index(calls: list[str], fragment: str) -> int:
    return next(i for i, call in enumerate(calls) if fragment in call)


def test_install_sh_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: run scripts/deps.sh --worker (make worker-test does)"
    done = subprocess.run(
        [shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_full_run_with_the_heavy_steps_stubbed(stubs: dict[str, str]) -> None:
    done, calls = run(stubs)
    assert done.returncode == 0, done.stderr
    pip = [c for c in calls if " -m pip " in c]
    torch = "torch==2.6.0 torchvision==0.21.0 --index-url https://download.pytorch.org/whl/cu124"
    assert any(torch in c for c in pip)
    assert any("transformers>=4.56,<5" in c for c in pip), "transformers 5 breaks TRELLIS.2"
    assert not any("pillow-simd" in c and " install " in c for c in pip), "no pillow-simd"
    # flash-attn: built without build isolation, after psutil, ninja and packaging.
    flash = index(calls, "flash-attn==2.7.3")
    assert "--no-build-isolation" in calls[flash]
    assert index(calls, "install psutil ninja packaging") < flash
    for extension in ("nvdiffrast", "nvdiffrec", "CuMesh", "FlexGEMM", "o-voxel"):
        line = calls[index(calls, f"/{extension} --no-build-isolation")]
        assert line.startswith("python -m pip install"), line
    assert any("-e " in c and "worker[gpu]" in c for c in pip)
    # TRELLIS.2 at the commit the worker was checked against.
    assert any("checkout --quiet 5565d240c4a494caaf9ece7a554542b76ffa36d3" in c for c in calls)
    # Every extension imported, then the worker's own check.
    imported = [
        c.removeprefix("python -c import ")
        for c in calls
        if c.startswith("python -c import ") and ";" not in c
    ]
    assert imported == [
        "torch",
        "flash_attn",
        "nvdiffrast.torch",
        "nvdiffrec_render",
        "cumesh",
        "flex_gemm",
        "o_voxel",
        "utils3d",
        "transformers",
        "trellis2.pipelines",
        "trellis2.renderers",
    ]
    # trellis2's lazily loaded classes, reached the way the worker reaches them.
    assert any("from trellis2.pipelines import Trellis2ImageTo3DPipeline" in c for c in calls)
    assert "check_modules()" in calls[-1]
    # CUDA_HOME lasts: for the service and for every shell that activates the venv.
    prefix = Path(stubs["KILN_PREFIX"])
    env_file = (prefix / "worker.env").read_text()
    assert f"CUDA_HOME={stubs['CUDA_HOME']}\n" in env_file
    assert f"PYTHONPATH={prefix / 'TRELLIS.2'}\n" in env_file
    activate = (prefix / "venv" / "bin" / "activate").read_text()
    assert f"export CUDA_HOME={stubs['CUDA_HOME']}\n" in activate
    assert "install.sh: TRELLIS.2 and the kiln worker are installed" in done.stdout

    # A second run reuses what is there and does not repeat the activate lines.
    again, _ = run(stubs)
    assert again.returncode == 0, again.stderr
    assert (prefix / "venv" / "bin" / "activate").read_text() == activate

    # A run with another CUDA toolkit replaces the values; none of the old ones stay.
    other = Path(stubs["CUDA_HOME"]).with_name("cuda-12.4-other")
    shutil.copytree(stubs["CUDA_HOME"], other)
    moved, _ = run(stubs, CUDA_HOME=str(other))
    assert moved.returncode == 0, moved.stderr
    after = (prefix / "venv" / "bin" / "activate").read_text()
    assert f"export CUDA_HOME={other}\n" in after
    assert f"export CUDA_HOME={stubs['CUDA_HOME']}\n" not in after
    assert after.count("# kiln worker environment (install.sh)") == 1


def test_a_pillow_without_webp_is_replaced(stubs: dict[str, str]) -> None:
    done, calls = run(stubs, FAKE_WEBP="no")
    assert done.returncode == 0, done.stderr
    first_check = index(calls, 'features.check("webp")')
    uninstall = index(calls, "uninstall -y pillow-simd pillow")
    reinstall = index(calls, "install --no-cache-dir pillow>=10,<13")
    assert first_check < uninstall < reinstall
    checks = [i for i, c in enumerate(calls) if 'features.check("webp")' in c]
    assert len(checks) == 2 and checks[1] > reinstall, "checked again after the reinstall"


@pytest.mark.parametrize(
    ("extra", "step", "not_reached"),
    [
        ({"FAKE_PIP_FAIL": "extensions/nvdiffrast"}, "building nvdiffrast 0.4.0", "CuMesh"),
        ({"FAKE_PIP_FAIL": "flash-attn"}, "building flash-attn 2.7.3", "nvdiffrast"),
        ({"FAKE_IMPORT_FAIL": "flash_attn"}, "importing every extension", "nvdiffrast.torch"),
        (
            {"FAKE_WEBP": "never", "FAKE_PIP_FAIL": "--no-cache-dir pillow"},
            "checking that Pillow writes WebP",
            "flash-attn",
        ),
    ],
)
def test_it_stops_at_the_first_failure_and_names_the_step(
    stubs: dict[str, str], extra: dict[str, str], step: str, not_reached: str
) -> None:
    done, calls = run(stubs, **extra)
    assert done.returncode != 0
    assert f'install.sh: FAILED at step "{step}' in done.stderr, done.stderr
    assert not any(not_reached in c for c in calls), "nothing after the failed step ran"


def test_a_cuda_toolkit_other_than_12_4_is_refused(stubs: dict[str, str]) -> None:
    nvcc = Path(stubs["CUDA_HOME"]) / "bin" / "nvcc"
    write(nvcc, '#!/usr/bin/env bash\necho "Cuda compilation tools, release 12.1, V12.1.105"\n')
    done, calls = run(stubs)
    assert done.returncode != 0
    assert "is not CUDA 12.4" in done.stderr
    assert 'FAILED at step "checking the CUDA 12.4 toolkit' in done.stderr
    assert calls == [], "nothing was installed"


def test_it_runs_from_any_directory(stubs: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=stubs, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    worker = SCRIPT.parent
    assert f"-e {worker}[gpu]" in Path(stubs["FAKE_LOG"]).read_text()
    assert os.access(SCRIPT, os.X_OK), "install.sh is executable"
