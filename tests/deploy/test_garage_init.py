"""deploy/garage-init.py against a stand-in of Garage's admin API v2, which checks the
token and the request bodies as Garage 2.x's OpenAPI document (doc/api/garage-admin-v2.json)
describes them and keeps the state. No real Garage here: it is not among the packages
this machine can install (Garage itself builds with `cargo install garage`, which the
storage tests of issue 12 may bring)."""

from __future__ import annotations

import http.server
import json
import os
import secrets
import sys
import threading
import urllib.parse

import pytest

from conftest import DEPLOY, free_port, run

TOKEN = "admin-token-for-tests"


class FakeGarage(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), AdminApi)
        self.node = secrets.token_hex(32)
        self.layout_version = 0
        self.layout_settled = False
        self.staged = []
        self.roles = []
        self.keys = {}
        self.buckets = {}
        self.calls = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class AdminApi(http.server.BaseHTTPRequestHandler):
    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, code, message):
        self.answer(status, {"code": code, "message": message, "region": "garage", "path": self.path})

    def handle_call(self, method):
        g: FakeGarage = self.server
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        endpoint = url.path.removeprefix("/v2/")
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.error(403, "Forbidden", "Invalid bearer token")
        body = None
        if method == "POST":
            assert self.headers.get("Content-Type") == "application/json"
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        g.calls.append((method, endpoint, query, body))
        if (method, endpoint) == ("GET", "GetClusterStatus"):
            return self.answer(200, {"layoutVersion": g.layout_version,
                                     "nodes": [{"id": g.node, "isUp": True, "draining": False}]})
        if (method, endpoint) == ("POST", "UpdateClusterLayout"):
            for role in body["roles"]:
                assert set(role) <= {"id", "zone", "capacity", "tags"} and {"id", "zone", "tags"} <= set(role)
                assert isinstance(role["capacity"], int) and isinstance(role["tags"], list)
                if role["id"] != g.node:
                    return self.error(400, "InvalidRequest", "unknown node")
            g.staged = body["roles"]
            return self.answer(200, {"version": g.layout_version, "roles": [], "stagedRoleChanges": g.staged})
        if (method, endpoint) == ("POST", "ApplyClusterLayout"):
            if body.get("version") != g.layout_version + 1 or not g.staged:
                return self.error(400, "InvalidRequest", "wrong version")
            g.layout_version += 1
            g.roles, g.staged = g.staged, []
            return self.answer(200, {"message": ["applied"], "layout": {}})
        if (method, endpoint) == ("GET", "GetKeyInfo"):
            key = g.keys.get(query.get("id"))
            if key is None:
                return self.error(404, "NoSuchAccessKey", "no such key")
            return self.answer(200, {"accessKeyId": query["id"], "name": key["name"], "expired": False,
                                     "permissions": {}, "buckets": []})
        if (method, endpoint) == ("POST", "ImportKey"):
            assert set(body) <= {"accessKeyId", "secretAccessKey", "name"}
            if body["accessKeyId"] in g.keys:
                return self.error(409, "KeyAlreadyExists", "exists")
            g.keys[body["accessKeyId"]] = {"secret": body["secretAccessKey"], "name": body.get("name")}
            return self.answer(200, {"accessKeyId": body["accessKeyId"], "name": body.get("name") or ""})
        if (method, endpoint) == ("GET", "GetBucketInfo"):
            for bucket in g.buckets.values():
                if query.get("globalAlias") in bucket["globalAliases"]:
                    return self.answer(200, bucket)
            return self.error(404, "NoSuchBucket", "no such bucket")
        if (method, endpoint) == ("POST", "CreateBucket"):
            if g.layout_version == 0 or not g.layout_settled:
                # Right after a layout is applied, Garage may refuse for a moment.
                g.layout_settled = True
                return self.error(503, "NoLayout", "the layout is not ready yet")
            if any(body["globalAlias"] in b["globalAliases"] for b in g.buckets.values()):
                return self.error(409, "BucketAlreadyExists", "exists")
            bucket = {"id": secrets.token_hex(32), "globalAliases": [body["globalAlias"]], "keys": []}
            g.buckets[bucket["id"]] = bucket
            return self.answer(200, bucket)
        if (method, endpoint) == ("POST", "AllowBucketKey"):
            assert set(body) == {"bucketId", "accessKeyId", "permissions"}
            bucket = g.buckets.get(body["bucketId"])
            if bucket is None or body["accessKeyId"] not in g.keys:
                return self.error(404, "NotFound", "no such bucket or key")
            bucket["keys"] = [k for k in bucket["keys"] if k["accessKeyId"] != body["accessKeyId"]]
            bucket["keys"].append({"accessKeyId": body["accessKeyId"], "permissions": body["permissions"]})
            return self.answer(200, bucket)
        return self.error(404, "NotFound", f"no endpoint {method} {endpoint}")

    def do_GET(self):  # noqa: N802
        self.handle_call("GET")

    def do_POST(self):  # noqa: N802
        self.handle_call("POST")

    def log_message(self, *args):
        pass


