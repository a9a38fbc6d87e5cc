"""The worker protocol end to end over loopback sockets: dispatch, callbacks, health."""

from __future__ import annotations

import io
import itertools
import json
import re
import time
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from kiln_worker import PROTOCOL_VERSION, __version__
from kiln_worker.pipelines import position_map
from tests.conftest import (
    OTHER_SECRET_TEXT,
    Receiver,
    WorkerHandle,
    build_dispatch,
    dispatch,
    png_bytes,
    send,
    start_worker,
)
from tests.png16 import read_png16
from tests.standin import StandInPipeline

TASK = "0192f7c4-1111-7aaa-8bbb-000000000001"
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def test_health_reports_ready_with_protocol_fields(make_worker: Any) -> None:
    worker: WorkerHandle = make_worker()
    response = worker.health()
    assert response.status_code == 200
    assert response.json() == {
        "status": "healthy",
        "models_loaded": True,
        "protocol": PROTOCOL_VERSION,
        "slots": 1,
        "running": 0,
        "worker": "standin",
        "version": __version__,
        "warmup": {
            "seconds": response.json()["warmup"]["seconds"],
            "stages": [
                "preprocessing",
                "sampling",
                "rendering_preview",
                "exporting_glb",
                "exporting_obj",
            ],
            "files": response.json()["warmup"]["files"],
            "device": "stand-in (no GPU)",
        },
    }
    files = response.json()["warmup"]["files"]
    assert sorted(files) == sorted(
        ["pixel_images.png", "preview.png", "xyz_images.png", "model.glb", "output3d.zip"]
    )
    assert all(size > 0 for size in files.values())


def test_full_job_sends_progress_results_then_status(make_worker: Any, receiver: Receiver) -> None:
    worker: WorkerHandle = make_worker()
    response = dispatch(
        worker.url, callback_url=receiver.url, params={"steps": 6, "step_seconds": 0.01}
    )
    assert response.status_code == 202
    assert response.json() == {"status": "accepted", "task_id": TASK}

    status = receiver.wait_status()
    assert status.json == {"taskId": TASK, "status": "completed"}
    calls = receiver.calls
    assert calls[-1] is status, "the status is the last callback"
    kinds = [c.kind for c in calls]
    assert kinds.count("status") == 1

    # Every callback is signed with the channel secret, each with its own message id.
    assert all(c.signature_error is None for c in calls), receiver.summary()
    assert all(c.official_ok for c in calls if c.json is not None)
    ids = [c.headers["webhook-id"] for c in calls]
    assert len(set(ids)) == len(ids)

    # Progress: integers 0-100, never backwards, snake_case stages.
    progress = [c.json for c in receiver.of("progress")]
    assert progress, "progress callbacks were sent"
    assert all(p is not None and p["taskId"] == TASK for p in progress)
    values = [p["progress"] for p in progress]  # type: ignore[index]
    assert all(isinstance(v, int) and 0 <= v <= 100 for v in values)
    assert values == sorted(values)
    assert all(SNAKE.match(p["stage"]) for p in progress)  # type: ignore[index]
    assert "sampling" in {p["stage"] for p in progress}  # type: ignore[index]

    # Results: the cut-out before sampling, then the preview, the position map, the
    # model, and the archive last; multipart name + file.
    results = receiver.of("result")
    assert [r.name for r in results] == [
        "pixel_images.png",
        "preview.png",
        "xyz_images.png",
        "model.glb",
        "output3d.zip",
    ]
    stages = [
        c.json["stage"] if c.kind == "progress" else c.kind  # type: ignore[index]
        for c in calls
    ]
    assert calls.index(results[0]) < stages.index("sampling"), "the cut-out comes before sampling"
    for r in results:
        assert r.path == f"/result/{TASK}"
        assert r.filename == r.name
        assert r.headers["content-type"].startswith("multipart/form-data; boundary=")
    cutout, preview, xyz, model, archive = (r.data or b"" for r in results)
    cut = Image.open(io.BytesIO(cutout))
    assert cut.format == "PNG" and cut.mode == "RGBA" and cut.width == cut.height
    shown = Image.open(io.BytesIO(preview))
    assert shown.format == "PNG" and shown.mode == "RGBA"
    assert shown.getpixel((0, 0))[3] == 0, "the preview's background is transparent"
    positions = read_png16(xyz)
    assert positions.shape == (cut.height, cut.width, 4)
    points, inside = position_map.decode(positions)
    # The stand-in's cube, seen from +Z: its front face, at Z = 0.5, fills the picture.
    assert inside.all() and np.abs(points[..., 2] - 0.5).max() <= 1 / 65535
    assert points[0, 0, 0] < points[0, -1, 0] and points[0, 0, 1] > points[-1, 0, 1]
    assert model[:4] == b"glTF" and int.from_bytes(model[8:12], "little") == len(model)
    assert results[3].file_type == "model/gltf-binary"
    assert {r.file_type for r in results[:3]} == {"image/png"}
    names = zipfile.ZipFile(io.BytesIO(archive)).namelist()
    assert "model.obj" in names and "model.mtl" in names
    assert any(n.endswith(".png") for n in names)
    worker.wait_idle()


