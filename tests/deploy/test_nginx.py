"""deploy/nginx.conf, run: Debian's nginx (1.22; compose runs nginx:1.28) with the file
as compose mounts it, its upstream names pointed at two stand-in replicas on loopback.
`nginx -t`, then what kiln needs of the proxy: events streamed as they come, requests
spread over both replicas, a replica that is down skipped, the client's address
forwarded, a large upload streamed whole, and a POST never sent twice."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import DEPLOY, free_port, run, tool


class Replica(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str):
        super().__init__(("127.0.0.1", 0), Handler)
        self.name = name
        self.hits: list[str] = []
        self.status = 200
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def handle_error(self, request, client_address):
        pass  # nginx closing a kept-alive connection, or a test stopping a replica


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, body: bytes, status: int | None = None, ctype: str = "text/plain"):
        self.send_response(status or self.server.status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        self.server.hits.append(f"GET {self.path}")
        if self.path == "/events":
            # An SSE stream: one event, a pause, another, then the end.
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"id: 1\nevent: queued\ndata: {}\n\n")
            self.wfile.flush()
            time.sleep(1.5)
            self.wfile.write(b"id: 2\nevent: completed\ndata: {}\n\n")
            self.wfile.flush()
            self.close_connection = True
            return
        headers = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        self.reply(f"{self.server.name}\n{headers}".encode())

    def do_POST(self):  # noqa: N802
        self.server.hits.append(f"POST {self.path}")
        digest, size = hashlib.sha256(), 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                length = int(self.rfile.readline().strip(), 16)
                if length == 0:
                    self.rfile.readline()
                    break
                chunk = self.rfile.read(length)
                digest.update(chunk)
                size += len(chunk)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length", 0))
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                digest.update(chunk)
                size += len(chunk)
                remaining -= len(chunk)
        self.reply(f"{size} {digest.hexdigest()}".encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy(tmp_path):
    """nginx with deploy/nginx.conf, in front of two stand-in replicas."""
    nginx = tool("nginx")
    replicas = [Replica("kiln-1"), Replica("kiln-2")]
    port = free_port()
    conf = (DEPLOY / "nginx.conf").read_text()
    conf = conf.replace("kiln-1:8080", f"127.0.0.1:{replicas[0].server_address[1]}")
    conf = conf.replace("kiln-2:8080", f"127.0.0.1:{replicas[1].server_address[1]}")
    conf, n = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", conf)
    assert n == 1
    (tmp_path / "default.conf").write_text(conf)
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / d).mkdir()
    user = "user root root;\n" if os.geteuid() == 0 else ""
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        "events { worker_connections 256; }\n"
        "http {\n  access_log off;\n"
        + "".join(f"  {d}_temp_path {tmp_path}/{d};\n" for d in ("proxy", "fastcgi", "uwsgi", "scgi"))
        + f"  client_body_temp_path {tmp_path}/body;\n  include {tmp_path}/default.conf;\n}}\n"
    )
    test = run([nginx, "-t", "-p", str(tmp_path), "-c", str(main), "-e", str(tmp_path / "error.log")])
    assert test.returncode == 0, test.stderr
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(main), "-e", str(tmp_path / "error.log")])
    deadline = time.monotonic() + 10
    while True:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, Path(tmp_path / "error.log").read_text()
            time.sleep(0.05)
    yield port, replicas
    proc.terminate()
    proc.wait(timeout=10)
    for r in replicas:
        r.shutdown()


def get(port, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    answer = conn.getresponse()
    return answer.status, answer.read().decode()


def test_events_are_not_buffered(proxy):
    port, _ = proxy
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    start = time.monotonic()
    conn.request("GET", "/events", headers={"Accept": "text/event-stream"})
    answer = conn.getresponse()
    assert answer.status == 200
    first = answer.readline()
    at_first = time.monotonic() - start
    rest = answer.read()
    at_end = time.monotonic() - start
    assert first == b"id: 1\n"
    assert b"event: completed" in rest
    # The first event arrives at once, not when the stream ends 1.5 s later.
    assert at_first < 1.0 and at_end >= 1.4, (at_first, at_end)


def test_requests_are_spread_and_forwarded(proxy):
    port, replicas = proxy
    names = []
    for _ in range(8):
        status, body = get(port, "/api/v1/catalog", {"X-Forwarded-For": "198.51.100.7"})
        assert status == 200
        names.append(body.split("\n", 1)[0])
        headers = body.lower()
        assert "x-forwarded-for: 198.51.100.7, 127.0.0.1" in headers
        assert "x-real-ip: 127.0.0.1" in headers
        assert "x-forwarded-proto: http" in headers
        assert f"host: 127.0.0.1:{port}" in headers
    assert set(names) == {"kiln-1", "kiln-2"}


def test_a_replica_that_is_down_or_stopping_is_skipped(proxy):
    port, replicas = proxy
    replicas[1].status = 503  # kiln's answer while it shuts down
    for _ in range(6):
        status, body = get(port, "/api/v1/tasks/x")
        assert status == 200 and body.startswith("kiln-1")
    replicas[1].status = 200
    replicas[1].shutdown()
    replicas[1].server_close()
    for _ in range(6):
        status, body = get(port, "/api/v1/tasks/x")
        assert status == 200 and body.startswith("kiln-1")


def test_post_is_never_sent_twice(proxy):
    port, replicas = proxy
    for r in replicas:
        r.status = 503
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/api/v1/tasks", body=b'{"prompt":"x"}', headers={"Content-Type": "application/json"})
    assert conn.getresponse().status == 503
    posts = [h for r in replicas for h in r.hits if h.startswith("POST")]
    assert posts == ["POST /api/v1/tasks"]


def test_large_upload_is_streamed_whole(proxy):
    port, _ = proxy
    body = os.urandom(24 << 20)  # over nginx's default limit of 1 MiB, under 600 MiB
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/api/v1/worker-callbacks/result/x", body=body, headers={"Content-Type": "application/octet-stream"})
    answer = conn.getresponse()
    assert answer.status == 200
    assert answer.read().decode() == f"{len(body)} {hashlib.sha256(body).hexdigest()}"


def test_timeouts_and_limits_are_long_enough():
    conf = (DEPLOY / "nginx.conf").read_text()
    hours = {m.group(1): int(m.group(2)) for m in re.finditer(r"(proxy_\w+_timeout) (\d+)h;", conf)}
    # kiln's waits: seed 002's POST /api/generate up to tasks.deadline (3 min), OpenAI's
    # face up to twice a channel's deadline; SSE keeps itself alive every 15 s.
    assert hours == {"proxy_read_timeout": 1, "proxy_send_timeout": 1}
    assert re.search(r"client_max_body_size (\d+)m;", conf).group(1) == "600"
    assert "proxy_buffering off;" in conf and "proxy_request_buffering off;" in conf
