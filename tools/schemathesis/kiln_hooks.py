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
would only be refused. For the token or the admin (KILN_SCHEMATHESIS_PROTECTED,
comma-separated), only what would lock the run out is changed:
- a revocation of the token goes to an id nobody has, answered 404;
- a change of the admin keeps it an enabled admin without a task limit (the rest of the
  request, a new password say, goes through: API tokens outlive sessions).
Everything else about them (reading, listing, a balance, a new token) is sent as made.
Sending the admin's changes elsewhere instead, as this hook once did, made a 404 for an
id schemathesis had taken from a link, which its `ensure_resource_availability` check
then reported as a resource lost right after it was created.
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


#: Revocations of an API token by its id.
REVOCATIONS = {("DELETE", "/api/v1/me/tokens/{id}"), ("DELETE", "/api/v1/admin/tokens/{id}")}
#: The change of a user by its id.
USER_CHANGE = ("PATCH", "/api/v1/admin/users/{id}")
#: The largest `max_active` a user may be given (u32).
MAX_ACTIVE = 4_294_967_295


def _keep_admin_usable(case, parameters):
    operation = (case.method.upper(), case.operation.path)
    if operation in REVOCATIONS:
        parameters["id"] = str(uuid.uuid4())
    elif operation == USER_CHANGE and isinstance(case.body, dict):
        # Only valid values that would lock the run out are changed: an invalid one is
        # refused anyway, and must stay invalid for the negative checks.
        body = case.body
        if body.get("role") == "user":
            body["role"] = "admin"
        if body.get("disabled") is True:
            body["disabled"] = False
        limit = body.get("max_active")
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit <= MAX_ACTIVE:
            body["max_active"] = None


@schemathesis.hook
def before_call(context, case, kwargs):  # noqa: ARG001 - the hook's signature
    protected = set(filter(None, os.environ.get("KILN_SCHEMATHESIS_PROTECTED", "").split(",")))
    parameters = case.path_parameters or {}
    if parameters.get("id") in protected:
        _keep_admin_usable(case, parameters)
    secret = os.environ.get("KILN_SCHEMATHESIS_SECRET", "")
    if secret.startswith("whsec_") and "auth" not in kwargs:
        kwargs["auth"] = _Sign(base64.b64decode(secret.removeprefix("whsec_")))
