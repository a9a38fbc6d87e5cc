"""schemathesis hooks for `make schemathesis`: sign kiln's worker callbacks, and keep
the run's own admin credential alive.

A worker callback is signed with its channel's secret over the exact bytes of its body
(Standard Webhooks: HMAC-SHA256 over `{id}.{timestamp}.{body}`), which schemathesis
cannot compute. It sends the configured credential of the `worker_signature` scheme,
`webhook-signature: sign-me` (tools/schemathesis/schemathesis.toml); this hook replaces
that placeholder with a real signature once the body is final. Any other value, such as
the ones `ignored_auth` probes with, is sent unchanged, and must be refused.

The secret is the worker channel's, from KILN_SCHEMATHESIS_SECRET (scripts/schemathesis.sh).

Every request carries an admin's API token, so that the account and admin routes are
tested past 401. Following the document's links, schemathesis would in time revoke that
token or demote or disable that admin (after making another), and every later request
would only be refused. A path `id` naming the token or the admin
(KILN_SCHEMATHESIS_PROTECTED, comma-separated) is replaced with an id nobody has, which
is answered 404 like any other unknown id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
import uuid

import requests
import schemathesis

PLACEHOLDER = "sign-me"


class _Sign(requests.auth.AuthBase):
    """Signs a prepared request, whose body is final (requests prepares auth last)."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if request.headers.get("webhook-signature") != PLACEHOLDER:
            return request
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8")
        message_id = f"msg_{uuid.uuid4().hex}"
        timestamp = str(int(time.time()))
        mac = hmac.new(self.key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        request.headers["webhook-id"] = message_id
        request.headers["webhook-timestamp"] = timestamp
        request.headers["webhook-signature"] = "v1," + base64.b64encode(mac).decode("ascii")
        return request


@schemathesis.hook
def before_call(context, case, kwargs):  # noqa: ARG001 - the hook's signature
    protected = set(filter(None, os.environ.get("KILN_SCHEMATHESIS_PROTECTED", "").split(",")))
    parameters = case.path_parameters or {}
    if parameters.get("id") in protected:
        parameters["id"] = str(uuid.uuid4())
    secret = os.environ.get("KILN_SCHEMATHESIS_SECRET", "")
    if secret.startswith("whsec_") and "auth" not in kwargs:
        kwargs["auth"] = _Sign(base64.b64decode(secret.removeprefix("whsec_")))
