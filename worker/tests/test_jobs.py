"""Jobs end to end: callback retries and refusals, OOM retry, timeouts, temp files."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kiln_worker.jobs import OOM_MESSAGE, OOM_NOTHING_LOWER
from tests.conftest import Receiver, WorkerHandle, dispatch
from tests.standin import StandInPipeline

TASK = "0192f7c4-1111-7aaa-8bbb-000000000001"


def job_dirs(worker: WorkerHandle) -> list[Path]:
    root = worker.settings.tmp_dir
    return list(root.iterdir()) if root.exists() else []


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


#: What the stand-in sends, in order.
ALL_RESULTS = ["pixel_images.png", "preview.png", "xyz_images.png", "model.glb", "output3d.zip"]


def names_sent(receiver: Receiver) -> list[str]:
    return [c.name for c in receiver.of("result") if c.answered == 200]  # type: ignore[misc]


# -- callback retries ------------------------------------------------------------------


def test_result_callbacks_are_retried_on_5xx(make_worker: Any, receiver: Receiver) -> None:
    receiver.script["result:model.glb"] = [503, 500]
    worker = make_worker()
    dispatch(worker.url, callback_url=receiver.url)
    status = receiver.wait_status()
    assert status.json["status"] == "completed"  # type: ignore[index]
    attempts = [c for c in receiver.of("result") if c.name == "model.glb"]
    assert [c.answered for c in attempts] == [503, 500, 200]
    # Each retry is a new message: new id, and the receiver's replay check passed.
    assert len({c.headers["webhook-id"] for c in attempts}) == 3
    assert all(c.signature_error is None for c in attempts)
    assert attempts[0].data == attempts[2].data
    assert names_sent(receiver) == ALL_RESULTS


def test_status_callback_is_retried_on_5xx(make_worker: Any, receiver: Receiver) -> None:
    receiver.script["status"] = [502, 503]
    worker = make_worker()
    dispatch(worker.url, callback_url=receiver.url)
    receiver.wait_status()
    assert [c.answered for c in receiver.of("status")] == [502, 503, 200]


def test_unreachable_kiln_gives_up_after_the_attempts(make_worker: Any, tmp_path: Path) -> None:
    worker = make_worker(callback_attempts=3)
    # Port 9 (discard) on loopback: connection refused, a network error each time.
    assert dispatch(worker.url, callback_url="http://127.0.0.1:9/cb").status_code == 202
    worker.wait_idle()
    wait_until(lambda: not job_dirs(worker))


def test_progress_5xx_is_dropped_not_fatal(make_worker: Any, receiver: Receiver) -> None:
    receiver.script["progress"] = [503] * 50
    worker = make_worker()
    dispatch(worker.url, callback_url=receiver.url, params={"steps": 10, "step_seconds": 0.01})
    status = receiver.wait_status()
    assert status.json["status"] == "completed"  # type: ignore[index]


def test_409_on_a_result_stops_the_job_without_status(make_worker: Any, receiver: Receiver) -> None:
    receiver.script["result:pixel_images.png"] = [409]
    worker = make_worker()
    dispatch(worker.url, callback_url=receiver.url, params={"steps": 4})
    worker.wait_idle(timeout=5)
    time.sleep(0.1)
    assert receiver.of("status") == []
    assert names_sent(receiver) == []
    assert len(receiver.of("result")) == 1, "no retry after 409"
    wait_until(lambda: not job_dirs(worker))


def test_409_on_progress_stops_the_pipeline(make_worker: Any, receiver: Receiver) -> None:
    """kiln ended the task (timeout, cancel): the GPU must not keep working on it."""
    receiver.script["progress"] = [409]
    worker = make_worker()
    pipeline: StandInPipeline = worker.pipeline  # type: ignore[assignment]
    started = time.monotonic()
    # Without the cut-out, which would go out before the 409 to the first progress is back.
    params = {"steps": 1000, "step_seconds": 0.01, "outputs": ["preview", "glb", "zip"]}
    dispatch(worker.url, callback_url=receiver.url, params=params)
    worker.wait_idle(timeout=5)
    # Generous bounds (CI machines are busy); the job's steps alone would take 10 s.
    assert time.monotonic() - started < 8, "stopped long before its 10 s of steps"
    wait_until(lambda: pipeline.runs != [])
    assert pipeline.runs == [(TASK, 0, "JobCancelled")]
    time.sleep(0.05)
    assert receiver.of("status") == [] and receiver.of("result") == []


def test_404_on_a_result_stops_everything(make_worker: Any, receiver: Receiver) -> None:
    receiver.script["result:model.glb"] = [404]
    worker = make_worker()
    dispatch(worker.url, callback_url=receiver.url)
    worker.wait_idle()
    time.sleep(0.05)
    assert names_sent(receiver) == ["pixel_images.png", "preview.png", "xyz_images.png"]
    assert [c.answered for c in receiver.of("result")][-1] == 404
    assert receiver.of("status") == []


def test_413_on_the_model_fails_the_task_with_a_reason(
    make_worker: Any, receiver: Receiver
) -> None:
    receiver.script["result:model.glb"] = [413]
    worker = make_worker()
    dispatch(worker.url, callback_url=receiver.url)
    status = receiver.wait_status()
    assert status.json["status"] == "failed"  # type: ignore[index]
    assert (
        "model.glb" in status.json["error"] and "larger than kiln accepts" in status.json["error"]
    )  # type: ignore[index]
    assert len([c for c in receiver.of("result") if c.name == "model.glb"]) == 1
    assert "output3d.zip" not in names_sent(receiver)


def test_giving_up_on_a_result_fails_the_task(make_worker: Any, receiver: Receiver) -> None:
    receiver.script["result:model.glb"] = [503] * 3
    worker = make_worker(callback_attempts=3)
    dispatch(worker.url, callback_url=receiver.url)
    status = receiver.wait_status()
    assert status.json["status"] == "failed"  # type: ignore[index]
    assert "could not deliver model.glb" in status.json["error"]  # type: ignore[index]
    assert "3 attempts" in status.json["error"]  # type: ignore[index]


# -- failures and OOM ----------------------------------------------------------------


def test_pipeline_error_fails_the_task(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker()
    dispatch(worker.url, callback_url=receiver.url, params={"fail": "error"})
    status = receiver.wait_status()
    assert status.json["status"] == "failed"  # type: ignore[index]
    assert (
        status.json["error"]
        == "The standin pipeline failed: RuntimeError: the stand-in pipeline failed on purpose"
    )  # type: ignore[index]
    assert worker.pipeline.runs == [(TASK, 0, "RuntimeError")]  # type: ignore[attr-defined]
    # The cut-out, sent before sampling, is all kiln got.
    assert names_sent(receiver) == ["pixel_images.png"]


#: The final status of a stand-in job that ran out of memory once at the default 1024
#: and was retried at 512: the change and the file sent before the error (not sent again).
COMPLETED_AT_512 = {
    "taskId": TASK,
    "status": "completed",
    "metadata": {
        "out_of_memory_retry": {
            "changed": {"resolution": {"from": 1024, "to": 512}},
            "kept_from_first_attempt": ["pixel_images.png"],
        }
    },
}


def test_oom_frees_memory_and_retries_once(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker()
    pipeline: StandInPipeline = worker.pipeline  # type: ignore[assignment]
    dispatch(worker.url, callback_url=receiver.url, params={"fail": "oom_once"})
    status = receiver.wait_status()
    # The retry ran with a lower resolution, and the result's metadata says so.
    assert status.json == COMPLETED_AT_512
    assert pipeline.runs == [(TASK, 0, "OutOfMemoryError"), (TASK, 1, "ok")]
    assert pipeline.resolutions == [1024, 512]
    # Once before the retry, once after the job.
    assert pipeline.free_memory_calls == 2
    values = [c.json["progress"] for c in receiver.of("progress")]  # type: ignore[index]
    assert values == sorted(values), "the retry does not make progress go backwards"
    assert names_sent(receiver) == ALL_RESULTS


class OutOfMemoryOnce(StandInPipeline):
    """Runs out of memory on its first attempt whatever the dispatch says, so that a
    dispatch without `params` (kiln leaves the field out when they are empty) can reach
    the retry."""

    def __init__(self) -> None:
        super().__init__()
        self.warmup = False  # the warm-up job would run out of memory too

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return super().validate_params({"fail": "oom_once", **params})


@pytest.mark.parametrize("params", [None, "", "  "], ids=["absent", "empty", "blank"])
def test_oom_retry_of_a_dispatch_without_params(
    make_worker: Any, receiver: Receiver, params: str | None
) -> None:
    """The retry starts from complete settings: the defaults, validated at dispatch."""
    worker = make_worker(OutOfMemoryOnce())
    pipeline: StandInPipeline = worker.pipeline  # type: ignore[assignment]
    assert dispatch(worker.url, callback_url=receiver.url, params=params).status_code == 202
    status = receiver.wait_status()
    assert status.json == COMPLETED_AT_512
    assert pipeline.runs == [(TASK, 0, "OutOfMemoryError"), (TASK, 1, "ok")]
    assert pipeline.resolutions == [1024, 512]
    assert names_sent(receiver) == ALL_RESULTS


class RecordsWhatItReached(StandInPipeline):
    """Notes in the job's metadata what it reached before running out of memory, as
    TRELLIS.2 does with the resolution its 1536 cascade came down to."""

    def run(self, job: Any, ctx: Any) -> list[Path]:
        ctx.metadata["settings"] = {"attempt": ctx.attempt}
        return super().run(job, ctx)


def test_the_oom_retry_is_told_what_the_first_attempt_recorded(
    make_worker: Any, receiver: Receiver
) -> None:
    worker = make_worker(RecordsWhatItReached())
    pipeline: StandInPipeline = worker.pipeline  # type: ignore[assignment]
    dispatch(worker.url, callback_url=receiver.url, params={"fail": "oom_once"})
    status = receiver.wait_status()
    assert pipeline.first_attempts == [{"settings": {"attempt": 0}}]
    # The result's metadata is the retry's own.
    assert status.json["metadata"]["settings"] == {"attempt": 1}  # type: ignore[index]


def test_oom_after_the_preview_does_not_send_it_twice(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker()
    dispatch(
        worker.url, callback_url=receiver.url, params={"fail": "oom_once", "fail_at": "export"}
    )
    status = receiver.wait_status()
    assert status.json["status"] == "completed"  # type: ignore[index]
    assert names_sent(receiver) == ALL_RESULTS
    assert worker.pipeline.runs == [(TASK, 0, "OutOfMemoryError"), (TASK, 1, "ok")]  # type: ignore[attr-defined]


def test_a_file_still_waiting_to_be_sent_survives_the_retry(
    make_worker: Any, receiver: Receiver
) -> None:
    """The retry makes its own pixel_images.png and drops it (already sent, by name): that
    must not delete the first attempt's, which kiln has not had yet."""
    worker = make_worker()
    pipeline: StandInPipeline = worker.pipeline  # type: ignore[assignment]
    original = receiver._scripted
    retried = threading.Event()

    def scripted(call: Any) -> int:
        if call.kind == "progress":
            # Hold the callbacks (and the cut-out behind them) until the retry has run.
            retried.wait(timeout=5)
        return original(call)

    receiver._scripted = scripted  # type: ignore[method-assign]
    dispatch(worker.url, callback_url=receiver.url, params={"fail": "oom_once"})
    wait_until(lambda: len(pipeline.runs) == 2)
    retried.set()
    status = receiver.wait_status()
    assert status.json["status"] == "completed"  # type: ignore[index]
    assert names_sent(receiver) == ALL_RESULTS