def test_callbacks_go_to_the_callback_url_paths(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker()
    # A trailing slash is tolerated; paths are {callback_url}/progress|result/{id}|status.
    assert (
        dispatch(worker.url, callback_url=receiver.url + "/", task_id="task.A_1-b").status_code
        == 202
    )
    receiver.wait_status()
    paths = {c.path for c in receiver.calls}
    assert paths == {"/progress", "/result/task.A_1-b", "/status"}


def test_progress_is_throttled(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker(progress_interval=0.05)
    dispatch(worker.url, callback_url=receiver.url, params={"steps": 40, "step_seconds": 0.005})
    receiver.wait_status()
    times = [c.at for c in receiver.of("progress")]
    assert 2 <= len(times) < 40
    # Measured on arrival, so one request's delay in transit can shorten the next gap;
    # the count over the whole span is what the throttle guarantees.
    assert len(times) <= (times[-1] - times[0]) / 0.05 + 2, times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert sorted(gaps)[len(gaps) // 2] >= 0.045, gaps


def test_jpeg_and_webp_pictures_are_accepted(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker()
    for image_format, task in (("JPEG", "t-jpeg"), ("WEBP", "t-webp")):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, format=image_format)
        response = dispatch(
            worker.url,
            task_id=task,
            callback_url=receiver.url,
            image=buffer.getvalue(),
            image_name=f"p.{image_format.lower()}",
            image_type=f"image/{image_format.lower()}",
        )
        assert response.status_code == 202, response.text
        receiver.wait_for(
            lambda cs, t=task: any(c.kind == "status" and c.json["taskId"] == t for c in cs)
        )
        worker.wait_idle()


# -- refusals: signatures -------------------------------------------------------------


def _assert_nothing_happened(worker: WorkerHandle, receiver: Receiver) -> None:
    time.sleep(0.05)
    assert worker.runner.running == 0
    assert receiver.calls == []
    assert not any(worker.settings.tmp_dir.glob("job-*"))


@pytest.fixture(scope="module")
def idle_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerHandle, Receiver]]:
    """One worker and receiver shared by the refusal tests: a refused dispatch changes nothing."""
    receiver = Receiver()
    receiver.server.start(per_test=False)
    worker = start_worker(tmp_path_factory.mktemp("refusals"), per_test=False)
    yield worker, receiver
    for server in (worker.server, receiver.server):
        server.server.should_exit = True
    worker.server.stop()
    receiver.server.stop()


def test_unsigned_dispatch_is_refused(idle_pair: tuple[WorkerHandle, Receiver]) -> None:
    worker, receiver = idle_pair
    response = send(build_dispatch(worker.url, callback_url=receiver.url), secret=None)
    assert response.status_code == 401
    assert "unsigned" in response.json()["error"]
    _assert_nothing_happened(worker, receiver)


def test_wrongly_signed_dispatch_is_refused(idle_pair: tuple[WorkerHandle, Receiver]) -> None:
    worker, receiver = idle_pair
    response = send(build_dispatch(worker.url, callback_url=receiver.url), secret=OTHER_SECRET_TEXT)
    assert response.status_code == 401
    assert "secret" in response.json()["error"]
    _assert_nothing_happened(worker, receiver)


def test_tampered_body_is_refused(idle_pair: tuple[WorkerHandle, Receiver]) -> None:
    worker, receiver = idle_pair
    request = build_dispatch(worker.url, callback_url=receiver.url)
    good = build_dispatch(worker.url, callback_url=receiver.url + "x")
    from kiln_worker.signing import Secret, signed_headers
    from tests.conftest import SECRET_TEXT

    headers = signed_headers(Secret(SECRET_TEXT), good.content)  # signs another body
    response = send(request, secret=None, headers=headers)
    assert response.status_code == 401
    _assert_nothing_happened(worker, receiver)


def test_stale_dispatch_is_refused(idle_pair: tuple[WorkerHandle, Receiver]) -> None:
    worker, receiver = idle_pair
    response = send(build_dispatch(worker.url, callback_url=receiver.url), now=time.time() - 301)
    assert response.status_code == 401
    assert "5 minutes" in response.json()["error"]
    _assert_nothing_happened(worker, receiver)


def test_replayed_dispatch_is_refused(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker()
    request = build_dispatch(worker.url, callback_url=receiver.url)
    first = send(request)
    assert first.status_code == 202
    receiver.wait_status()
    worker.wait_idle()
    # The same signed bytes again, as an eavesdropper would send them.
    replay = httpx.Request("POST", request.url, headers=request.headers, content=request.content)
    second = send(replay, secret=None)
    assert second.status_code == 401
    assert "replay" in second.json()["error"]
    assert len(receiver.of("status")) == 1


def test_health_answers_unsigned_probes(idle_pair: tuple[WorkerHandle, Receiver]) -> None:
    worker, _ = idle_pair
    assert httpx.get(f"{worker.url}/health").status_code == 200


# -- refusals: bad requests -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_id": None}, "task_id"),
        ({"task_id": "../etc"}, "task_id"),
        ({"task_id": "a" * 129}, "task_id"),
        ({"callback_url": None}, "callback_url"),
        ({"callback_url": "ftp://kiln/cb"}, "callback_url"),
        ({"callback_url": "/relative/cb"}, "callback_url"),
        ({"callback_url": "http://kiln/cb?x=1"}, "query"),
        ({"callback_url": "http://[::1/cb"}, "callback_url"),
        ({"callback_url": "http://kiln:0x/cb"}, "callback_url"),
        ({"callback_url": "http://kiln:99999/cb"}, "callback_url"),
        ({"params": "{not json"}, "JSON"),
        ({"params": [1, 2]}, "JSON object"),
        ({"params": {"steps": 0}}, "steps"),
        ({"timeout_seconds": "soon"}, "timeout_seconds"),
        ({"timeout_seconds": "-5"}, "timeout_seconds"),
        ({"timeout_seconds": "nan"}, "timeout_seconds"),
        ({"image": b"definitely not a picture"}, "JPEG, PNG or WebP"),
        ({"image": b""}, "empty"),
    ],
)
def test_bad_dispatches_are_refused_with_400(
    idle_pair: tuple[WorkerHandle, Receiver], kwargs: dict[str, Any], message: str
) -> None:
    worker, receiver = idle_pair
    kwargs.setdefault("callback_url", receiver.url)
    response = dispatch(worker.url, **kwargs)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    _assert_nothing_happened(worker, receiver)