@pytest.fixture
def garage():
    g = FakeGarage()
    yield g
    g.shutdown()


def init(url, token=TOKEN, **extra):
    env = {
        "PATH": os.environ["PATH"],
        "GARAGE_ADMIN_URL": url,
        "GARAGE_ADMIN_TOKEN": token,
        "GARAGE_CAPACITY": "100G",
        "S3_BUCKET": "kiln",
        "S3_ACCESS_KEY_ID": "GK0123456789abcdef01234567",
        "S3_SECRET_ACCESS_KEY": "ab" * 32,
    }
    env.update(extra)
    return run([sys.executable, str(DEPLOY / "garage-init.py")], env=env)


def test_prepares_a_new_garage(garage):
    result = init(garage.url)
    assert result.returncode == 0, result.stderr
    assert garage.layout_version == 1
    assert garage.roles == [{"id": garage.node, "zone": "dc1", "capacity": 100 * 10**9, "tags": ["kiln"]}]
    assert garage.keys == {"GK0123456789abcdef01234567": {"secret": "ab" * 32, "name": "kiln"}}
    (bucket,) = garage.buckets.values()
    assert bucket["globalAliases"] == ["kiln"]
    assert bucket["keys"] == [{"accessKeyId": "GK0123456789abcdef01234567",
                               "permissions": {"read": True, "write": True, "owner": False}}]


def test_running_again_changes_nothing(garage):
    assert init(garage.url).returncode == 0
    garage.calls.clear()
    result = init(garage.url)
    assert result.returncode == 0, result.stderr
    posts = [endpoint for method, endpoint, _, _ in garage.calls if method == "POST"]
    assert posts == ["AllowBucketKey"]  # the grant is idempotent; nothing else is made again
    assert garage.layout_version == 1 and len(garage.buckets) == 1 and len(garage.keys) == 1


def test_a_refused_token_is_said_at_once(garage):
    result = init(garage.url, token="wrong")
    assert result.returncode != 0
    assert "admin token was refused" in result.stderr


def test_waits_for_garage_then_gives_up():
    result = init(f"http://127.0.0.1:{free_port()}", GARAGE_INIT_WAIT="1")
    assert result.returncode != 0
    assert "did not answer" in result.stderr


@pytest.mark.parametrize("text,expect", [("100G", 100 * 10**9), ("1.5T", 15 * 10**11), ("512M", 512 * 10**6), ("2048", 2048), ("10GB", 10**10)])
def test_capacity_units(text, expect):
    namespace: dict = {"__name__": "garage_init"}
    exec(compile((DEPLOY / "garage-init.py").read_text(), "garage-init.py", "exec"), namespace)
    assert namespace["capacity"](text) == expect