def test_oom_at_the_lowest_settings_fails_at_once(make_worker: Any, receiver: Receiver) -> None:
    """Nothing lower to try: the same settings again would only run out of memory again."""
    worker = make_worker()
    dispatch(worker.url, callback_url=receiver.url, params={"fail": "oom", "resolution": 512})
    status = receiver.wait_status()
    assert status.json == {"taskId": TASK, "status": "failed", "error": OOM_NOTHING_LOWER}
    assert worker.pipeline.runs == [(TASK, 0, "OutOfMemoryError")]  # type: ignore[attr-defined]


def test_second_oom_fails_with_a_clear_error(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker()
    dispatch(worker.url, callback_url=receiver.url, params={"fail": "oom"})
    status = receiver.wait_status()
    assert status.json == {"taskId": TASK, "status": "failed", "error": OOM_MESSAGE}
    assert "out of memory" in OOM_MESSAGE
    assert worker.pipeline.runs == [(TASK, 0, "OutOfMemoryError"), (TASK, 1, "OutOfMemoryError")]  # type: ignore[attr-defined]
    wait_until(lambda: not job_dirs(worker))


# -- timeouts ------------------------------------------------------------------------


def test_timeout_fails_the_task_and_stops_the_pipeline(
    make_worker: Any, receiver: Receiver
) -> None:
    worker = make_worker()
    pipeline: StandInPipeline = worker.pipeline  # type: ignore[assignment]
    started = time.monotonic()
    dispatch(
        worker.url,
        callback_url=receiver.url,
        timeout_seconds=0.3,
        params={"steps": 1000, "step_seconds": 0.01},
    )
    status = receiver.wait_status()
    elapsed = time.monotonic() - started
    assert status.json["status"] == "failed"  # type: ignore[index]
    assert "timed out" in status.json["error"] and "0.3 seconds" in status.json["error"]  # type: ignore[index]
    assert 0.3 <= elapsed < 8  # the steps would take 10 s
    assert receiver.calls[-1] is status, "nothing after the status"
    worker.wait_idle()
    assert pipeline.runs == [(TASK, 0, "JobCancelled")]
    time.sleep(0.05)
    assert receiver.calls[-1] is status
    wait_until(lambda: not job_dirs(worker))


def test_configured_timeout_caps_the_dispatch_timeout(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker(timeout=0.3)
    dispatch(
        worker.url,
        callback_url=receiver.url,
        timeout_seconds=600,
        params={"steps": 1000, "step_seconds": 0.01},
    )
    status = receiver.wait_status()
    assert "0.3 seconds" in status.json["error"]  # type: ignore[index]


def test_slot_frees_when_the_stopped_job_returns(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker()
    dispatch(
        worker.url,
        callback_url=receiver.url,
        timeout_seconds=0.2,
        params={"steps": 1000, "step_seconds": 0.02},
    )
    receiver.wait_status()
    worker.wait_idle()
    assert worker.health().json()["running"] == 0
    assert dispatch(worker.url, task_id="t-after", callback_url=receiver.url).status_code == 202
    receiver.wait_for(lambda cs: sum(c.kind == "status" for c in cs) == 2)


# -- temp files ----------------------------------------------------------------------


def test_temp_files_are_deleted_after_success(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker()
    dispatch(worker.url, callback_url=receiver.url)
    receiver.wait_status()
    worker.wait_idle()
    wait_until(lambda: not job_dirs(worker))
    assert worker.settings.tmp_dir.exists()


def test_temp_files_are_deleted_after_failure(make_worker: Any, receiver: Receiver) -> None:
    worker = make_worker()
    dispatch(worker.url, callback_url=receiver.url, params={"fail": "error", "fail_at": "export"})
    receiver.wait_status()
    wait_until(lambda: not job_dirs(worker))


def test_each_file_is_deleted_once_sent(make_worker: Any, receiver: Receiver) -> None:
    """Files go as soon as kiln has them, not only when the job ends."""
    worker = make_worker()
    seen: dict[str, list[str]] = {}
    original = receiver._scripted

    def scripted(call: Any) -> int:
        if call.kind == "result":
            seen[call.name] = sorted(p.name for d in job_dirs(worker) for p in d.iterdir())
        return original(call)

    receiver._scripted = scripted  # type: ignore[method-assign]
    dispatch(worker.url, callback_url=receiver.url)
    receiver.wait_status()
    # When model.glb arrives the preview, sent before it, is gone from the job's directory.
    assert "preview.png" not in seen["model.glb"]
    assert "model.glb" not in seen["output3d.zip"]


def test_stale_job_dirs_are_removed_at_start(make_worker: Any, tmp_path: Path) -> None:
    import os

    root = tmp_path / "jobs"
    stale = root / "job-old-abc"
    fresh = root / "job-new-def"
    for directory in (stale, fresh):
        directory.mkdir(parents=True)
        (directory / "model.glb").write_bytes(b"x")
    os.utime(stale, (time.time() - 3 * 86400, time.time() - 3 * 86400))
    make_worker()
    assert not stale.exists() and fresh.exists()


class Stubborn(StandInPipeline):
    """A pipeline that never looks at its context: it cannot be stopped early."""

    def __init__(self) -> None:
        super().__init__()
        self.warmup = False  # its run would hold the warm-up too
        self.let_go = threading.Event()

    def run(self, job: Any, ctx: Any) -> list[Path]:
        self.let_go.wait(timeout=30)
        return []


def test_a_job_that_will_not_stop_makes_the_worker_unhealthy_until_it_does(
    make_worker: Any, receiver: Receiver
) -> None:
    pipeline = Stubborn()
    worker = make_worker(pipeline, stop_grace=0.2)
    dispatch(worker.url, callback_url=receiver.url, timeout_seconds=0.1)
    status = receiver.wait_status()
    assert "timed out" in status.json["error"]  # type: ignore[index]
    wait_until(lambda: worker.health().status_code == 503)
    health = worker.health().json()
    assert health["status"] == "unhealthy" and "did not stop" in health["error"]
    assert health["running"] == 1, "the GPU is still taken"
    assert dispatch(worker.url, task_id="t-2", callback_url=receiver.url).status_code == 503
    pipeline.let_go.set()
    worker.wait_idle()
    wait_until(lambda: worker.health().status_code == 200)
