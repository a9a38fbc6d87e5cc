"""Callback delivery: signatures per attempt, backoff with jitter, when to stop."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import pytest

from kiln_worker.callbacks import (
    CallbackClient,
    Outcome,
    RetryPolicy,
    content_type_for,
    encode_multipart,
)
from kiln_worker.signing import Secret, Verifier
from tests.conftest import SECRET_TEXT


class Script:
    """A MockTransport handler answering scripted statuses (or raising network errors)."""

    def __init__(self, *answers: int | type[Exception]) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, type):
            raise answer("scripted network failure")
        body = (
            {"ok": True}
            if answer == 200
            else {"error": {"code": "x", "message": f"scripted {answer}"}}
        )
        return httpx.Response(answer, json=body)


def run(script: Script, coro_factory: Any, *, attempts: int = 5) -> tuple[Any, list[float]]:
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> Any:
        async with httpx.AsyncClient(transport=httpx.MockTransport(script)) as http:
            client = CallbackClient(
                Secret(SECRET_TEXT),
                http,
                RetryPolicy(attempts=attempts, base=0.5, maximum=4.0),
                sleep=fake_sleep,
                rng=random.Random(7),
            )
            return await coro_factory(client)

    return asyncio.run(main()), sleeps


def status_call(client: CallbackClient) -> Any:
    return client.status("http://kiln.test/cb", "t-1", "completed")


def test_first_success_sends_once() -> None:
    script = Script(200)
    delivery, sleeps = run(script, status_call)
    assert delivery.outcome is Outcome.OK and delivery.attempts == 1
    assert sleeps == []
    request = script.requests[0]
    assert str(request.url) == "http://kiln.test/cb/status"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"taskId": "t-1", "status": "completed"}


@pytest.mark.parametrize(
    "failure", [500, 502, 503, 504, 429, httpx.ConnectError, httpx.ReadTimeout]
)
def test_server_and_network_errors_are_retried(failure: Any) -> None:
    script = Script(failure, failure, 200)
    delivery, sleeps = run(script, status_call)
    assert delivery.outcome is Outcome.OK and delivery.attempts == 3
    assert len(sleeps) == 2


def test_every_attempt_is_a_new_signed_message() -> None:
    script = Script(503, 503, 200)
    run(script, status_call)
    verifier = Verifier(Secret(SECRET_TEXT))
    ids = []
    for request in script.requests:
        ids.append(verifier.verify(request.headers, request.content))  # each one verifies…
    assert len(set(ids)) == 3  # …and none is a replay of another


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    script = Script(*([503] * 7))
    delivery, sleeps = run(script, status_call, attempts=7)
    assert delivery.outcome is Outcome.GAVE_UP and delivery.attempts == 7
    assert delivery.status_code == 503 and "scripted 503" in delivery.detail
    ceilings = [min(4.0, 0.5 * 2**n) for n in range(6)]  # 0.5 1 2 4 4 4
    assert len(sleeps) == 6
    for slept, ceiling in zip(sleeps, ceilings, strict=True):
        assert ceiling / 2 <= slept <= ceiling
    assert len(set(sleeps)) == len(sleeps), "jittered"


def test_policy_delay_bounds() -> None:
    policy = RetryPolicy(attempts=10, base=0.25, maximum=10.0)
    rng = random.Random(1)
    for attempt in range(10):
        ceiling = min(10.0, 0.25 * 2**attempt)
        for _ in range(20):
            assert ceiling / 2 <= policy.delay(attempt, rng) <= ceiling


@pytest.mark.parametrize("code", [400, 401, 403, 404, 413, 422])
def test_client_errors_stop_at_once(code: int) -> None:
    script = Script(code, 200)
    delivery, sleeps = run(script, status_call)
    assert delivery.outcome is Outcome.REJECTED and delivery.status_code == code
    assert len(script.requests) == 1 and sleeps == []


def test_409_means_the_task_ended() -> None:
    script = Script(409, 200)
    delivery, _ = run(script, status_call)
    assert delivery.outcome is Outcome.ENDED and len(script.requests) == 1


def test_progress_has_fewer_attempts() -> None:
    script = Script(503, 503, 503)
    delivery, _ = run(script, lambda c: c.progress("http://kiln.test/cb", "t-1", 42, "sampling"))
    assert delivery.outcome is Outcome.GAVE_UP and delivery.attempts == 2
    assert json.loads(script.requests[0].content) == {
        "taskId": "t-1",
        "progress": 42,
        "stage": "sampling",
    }


def test_a_url_httpx_refuses_gives_up_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """httpx.InvalidURL is no httpx.HTTPError: it must end the delivery, not the reporter."""
    script = Script(200)
    delivery, sleeps = run(
        script, lambda c: c.status("http://kiln.test:0x/cb", "t-1", "completed")
    )
    assert delivery.outcome is Outcome.GAVE_UP and delivery.attempts == 1
    assert delivery.status_code is None and "InvalidURL" in delivery.detail
    assert script.requests == [] and sleeps == []
    assert "InvalidURL" in caplog.text and "giving up" in caplog.text


def test_an_unexpected_error_gives_up_at_once() -> None:
    script = Script(ValueError, 200)
    delivery, sleeps = run(script, status_call)
    assert delivery.outcome is Outcome.GAVE_UP and delivery.attempts == 1
    assert "ValueError: scripted network failure" in delivery.detail
    assert len(script.requests) == 1 and sleeps == []


@pytest.mark.parametrize("message", [42, {"detail": "busy"}, None, ["a", "b"]])
def test_an_error_message_that_is_not_text_is_described(message: Any) -> None:
    answers = [httpx.Response(503, json={"error": {"code": "x", "message": message}})]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else httpx.Response(200, json={"ok": True})

    delivery, _ = run(handler, status_call, attempts=1)  # type: ignore[arg-type]
    assert delivery.outcome is Outcome.GAVE_UP and delivery.status_code == 503
    assert delivery.detail.startswith("HTTP 503")


def test_result_is_multipart_name_and_file() -> None:
    script = Script(200)
    data = bytes(range(256))
    run(script, lambda c: c.result("http://kiln.test/cb", "t/1", "model.glb", data))
    request = script.requests[0]
    assert str(request.url) == "http://kiln.test/cb/result/t%2F1"
    content_type = request.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")

    from starlette.requests import Request

    async def parse() -> Any:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": request.content, "more_body": False}

        scope = {
            "type": "http",
            "method": "POST",
            "headers": [(b"content-type", content_type.encode())],
        }
        return await Request(scope, receive).form()

    form = asyncio.run(parse())
    assert form["name"] == "model.glb"
    upload = form["file"]
    assert upload.filename == "model.glb"
    assert upload.content_type == "model/gltf-binary"
    assert asyncio.run(upload.read()) == data


def test_multipart_encoding_round_trips_through_httpx_parsing() -> None:
    body, content_type = encode_multipart(
        [("a", "1"), ("b", "two")], [("f", "x.bin", "application/octet-stream", b"\r\n--\0")]
    )
    assert body.endswith(b"--\r\n")
    boundary = content_type.split("boundary=")[1]
    assert body.count(boundary.encode()) == 4


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.glb", "model/gltf-binary"),
        ("preview.png", "image/png"),
        ("output3d.zip", "application/zip"),
        ("scene.gltf", "model/gltf+json"),
        ("blob.xyz", "application/octet-stream"),
    ],
)
def test_content_types(name: str, expected: str) -> None:
    assert content_type_for(name) == expected
