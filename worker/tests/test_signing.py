"""Standard Webhooks signing and verification, cross-checked with the official package."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import pytest
from standardwebhooks.webhooks import Webhook

from kiln_worker.signing import (
    ReplayCache,
    Secret,
    SecretError,
    SignatureError,
    Verifier,
    signature,
    signed_headers,
)
from tests.conftest import OTHER_SECRET_TEXT, SECRET_TEXT

NOW = 1_760_000_000.0
BODY = b'{"taskId":"t-1","status":"completed"}'


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(clock: Clock | None = None, secret: str = SECRET_TEXT) -> Verifier:
    return Verifier(Secret(secret), clock=clock or Clock())


def test_our_signatures_verify_with_the_official_package() -> None:
    headers = signed_headers(Secret(SECRET_TEXT), BODY)
    assert headers["webhook-id"].startswith("msg_")
    assert headers["webhook-signature"].startswith("v1,")
    Webhook(SECRET_TEXT).verify(BODY.decode(), headers)  # raises if it disagrees


def test_official_signatures_verify_with_ours() -> None:
    timestamp = datetime.fromtimestamp(NOW, tz=timezone.utc)
    sig = Webhook(SECRET_TEXT).sign("msg_official", timestamp, BODY.decode())
    headers = {
        "webhook-id": "msg_official",
        "webhook-timestamp": str(int(NOW)),
        "webhook-signature": sig,
    }
    assert verifier().verify(headers, BODY) == "msg_official"


def test_binary_bodies_sign_and_verify() -> None:
    body = bytes(range(256)) * 4  # not UTF-8: the official package cannot sign this
    headers = signed_headers(Secret(SECRET_TEXT), body, now=NOW)
    assert verifier().verify(headers, body)
    with pytest.raises(SignatureError, match="does not match"):
        verifier().verify(headers, body[:-1] + b"x")


def test_signature_is_hmac_of_id_timestamp_body() -> None:
    import hashlib
    import hmac

    key = base64.b64decode(SECRET_TEXT[len("whsec_") :])
    expected = base64.b64encode(hmac.new(key, b"msg_1.123.hello", hashlib.sha256).digest()).decode()
    assert signature(Secret(SECRET_TEXT), "msg_1", 123, b"hello") == "v1," + expected


def test_header_names_are_case_insensitive() -> None:
    headers = {k.upper(): v for k, v in signed_headers(Secret(SECRET_TEXT), BODY, now=NOW).items()}
    assert verifier().verify(headers, BODY)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_refused(missing: str) -> None:
    headers = signed_headers(Secret(SECRET_TEXT), BODY, now=NOW)
    del headers[missing]
    with pytest.raises(SignatureError, match="unsigned"):
        verifier().verify(headers, BODY)


def test_wrong_secret_is_refused() -> None:
    headers = signed_headers(Secret(OTHER_SECRET_TEXT), BODY, now=NOW)
    with pytest.raises(SignatureError, match="same secret"):
        verifier().verify(headers, BODY)


@pytest.mark.parametrize("skew", [-301, 301, -3600])
def test_stale_or_future_timestamps_are_refused(skew: float) -> None:
    headers = signed_headers(Secret(SECRET_TEXT), BODY, now=NOW + skew)
    with pytest.raises(SignatureError, match="5 minutes"):
        verifier().verify(headers, BODY)


@pytest.mark.parametrize("skew", [-299, 299, 0])
def test_timestamps_within_five_minutes_are_accepted(skew: float) -> None:
    headers = signed_headers(Secret(SECRET_TEXT), BODY, now=NOW + skew)
    assert verifier().verify(headers, BODY)


def test_non_numeric_timestamp_is_refused() -> None:
    headers = signed_headers(Secret(SECRET_TEXT), BODY, now=NOW)
    headers["webhook-timestamp"] = "yesterday"
    with pytest.raises(SignatureError):
        verifier().verify(headers, BODY)


def test_replay_is_refused_until_the_window_passes() -> None:
    clock = Clock()
    v = verifier(clock)
    headers = signed_headers(Secret(SECRET_TEXT), BODY, now=NOW)
    assert v.verify(headers, BODY)
    with pytest.raises(SignatureError, match="replay"):
        v.verify(headers, BODY)
    # Ten minutes on, the id is forgotten — but the timestamp is stale by then anyway.
    clock.now += 601
    with pytest.raises(SignatureError, match="5 minutes"):
        v.verify(headers, BODY)


def test_refused_requests_do_not_burn_their_id() -> None:
    """A forged request must not be able to block the genuine one with the same id."""
    v = verifier()
    genuine = signed_headers(Secret(SECRET_TEXT), BODY, now=NOW, msg_id="msg_x")
    forged = dict(genuine, **{"webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()})
    with pytest.raises(SignatureError):
        v.verify(forged, BODY)
    assert v.verify(genuine, BODY) == "msg_x"


def test_one_valid_signature_among_several_is_enough() -> None:
    """Secret rotation: the sender lists signatures with the old and the new secret."""
    headers = signed_headers(Secret(SECRET_TEXT), BODY, now=NOW, msg_id="msg_r")
    old = signature(Secret(OTHER_SECRET_TEXT), "msg_r", int(NOW), BODY)
    headers["webhook-signature"] = f"v1a,abc {old} junk v1,!!! {headers['webhook-signature']}"
    assert verifier().verify(headers, BODY)


def test_replay_cache_prunes_and_is_bounded() -> None:
    cache = ReplayCache(window=10, max_entries=3)
    for i in range(5):
        assert cache.check_and_remember(f"m{i}", now=0)
    assert len(cache) == 3
    assert cache.check_and_remember("m4", now=5) is False
    assert cache.check_and_remember("m4", now=11)  # expired: accepted again
    assert len(cache) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not-a-secret", "whsec_"),
        ("whsec_%%%%", "base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "too short"),
    ],
)
def test_bad_secrets_are_refused_without_echoing_them(text: str, message: str) -> None:
    with pytest.raises(SecretError, match=message) as info:
        Secret(text)
    assert text not in str(info.value)


def test_secret_never_shows() -> None:
    secret = Secret(SECRET_TEXT)
    assert SECRET_TEXT[6:] not in repr(secret)
    assert SECRET_TEXT[6:] not in str(secret)
    # Unpadded base64 is accepted, as the official package does.
    assert Secret(SECRET_TEXT.rstrip("=")).key == secret.key
