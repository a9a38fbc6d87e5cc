"""Prepares a one-node Garage for kiln, through Garage's admin API v2 (deploy/compose.yaml's
`garage-init` service). Standard library only.

Does only what is missing, so it can run at every `docker compose up`:

1. gives the node a role (zone `dc1`, GARAGE_CAPACITY) and applies the layout, when the
   cluster has no layout yet;
2. imports the access key S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY, when Garage does not
   know it;
3. makes the bucket S3_BUCKET, when it does not exist;
4. lets the key read and write the bucket.

Environment: GARAGE_ADMIN_URL (http://garage:3903), GARAGE_ADMIN_TOKEN, GARAGE_CAPACITY
(e.g. 100G), S3_BUCKET, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY; GARAGE_INIT_WAIT (seconds
to wait for the admin API, default 60).

`make deploy-check` runs it against a stand-in of the admin API (tests/deploy).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


class AdminError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


def env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        sys.exit(f"garage-init: {name} is not set")
    return value


def capacity(text: str) -> int:
    text = text.strip().upper().removesuffix("B")
    number, unit = (text[:-1], text[-1]) if text and text[-1] in UNITS else (text, "")
    return int(float(number) * UNITS[unit])


class Admin:
    def __init__(self, base: str, token: str):
        self.base = base.rstrip("/")
        self.token = token

    def call(self, method: str, endpoint: str, query: dict | None = None, body=None):
        url = f"{self.base}/v2/{endpoint}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                text = answer.read().decode()
        except urllib.error.HTTPError as err:
            raise AdminError(err.code, err.read().decode(errors="replace")) from None
        return json.loads(text) if text.strip() else None

    def get(self, endpoint: str, **query):
        return self.call("GET", endpoint, query=query)

    def post(self, endpoint: str, body, patience: float = 30):
        """POST, tried again for `patience` seconds while Garage answers 5xx (a layout
        just applied takes a moment to be in force)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return self.call("POST", endpoint, body=body)
            except AdminError as err:
                if err.status < 500 or time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def find(self, endpoint: str, **query):
        """GET that answers None for a thing Garage does not have (400/404)."""
        try:
            return self.get(endpoint, **query)
        except AdminError as err:
            if err.status in (400, 404):
                return None
            raise


def wait_for(admin: Admin, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return admin.get("GetClusterStatus")
        except (OSError, AdminError) as err:
            if isinstance(err, AdminError) and err.status in (401, 403):
                sys.exit(f"garage-init: the admin token was refused ({err})")
            if time.monotonic() > deadline:
                sys.exit(f"garage-init: Garage's admin API did not answer: {err}")
            time.sleep(1)


def main() -> None:
    admin = Admin(env("GARAGE_ADMIN_URL", "http://garage:3903"), env("GARAGE_ADMIN_TOKEN"))
    bucket = env("S3_BUCKET", "kiln")
    key_id = env("S3_ACCESS_KEY_ID")
    secret = env("S3_SECRET_ACCESS_KEY")
    size = capacity(env("GARAGE_CAPACITY", "100G"))

    status = wait_for(admin, float(os.environ.get("GARAGE_INIT_WAIT", "60")))
    if status["layoutVersion"] == 0:
        node = status["nodes"][0]["id"]
        admin.post(
            "UpdateClusterLayout",
            {"roles": [{"id": node, "zone": "dc1", "capacity": size, "tags": ["kiln"]}]},
        )
        admin.post("ApplyClusterLayout", {"version": 1})
        print(f"garage-init: node {node[:16]}… given {size} bytes in zone dc1")

    if admin.find("GetKeyInfo", id=key_id) is None:
        admin.post("ImportKey", {"accessKeyId": key_id, "secretAccessKey": secret, "name": "kiln"})
        print(f"garage-init: access key {key_id} imported")

    info = admin.find("GetBucketInfo", globalAlias=bucket)
    if info is None:
        info = admin.post("CreateBucket", {"globalAlias": bucket})
        print(f"garage-init: bucket {bucket} made")

    admin.post(
        "AllowBucketKey",
        {
            "bucketId": info["id"],
            "accessKeyId": key_id,
            "permissions": {"read": True, "write": True, "owner": False},
        },
    )
    print(f"garage-init: {key_id} may read and write {bucket}")


if __name__ == "__main__":
    main()
