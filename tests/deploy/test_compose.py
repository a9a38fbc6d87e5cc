"""deploy/compose.yaml: validated by Docker Compose itself (`docker compose config`, no
daemon needed) and against the Compose Specification's JSON schema; its variables
against deploy/.env.example; its kiln configuration against the real binary."""

from __future__ import annotations

import json
import re

from conftest import (
    DEPLOY,
    checkable_env,
    compose,
    config_check,
    env_example,
    filled_env,
    run,
    tool,
)

COMPOSE = DEPLOY / "compose.yaml"
LONG_RUNNING = {"proxy", "kiln-1", "kiln-2", "postgres", "garage", "worker"}


def test_compose_config_accepts_the_filled_in_example(rendered):
    project, _ = rendered
    assert set(project["services"]) == {"proxy", "kiln-1", "kiln-2", "postgres", "garage", "garage-init"}


def test_the_gpu_profile_adds_the_worker_with_a_gpu(tmp_path):
    env_file, values = filled_env(tmp_path)
    result = compose("config", "--format", "json", env_file=env_file, profiles=["gpu"])
    assert result.returncode == 0, result.stderr
    worker = json.loads(result.stdout)["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["environment"]["KILN_WORKER_SECRET"] == values["WORKER_SECRET"]
    assert worker["build"]["dockerfile"] == "Dockerfile" and worker["build"]["context"].endswith("/worker")


def test_every_required_secret_is_refused_when_missing(tmp_path):
    """Unfilled, the example names each secret a user must set, and nothing starts."""
    result = compose("config", "-q", env_file=DEPLOY / ".env.example")
    assert result.returncode != 0
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    assert required >= {"KILN_SEALING_KEY", "KILN_ADMIN_PASSWORD", "POSTGRES_PASSWORD", "S3_ACCESS_KEY_ID",
                        "S3_SECRET_ACCESS_KEY", "GARAGE_RPC_SECRET", "GARAGE_ADMIN_TOKEN", "WORKER_SECRET"}
    for name in required:
        assert f"required variable {name} is missing a value" in result.stderr
        assert env_example()[name] == "", f"{name} has a value in .env.example"


def test_compose_specification_schema():
    result = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_variables_match_env_example():
    text = COMPOSE.read_text()
    used = set(re.findall(r"\$\{(\w+)", text))
    # Variables passed through when set (a bare `NAME:` in an environment block).
    passed = set(re.findall(r"^\s+(KILN_\w+):\s*$", text, re.M))
    example = (DEPLOY / ".env.example").read_text()
    defined = set(re.findall(r"^([A-Z]\w*)=", example, re.M))
    commented = set(re.findall(r"^# ([A-Z]\w*)=", example, re.M))
    assert used - defined == set(), "used in compose.yaml, missing from .env.example"
    assert passed - commented - defined == set(), "passed through, missing from .env.example"
    # Compose's own variable, read from .env.
    assert defined - used - {"COMPOSE_PROFILES"} == set(), "in .env.example, used nowhere"


def test_replicas_are_the_same_but_for_their_name(rendered):
    project, values = rendered
    one, two = project["services"]["kiln-1"], project["services"]["kiln-2"]
    assert {k: v for k, v in one.items() if k != "hostname"} == {k: v for k, v in two.items() if k != "hostname"}
    env = one["environment"]
    # Shared by every replica: the sealing key, the database, the bucket.
    assert env["KILN_SERVER__SEALING_KEY"] == values["KILN_SEALING_KEY"]
    assert env["KILN_DATABASE__URL"] == f"postgres://kiln:{values['POSTGRES_PASSWORD']}@postgres:5432/kiln"
    assert env["KILN_STORAGE__ENDPOINT"] == "http://garage:3900"
    assert env["KILN_STORAGE__ACCESS_KEY_ID"] == project["services"]["garage-init"]["environment"]["S3_ACCESS_KEY_ID"]
    # Longer than kiln's shutdown_grace (30 s), so that `docker compose stop` does not cut it.
    assert one["stop_grace_period"] == "40s"
    assert one["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert one["depends_on"]["garage-init"]["condition"] == "service_completed_successfully"


def test_services_have_healthchecks_and_the_proxy_waits(rendered):
    project, _ = rendered
    for name, service in project["services"].items():
        if name in LONG_RUNNING:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    proxy = project["services"]["proxy"]
    for replica in ("kiln-1", "kiln-2"):
        assert proxy["depends_on"][replica] == {"condition": "service_healthy", "restart": True, "required": True}


def test_nginx_upstream_lists_the_replicas(rendered):
    project, _ = rendered
    upstream = re.search(r"upstream kiln \{(.*?)\}", (DEPLOY / "nginx.conf").read_text(), re.S).group(1)
    servers = set(re.findall(r"server (\S+):8080", upstream))
    assert servers == {name for name in project["services"] if name.startswith("kiln-")}


def test_kiln_configuration_is_valid(rendered, tmp_path):
    """The channels file compose writes and the replicas' environment, checked by
    `kiln config check` (the keys this build does not have yet left out, and named)."""
    project, values = rendered
    content = project["configs"]["kiln_toml"]["content"]
    (tmp_path / "kiln.toml").write_text(content)
    env = {k: v for k, v in project["services"]["kiln-1"]["environment"].items() if v is not None}
    env["KILN_CONFIG"] = str(tmp_path / "kiln.toml")
    env.pop("TZ")
    checked, left = checkable_env(env)
    if left:
        print(f"not checked by this build of kiln (issue 12 in progress): {', '.join(sorted(left))}")
    result = config_check(checked, tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'name = "gpu"' in result.stdout and "enabled = false" in result.stdout
    assert values["WORKER_SECRET"] not in result.stdout  # masked
    assert 'callback_url = "http://proxy/api/v1/worker-callbacks"' in result.stdout


def test_gpu_channel_turns_on(tmp_path):
    env_file, _ = filled_env(tmp_path, GPU_WORKER_ENABLED="true")
    result = compose("config", "--format", "json", env_file=env_file, profiles=["gpu"])
    assert result.returncode == 0, result.stderr
    content = json.loads(result.stdout)["configs"]["kiln_toml"]["content"]
    assert "enabled = true" in content


def test_optional_settings_pass_through_only_when_set(tmp_path, rendered):
    """KILN_STORAGE__PUBLIC_BASE_URL reaches kiln when deploy/.env sets it, and is absent
    (not empty, which kiln would refuse as a URL) when it does not."""
    project, _ = rendered
    assert project["services"]["kiln-1"]["environment"]["KILN_STORAGE__PUBLIC_BASE_URL"] is None
    env_file, _ = filled_env(tmp_path, KILN_STORAGE__PUBLIC_BASE_URL="https://cdn.example.com/")
    result = compose("config", "--format", "json", env_file=env_file)
    assert result.returncode == 0, result.stderr
    env = json.loads(result.stdout)["services"]["kiln-2"]["environment"]
    assert env["KILN_STORAGE__PUBLIC_BASE_URL"] == "https://cdn.example.com/"
