"""`python -m kiln_worker` as kiln's tests start it: a subprocess on a port it picks."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SECRET_TEXT, Receiver, dispatch

WORKER_DIR = Path(__file__).resolve().parent.parent


def start(tmp_path: Path, *args: str, cwd: Path = WORKER_DIR, **env: str) -> subprocess.Popen[str]:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("KILN_WORKER_", "KILN_STANDIN_"))
    }
    environment.update(
        KILN_WORKER_SECRET=SECRET_TEXT,
        KILN_WORKER_PIPELINE="tests.standin:StandInPipeline",
        KILN_WORKER_TMP_DIR=str(tmp_path / "jobs"),
        KILN_WORKER_CALLBACK_BACKOFF="0.01",
        PYTHONUNBUFFERED="1",
    )
    environment.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "kiln_worker", *args],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def listening_url(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("kiln-worker listening on http://"), (
        line,
        process.stderr.read() if process.poll() is not None else "",
    )
    return line.split(" on ", 1)[1].strip()


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        raise AssertionError("the worker did not stop on SIGTERM") from None
    return process.returncode, stderr


def wait_healthy(url: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{url}/health", timeout=2)
        if response.status_code == 200:
            return response.json()
        assert time.monotonic() < deadline, response.json()
        time.sleep(0.02)


def test_port_zero_prints_the_address_and_serves_a_job(tmp_path: Path, receiver: Receiver) -> None:
    port_file = tmp_path / "port"
    process = start(
        tmp_path,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        KILN_WORKER_LOG_LEVEL="DEBUG",
    )
    try:
        url = listening_url(process)
        port = int(url.rsplit(":", 1)[1])
        assert port > 0 and port_file.read_text().strip() == str(port)
        health = wait_healthy(url)
        assert health["worker"] == "standin" and health["protocol"] == 1
        assert dispatch(url, callback_url=receiver.url).status_code == 202
        status = receiver.wait_status()
        assert status.json["status"] == "completed"  # type: ignore[index]
        assert [c.name for c in receiver.of("result")] == [
            "pixel_images.png",
            "preview.png",
            "xyz_images.png",
            "model.glb",
            "output3d.zip",
        ]
    finally:
        code, stderr = stop(process)
    assert code == 0, stderr
    # The secret never reaches the logs, even at DEBUG.
    assert SECRET_TEXT[len("whsec_") :] not in stderr
    assert "whsec_" not in stderr.replace("whsec_…", "")
    assert "accepted" in stderr


def test_pipeline_as_a_file_path_from_any_directory(tmp_path: Path) -> None:
    spec = f"{WORKER_DIR / 'tests' / 'standin.py'}:StandInPipeline"
    process = start(
        tmp_path, "--host", "127.0.0.1", "--port", "0", cwd=tmp_path, KILN_WORKER_PIPELINE=spec
    )
    try:
        wait_healthy(listening_url(process))
    finally:
        code, stderr = stop(process)
    assert code == 0, stderr


def test_loading_answers_503_until_the_model_is_ready(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    process = start(
        tmp_path, "--host", "127.0.0.1", "--port", "0", KILN_STANDIN_LOAD_UNTIL_FILE=str(ready)
    )
    try:
        url = listening_url(process)
        first = httpx.get(f"{url}/health")
        assert first.status_code == 503 and first.json()["status"] == "loading"
        ready.touch()
        wait_healthy(url)
    finally:
        stop(process)


def test_missing_secret_is_a_start_up_error(tmp_path: Path) -> None:
    process = start(tmp_path, "--port", "0", KILN_WORKER_SECRET="")
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 2
    assert "KILN_WORKER_SECRET is required" in stderr


def test_bad_secret_is_refused_without_showing_it(tmp_path: Path) -> None:
    bad = "whsec_c2hvcnQ="
    process = start(tmp_path, "--port", "0", KILN_WORKER_SECRET=bad, KILN_WORKER_SLOTS="zero")
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 2
    assert "too short" in stderr and "KILN_WORKER_SLOTS" in stderr  # every problem at once
    assert "c2hvcnQ" not in stderr


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is not None
    and importlib.util.find_spec("trellis2") is not None,
    reason="TRELLIS.2 is installed here",
)
def test_trellis2_without_its_packages_starts_and_says_why_it_is_not_ready(
    tmp_path: Path,
) -> None:
    """It listens (so /health and `kiln worker-check` can give the reason), answers 503
    with every missing module, and logs the same."""
    process = start(tmp_path, "--host", "127.0.0.1", "--port", "0", KILN_WORKER_PIPELINE="trellis2")
    try:
        url = listening_url(process)
        deadline = time.monotonic() + 20
        while (health := httpx.get(f"{url}/health", timeout=2)).json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert health.status_code == 503
        error = health.json()["error"]
        assert error.startswith("the trellis2 pipeline failed while checking the Python modules")
        assert "torch: ModuleNotFoundError" in error and "flash_attn: " in error
    finally:
        code, stderr = stop(process)
    assert code == 0
    assert "missing or broken requirement(s) of TRELLIS.2" in stderr
    assert "Traceback" not in stderr, "a reason for people, not a trace"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "neither a built-in"),
        ("no_such_module:X", "cannot import"),
        ("tests.standin:NotThere", "not a kiln_worker.pipelines.Pipeline"),
    ],
)
def test_bad_pipeline_specs(tmp_path: Path, spec: str, message: str) -> None:
    process = start(tmp_path, "--port", "0", KILN_WORKER_PIPELINE=spec)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 2
    assert message in stderr


def test_port_in_use_is_a_start_up_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start(tmp_path, "--host", "127.0.0.1", "--port", str(port))
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 2
    assert "cannot listen" in stderr