def test_gif_is_refused(idle_pair: tuple[WorkerHandle, Receiver]) -> None:
    worker, receiver = idle_pair
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    response = dispatch(worker.url, callback_url=receiver.url, image=buffer.getvalue())
    assert response.status_code == 400
    assert "GIF" in response.json()["error"]


def test_missing_image_is_refused(idle_pair: tuple[WorkerHandle, Receiver]) -> None:
    worker, receiver = idle_pair
    request = httpx.Request(
        "POST",
        f"{worker.url}/generate3d",
        data={"task_id": TASK, "callback_url": receiver.url},
        files={"other": ("x.txt", b"x", "text/plain")},
    )
    request.read()
    response = send(request)
    assert response.status_code == 400
    assert "image" in response.json()["error"]


def test_oversized_request_is_refused(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker(max_request_bytes=10_000)
    response = dispatch(
        worker.url, callback_url=receiver.url, image=png_bytes(size=16) + b"\0" * 20_000
    )
    assert response.status_code == 400
    assert "too large" in response.json()["error"]


def test_json_body_is_refused(idle_pair: tuple[WorkerHandle, Receiver]) -> None:
    worker, _ = idle_pair
    request = httpx.Request("POST", f"{worker.url}/generate3d", json={"task_id": TASK})
    request.read()
    assert send(request).status_code == 400


# -- capacity -------------------------------------------------------------------------


def held(worker: WorkerHandle) -> StandInPipeline:
    """Hold the worker's jobs at the stand-in's gate, so that they run until released."""
    pipeline: StandInPipeline = worker.pipeline  # type: ignore[assignment]
    pipeline.hold_runs()
    return pipeline


def test_busy_worker_answers_429_then_accepts_again(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker()
    pipeline = held(worker)
    assert dispatch(worker.url, task_id="t-1", callback_url=receiver.url).status_code == 202
    busy = dispatch(worker.url, task_id="t-2", callback_url=receiver.url)
    assert busy.status_code == 429
    assert busy.json()["running"] == 1
    health = worker.health().json()
    assert health["running"] == 1 and health["slots"] == 1
    pipeline.release_runs()
    receiver.wait_status()
    worker.wait_idle()
    assert dispatch(worker.url, task_id="t-2", callback_url=receiver.url).status_code == 202
    receiver.wait_for(lambda cs: sum(c.kind == "status" for c in cs) == 2)


def test_next_dispatch_right_after_the_status_is_accepted(
    make_worker: Any, receiver: Receiver
) -> None:
    """kiln dispatches the next task as soon as it records a status: the slot must be free."""
    worker = make_worker()
    accepted = []

    def on_status(call: Any) -> None:
        accepted.append(
            dispatch(worker.url, task_id="t-next", callback_url=receiver.url).status_code
        )

    original = receiver._scripted

    def scripted(call: Any) -> int:
        if call.kind == "status" and not accepted:
            import threading

            thread = threading.Thread(target=on_status, args=(call,))
            thread.start()
            thread.join()  # the dispatch completes before kiln answers the status
        return original(call)

    receiver._scripted = scripted  # type: ignore[method-assign]
    assert dispatch(worker.url, task_id="t-first", callback_url=receiver.url).status_code == 202
    receiver.wait_for(lambda cs: sum(c.kind == "status" for c in cs) == 2)
    assert accepted == [202]


def test_two_slots_run_two_jobs(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker(slots=2)
    pipeline = held(worker)
    assert dispatch(worker.url, task_id="a", callback_url=receiver.url).status_code == 202
    assert dispatch(worker.url, task_id="b", callback_url=receiver.url).status_code == 202
    assert dispatch(worker.url, task_id="c", callback_url=receiver.url).status_code == 429
    pipeline.release_runs()
    receiver.wait_for(lambda cs: sum(c.kind == "status" for c in cs) == 2)


def test_duplicate_task_id_answers_409_accepted(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker(slots=2)
    pipeline = held(worker)
    assert dispatch(worker.url, callback_url=receiver.url).status_code == 202
    again = dispatch(worker.url, callback_url=receiver.url)
    assert again.status_code == 409
    assert again.json() == {"status": "accepted", "task_id": TASK}
    pipeline.release_runs()
    receiver.wait_status()
    worker.wait_idle()
    assert len(receiver.of("status")) == 1
    assert pipeline.runs == [(TASK, 0, "ok")]


def test_duplicate_beats_busy(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker(slots=1)
    pipeline = held(worker)
    assert dispatch(worker.url, callback_url=receiver.url).status_code == 202
    assert dispatch(worker.url, callback_url=receiver.url).status_code == 409
    pipeline.release_runs()
    receiver.wait_status()


# -- loading --------------------------------------------------------------------------


def test_loading_worker_answers_503(make_worker: Any, receiver: Receiver) -> None:
    pipeline = StandInPipeline()
    pipeline.hold_load()
    worker = make_worker(pipeline, wait_ready=False)
    health = worker.health()
    assert health.status_code == 503
    assert health.json()["status"] == "loading"
    assert health.json()["models_loaded"] is False
    assert dispatch(worker.url, callback_url=receiver.url).status_code == 503
    pipeline.release_load()
    worker.wait_healthy()
    assert dispatch(worker.url, callback_url=receiver.url).status_code == 202
    receiver.wait_status()


def test_loading_health_names_the_phase(make_worker: Any) -> None:
    pipeline = StandInPipeline()
    pipeline.hold_load()
    worker = make_worker(pipeline, wait_ready=False)
    assert worker.health().json()["phase"] == "loading the model"
    pipeline.release_load()
    assert "phase" not in worker.wait_healthy()


def wait_not_loading(worker: WorkerHandle) -> httpx.Response:
    deadline = time.monotonic() + 10
    while worker.health().json()["status"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.01)
    return worker.health()


@pytest.mark.parametrize(
    ("phase", "reason"),
    [
        ("modules", "failed while checking the Python modules: 1 module cannot be imported"),
        ("gpu", "failed while checking the GPU: PyTorch sees no CUDA GPU"),
        ("weights", "failed while checking the weights: offline (HF_HUB_OFFLINE=1)"),
        ("1", "failed while loading the model: RuntimeError: stand-in model failed to load"),
        (
            "warmup-sampling",
            "failed while warming up (sampling): RuntimeError: the stand-in pipeline failed",
        ),
        (
            "warmup-export",
            "failed while warming up (rendering_preview): RuntimeError: the stand-in pipeline",
        ),
        ("warmup-glb", "failed while warming up (checking its files): RuntimeError: the warm-up"),
    ],
)
def test_a_failed_load_or_warm_up_is_unhealthy_with_the_reason(
    make_worker: Any, receiver: Receiver, monkeypatch: Any, phase: str, reason: str
) -> None:
    """Never healthy while broken: whatever step of the start fails, /health says 503 and
    why, for as long as the worker runs, and no job is accepted."""
    monkeypatch.setenv("KILN_STANDIN_LOAD_FAIL", phase)
    worker = make_worker(StandInPipeline(), wait_ready=False)
    health = wait_not_loading(worker)
    assert health.status_code == 503
    body = health.json()
    assert body["status"] == "unhealthy" and body["models_loaded"] is False
    assert body["error"].startswith("the standin pipeline " + reason), body["error"]
    assert "warmup" not in body
    refused = dispatch(worker.url, callback_url=receiver.url)
    assert refused.status_code == 503 and reason in refused.json()["error"]
    time.sleep(0.05)
    assert worker.health().status_code == 503, "it stays unhealthy"


def test_signature_is_checked_before_readiness(make_worker: Any) -> None:
    pipeline = StandInPipeline()
    pipeline.hold_load()
    worker = make_worker(pipeline, wait_ready=False)
    response = send(build_dispatch(worker.url, callback_url="http://127.0.0.1:9/cb"), secret=None)
    assert response.status_code == 401
    pipeline.release_load()


def test_status_body_shape_on_failure(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker()
    dispatch(worker.url, callback_url=receiver.url, params={"fail": "error"})
    status = receiver.wait_status()
    assert set(status.json) == {"taskId", "status", "error"}  # type: ignore[arg-type]
    assert status.json["status"] == "failed"  # type: ignore[index]
    assert "failed on purpose" in status.json["error"]  # type: ignore[index]
    assert json.loads(status.body) == status.json
