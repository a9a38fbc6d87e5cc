"""Standard Webhooks signatures, both ways (worker protocol, "Signatures").

Every request between kiln and the worker carries `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, where the
key is the base64-decoded part of the channel's `whsec_…` secret.

Why not the official `standardwebhooks` package: its `sign()` and `verify()` take the
body as `str` and encode it as UTF-8, so they cannot sign or check the binary multipart
bodies of dispatches and result callbacks (a PNG is not UTF-8). The scheme is a few
lines of hmac; the tests cross-check these signatures against the official package on
text bodies.

Two choices the protocol makes on top of the standard:
- every message, retries included, gets a new `webhook-id` and a fresh timestamp, so
  the replay cache below never refuses an honest retry;
- ids are remembered for 10 minutes (the 5-minute tolerance either way), so a captured
  request cannot be replayed while its timestamp is still acceptable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping

SECRET_PREFIX = "whsec_"
#: The protocol asks for at least 24 random bytes behind `whsec_`.
MIN_SECRET_BYTES = 24
#: A timestamp more than this far from our clock, either way, is refused.
TOLERANCE_SECONDS = 5 * 60
#: How long an accepted `webhook-id` is remembered (a second use within it is a replay).
REPLAY_WINDOW_SECONDS = 10 * 60
#: Upper bound on remembered ids. Only correctly signed messages are remembered, so only
#: a holder of the secret could fill it; the bound just keeps memory finite regardless.
MAX_REMEMBERED_IDS = 200_000


class SecretError(ValueError):
    """The configured secret is not a usable `whsec_…` secret (the message never contains it)."""


class Secret:
    """A channel secret. Its text never appears in `repr`, `str` or logs."""

    __slots__ = ("_key",)

    def __init__(self, text: str) -> None:
        text = text.strip()
        if not text.startswith(SECRET_PREFIX):
            raise SecretError(
                "the secret must start with `whsec_` (kiln's channel secret, e.g. "
                '`echo "whsec_$(openssl rand -base64 32)"`)'
            )
        encoded = text[len(SECRET_PREFIX) :]
        try:
            # Unpadded base64 is accepted too (b64decode ignores surplus padding).
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise SecretError("the part of the secret after `whsec_` is not base64") from None
        if len(key) < MIN_SECRET_BYTES:
            raise SecretError(
                f"the secret is too short: {len(key)} bytes after `whsec_`, at least "
                f"{MIN_SECRET_BYTES} are required"
            )
        self._key = key

    @property
    def key(self) -> bytes:
        return self._key

    def __repr__(self) -> str:
        return "Secret('whsec_…')"

    __str__ = __repr__


def signature(secret: Secret, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """The `v1,…` signature of one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def new_message_id() -> str:
    """A fresh `webhook-id`, in kiln's style: `msg_` and a UUID."""
    return f"msg_{uuid.uuid4()}"


def signed_headers(
    secret: Secret,
    body: bytes,
    *,
    now: float | None = None,
    msg_id: str | None = None,
) -> dict[str, str]:
    """The three signature headers for a request carrying exactly `body`.

    Call it once per attempt: a retry is a new message with a new id and timestamp.
    """
    msg_id = msg_id or new_message_id()
    timestamp = int(time.time() if now is None else now)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
    }


class SignatureError(Exception):
    """A request's signature was refused; the message is safe to send back in a 401."""


class ReplayCache:
    """The `webhook-id`s accepted in the last `window` seconds (thread-safe)."""

    def __init__(
        self, window: float = REPLAY_WINDOW_SECONDS, max_entries: int = MAX_REMEMBERED_IDS
    ) -> None:
        self._window = window
        self._max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def check_and_remember(self, msg_id: str, now: float) -> bool:
        """True when `msg_id` is new (and is now remembered), False when it is a replay."""
        with self._lock:
            self._prune(now)
            if msg_id in self._seen:
                return False
            self._seen[msg_id] = now + self._window
            while len(self._seen) > self._max_entries:
                self._seen.popitem(last=False)
            return True

    def _prune(self, now: float) -> None:
        # Entries are in insertion order and the window is constant, so expiry times
        # are increasing: drop from the front until one is still alive.
        while self._seen:
            first_id, expires = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[first_id]

    def __len__(self) -> int:
        return len(self._seen)


class Verifier:
    """Checks incoming requests: signature, timestamp tolerance, then replays."""

    def __init__(
        self,
        secret: Secret,
        *,
        clock: Callable[[], float] = time.time,
        tolerance: float = TOLERANCE_SECONDS,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        self._secret = secret
        self._clock = clock
        self._tolerance = tolerance
        self._replays = replay_cache if replay_cache is not None else ReplayCache()

    def verify(self, headers: Mapping[str, str], body: bytes) -> str:
        """Return the message id of a valid request; raise `SignatureError` otherwise.

        `headers` may be any mapping; names are matched case-insensitively.
        """
        lowered = {k.lower(): v for k, v in headers.items()}
        msg_id = lowered.get("webhook-id", "").strip()
        timestamp_text = lowered.get("webhook-timestamp", "").strip()
        signatures = lowered.get("webhook-signature", "").strip()
        if not (msg_id and timestamp_text and signatures):
            raise SignatureError(
                "unsigned request: webhook-id, webhook-timestamp and webhook-signature "
                "headers are required"
            )
        try:
            timestamp = int(timestamp_text)
        except ValueError:
            raise SignatureError("webhook-timestamp is not a Unix time in seconds") from None
        now = self._clock()
        if abs(now - timestamp) > self._tolerance:
            raise SignatureError(
                "webhook-timestamp is more than 5 minutes away from this worker's clock; "
                "check that both machines keep time (NTP)"
            )
        expected = signature(self._secret, msg_id, timestamp_text, body)
        expected_digest = base64.b64decode(expected[3:])
        if not any(
            hmac.compare_digest(expected_digest, candidate) for candidate in _v1_digests(signatures)
        ):
            raise SignatureError(
                "signature does not match; check that kiln's channel and this worker "
                "share the same secret"
            )
        if not self._replays.check_and_remember(msg_id, now):
            raise SignatureError("webhook-id was already used: replayed request refused")
        return msg_id


def _v1_digests(header: str) -> list[bytes]:
    """The decoded `v1` signatures of a header; other versions and junk are skipped."""
    digests = []
    for entry in header.split():
        version, _, value = entry.partition(",")
        if version != "v1" or not value:
            continue
        try:
            digests.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    return digests
