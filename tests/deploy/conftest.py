"""Shared helpers of the deployment checks (`make deploy-check`, scripts/deploy-check.sh).

Nothing here uses Docker: the files are linted, validated against their schemas, and
their moving parts (the entrypoint, nginx.conf, garage-init.py, kiln's configuration) are
run on this machine.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# Settings that issue 12's other work (PostgreSQL, S3 and COS storage) adds to kiln and
# that the deployment files already use. A key in this set that docs/configuration.md
# does not document yet is accepted by test_config_keys and left out of the runs of
# `kiln config check`; once documented it is checked like any other.
PENDING = {
    "storage.bucket",
    "storage.endpoint",
    "storage.region",
    "storage.access_key_id",
    "storage.secret_access_key",
    "storage.session_token",
    "storage.virtual_host_style",
    "storage.serve",
    "storage.public_base_url",
    "storage.presign_ttl",
}

KEY_VAR = re.compile(r"\bKILN_([A-Z0-9_]+?)__([A-Z0-9_]+)\b")


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not on PATH; run scripts/deploy-check.sh (make deploy-check)"
    return path


def run(args, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 60)
    return subprocess.run(args, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sealing_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def kiln_bin() -> str:
    path = os.environ.get("KILN_BIN", str(ROOT / "target" / "debug" / "kiln"))
    assert os.access(path, os.X_OK), f"{path} is missing: cargo build --locked --bin kiln"
    return path


def documented_keys() -> set[str]:
    """The `section.key` names of docs/configuration.md's tables."""
    keys = set()
    section = None
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        heading = re.match(r"^## `\[(\w+)\]`", line)
        if heading:
            section = heading.group(1)
            continue
        if line.startswith("## "):
            section = None
        row = re.match(r"^\| `(\w+)` \|", line)
        if section and row:
            keys.add(f"{section}.{row.group(1)}")
    return keys


def config_key(var: str) -> str | None:
    m = KEY_VAR.fullmatch(var)
    return f"{m.group(1).lower()}.{m.group(2).lower()}" if m else None


def postgres_supported() -> bool:
    """Whether this build takes `postgres://` database URLs, as documented."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    section = text.split("## `[database]`", 1)[1].split("\n## ", 1)[0]
    return "postgres" in section.lower()


def checkable_env(env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """`env` without what this build cannot check yet (PENDING keys not documented, a
    PostgreSQL URL before PostgreSQL is supported): the rest, and what was left out."""
    documented = documented_keys()
    kept, left = {}, []
    for name, value in env.items():
        key = config_key(name)
        if key in PENDING and key not in documented:
            left.append(name)
        elif name == "KILN_STORAGE__TYPE" and "storage.bucket" not in documented and value != "fs":
            left.append(name)
        elif name == "KILN_DATABASE__URL" and value.startswith("postgres") and not postgres_supported():
            left.append(name)
        else:
            kept[name] = value
    return kept, left


def config_check(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`kiln config check` with exactly `env` (plus PATH and a data dir in tmp_path)."""
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    clean.update(env)
    clean.setdefault("KILN_SERVER__DATA_DIR", str(tmp_path / "data"))
    return run([kiln_bin(), "config", "check"], env=clean, cwd=tmp_path)


def compose(*args: str, env_file: Path, profiles=()) -> subprocess.CompletedProcess:
    cmd = [tool("docker-compose"), "-f", str(DEPLOY / "compose.yaml"), "--env-file", str(env_file)]
    for profile in profiles:
        cmd += ["--profile", profile]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    return run(cmd + list(args), env=env)


def env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        m = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            values[m.group(1)] = m.group(2)
    return values


def filled_env(tmp_path: Path, **extra: str) -> tuple[Path, dict[str, str]]:
    """deploy/.env.example with every empty value filled in, as a user would."""
    fill = {
        "KILN_SEALING_KEY": sealing_key(),
        "KILN_ADMIN_PASSWORD": "a long password 42",
        "POSTGRES_PASSWORD": secrets.token_hex(12),
        "S3_ACCESS_KEY_ID": "GK" + secrets.token_hex(12),
        "S3_SECRET_ACCESS_KEY": secrets.token_hex(32),
        "GARAGE_RPC_SECRET": secrets.token_hex(32),
        "GARAGE_ADMIN_TOKEN": base64.b64encode(secrets.token_bytes(32)).decode(),
        "WORKER_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    values = env_example()
    for name, value in values.items():
        if value == "" and name in fill:
            values[name] = fill[name]
    values.update(extra)
    path = tmp_path / "compose.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path, values


@pytest.fixture
def rendered(tmp_path):
    """`docker compose config` of deploy/compose.yaml with a filled-in .env, as JSON."""
    env_file, values = filled_env(tmp_path)
    result = compose("config", "--format", "json", env_file=env_file)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), values
