"""deploy/docker-entrypoint.sh: with a stand-in `kiln` on PATH that records how it was
called, then with the real binary as the image runs it (its ENV, bind, health check,
SIGTERM)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import DEPLOY, free_port, kiln_bin, run, sealing_key
from test_dockerfile import image_env

ENTRYPOINT = str(DEPLOY / "docker-entrypoint.sh")

FAKE_KILN = r"""#!/usr/bin/env bash
# Records its arguments and the KILN_ variables it sees, one JSON line per call.
python3 - "$@" <<'PY' >>"$FAKE_KILN_LOG"
import json, os, sys
print(json.dumps({"args": sys.argv[1:], "env": {k: v for k, v in os.environ.items() if k.startswith("KILN_")}}))
PY
exit "${FAKE_KILN_EXIT:-0}"
"""


@pytest.fixture
def fake(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "kiln").write_text(FAKE_KILN)
    (bindir / "kiln").chmod(0o755)
    log = tmp_path / "calls.jsonl"

    def call(*args, env=None, expect=0):
        full = {"PATH": f"{bindir}:{os.environ['PATH']}", "FAKE_KILN_LOG": str(log), "HOME": str(tmp_path)}
        full.update(env or {})
        log.write_text("")
        result = run(["bash", ENTRYPOINT, *args], env=full, cwd=tmp_path)
        assert result.returncode == expect, result.stderr
        calls = [json.loads(line) for line in log.read_text().splitlines()]
        return calls, result

    return call


def test_no_arguments_serve(fake):
    calls, _ = fake()
    assert [c["args"] for c in calls] == [["serve"]]


def test_flags_go_to_serve(fake):
    calls, _ = fake("--bind", "0.0.0.0:9000", "--data-dir", "/data")
    assert [c["args"] for c in calls] == [["serve", "--bind", "0.0.0.0:9000", "--data-dir", "/data"]]


@pytest.mark.parametrize("flag", ["--help", "--version", "-V"])
def test_help_and_version_go_to_kiln(fake, flag):
    calls, _ = fake(flag)
    assert [c["args"] for c in calls] == [[flag]]


@pytest.mark.parametrize(
    "args",
    [
        ["migrate"],
        ["config", "check"],
        ["cleanup", "--older-than", "48h"],
        ["admin", "create", "--username", "root", "--password-stdin"],
        ["worker-check", "http://gpu:8000"],
    ],
)
def test_kiln_commands(fake, args):
    calls, _ = fake(*args)
    assert [c["args"] for c in calls] == [args]


def test_kiln_prefix(fake):
    calls, _ = fake("kiln", "generate", "--prompt", "x")
    assert [c["args"] for c in calls] == [["generate", "--prompt", "x"]]


def test_migrate_first_when_asked(fake):
    calls, _ = fake("serve", "--data-dir", "/d", env={"KILN_MIGRATE": "true"})
    assert [c["args"] for c in calls] == [["migrate", "--data-dir", "/d"], ["serve", "--data-dir", "/d"]]
    calls, _ = fake(env={"KILN_MIGRATE": "0"})
    assert [c["args"] for c in calls] == [["serve"]]


def test_failed_migration_stops_the_start(fake):
    calls, _ = fake(env={"KILN_MIGRATE": "1", "FAKE_KILN_EXIT": "1"}, expect=1)
    assert [c["args"] for c in calls] == [["migrate"]]


def test_other_commands_run_as_they_are(fake, tmp_path):
    calls, result = fake("sh", "-c", "echo hello from $0")
    assert calls == [] and result.stdout.strip() == "hello from sh"


def test_secrets_from_files(fake, tmp_path):
    (tmp_path / "pw").write_text("s3cret with spaces\n")
    (tmp_path / "key").write_text(sealing_key())
    calls, _ = fake(
        env={
            "KILN_ADMIN__PASSWORD_FILE": str(tmp_path / "pw"),
            "KILN_SERVER__SEALING_KEY_FILE": str(tmp_path / "key"),
            "KILN_LOG__KEEP_FILES": "3",
        }
    )
    env = calls[0]["env"]
    assert env["KILN_ADMIN__PASSWORD"] == "s3cret with spaces"
    assert env["KILN_SERVER__SEALING_KEY"] == (tmp_path / "key").read_text()
    # kiln refuses KILN_…__… variables that name no key: the _FILE ones are gone.
    assert "KILN_ADMIN__PASSWORD_FILE" not in env and "KILN_SERVER__SEALING_KEY_FILE" not in env
    assert env["KILN_LOG__KEEP_FILES"] == "3"


def test_secret_file_errors(fake, tmp_path):
    (tmp_path / "pw").write_text("x")
    _, result = fake(env={"KILN_ADMIN__PASSWORD_FILE": str(tmp_path / "pw"), "KILN_ADMIN__PASSWORD": "y"}, expect=2)
    assert "both KILN_ADMIN__PASSWORD_FILE and KILN_ADMIN__PASSWORD are set" in result.stderr
    _, result = fake(env={"KILN_ADMIN__PASSWORD_FILE": str(tmp_path / "missing")}, expect=2)
    assert "cannot read" in result.stderr


class Answer(http.server.BaseHTTPRequestHandler):
    status = 200
    seen: list[str] = []

    def do_GET(self):  # noqa: N802
        Answer.seen.append(self.path)
        self.send_response(Answer.status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def serve_answers(status):
    Answer.status, Answer.seen = status, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("status,expect", [(200, 0), (503, 1)])
def test_health_against_a_stand_in(fake, status, expect):
    server = serve_answers(status)
    try:
        port = server.server_address[1]
        _, result = fake("health", env={"KILN_SERVER__BIND": f"0.0.0.0:{port}"}, expect=expect)
        _, result = fake("health", "/ready", env={"KILN_SERVER__BIND": f"127.0.0.1:{port}"}, expect=expect)
        assert Answer.seen == ["/health", "/ready"]
    finally:
        server.shutdown()


def test_health_when_nothing_listens(fake):
    _, result = fake("health", env={"KILN_SERVER__BIND": f"0.0.0.0:{free_port()}"}, expect=1)
    assert "cannot connect" in result.stderr


def test_the_real_binary_as_the_image_runs_it(tmp_path):
    """The image's environment and entrypoint with the real kiln: it migrates when asked,
    serves, answers the HEALTHCHECK and the readiness check, and stops on SIGTERM with
    status 0."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "kiln").symlink_to(kiln_bin())
    port = free_port()
    env = image_env()
    env.update(
        {
            "PATH": f"{bindir}:{os.environ['PATH']}",
            "HOME": str(tmp_path),
            "KILN_SERVER__BIND": f"127.0.0.1:{port}",
            "KILN_SERVER__DATA_DIR": str(tmp_path / "data"),
            "KILN_MIGRATE": "1",
            "KILN_ADMIN__USERNAME": "admin",
            "KILN_ADMIN__PASSWORD_FILE": str(tmp_path / "pw"),
            "KILN_AUTH__MODE": "tokens",
        }
    )
    (tmp_path / "pw").write_text("a long password 42\n")
    log = open(tmp_path / "kiln.log", "w")
    proc = subprocess.Popen(["bash", ENTRYPOINT], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while run(["bash", ENTRYPOINT, "health"], env=env).returncode != 0:
            assert proc.poll() is None, (tmp_path / "kiln.log").read_text()
            assert time.monotonic() < deadline, "kiln did not answer /health in 30 s"
            time.sleep(0.2)
        while run(["bash", ENTRYPOINT, "health", "/ready"], env=env).returncode != 0:
            assert time.monotonic() < deadline, "kiln did not become ready in 30 s"
            time.sleep(0.2)
        # exec: the shell has become kiln, so SIGTERM reaches kiln itself.
        assert os.readlink(f"/proc/{proc.pid}/exe") == os.path.realpath(kiln_bin())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / "kiln.log").read_text()
    assert "database is up to date" in text  # kiln migrate ran first
    assert (tmp_path / "data" / "kiln.db").exists()
