"""The Dockerfiles' content, beyond hadolint: what the image promises (docs/deploy.md),
and that its environment is a valid kiln configuration for the real binary."""

from __future__ import annotations

import re
import shlex

from conftest import DEPLOY, ROOT, config_check, run

DOCKERFILE = ROOT / "Dockerfile"


def instructions(path):
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def stages(path):
    result, name = {}, None
    for word, rest in instructions(path):
        if word == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            name = m.group(2) or m.group(1)
            result[name] = [("FROM", m.group(1))]
        else:
            result[name].append((word, rest))
    return result


def image_env(path=DOCKERFILE) -> dict[str, str]:
    """The final stage's ENV, as the container sees it."""
    final = list(stages(path).values())[-1]
    env = {}
    for word, rest in final:
        if word == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def test_multi_stage_build():
    s = stages(DOCKERFILE)
    assert list(s) == ["web", "build", "runtime"]
    web = " ".join(rest for _, rest in s["web"])
    # As scripts/web.sh build does.
    assert "npm ci" in web and "npm run build" in web
    build = s["build"]
    assert ("COPY", "--from=web /src/web/dist web/dist") in build
    assert any("cargo build --release --locked --bin kiln" in rest for word, rest in build if word == "RUN")
    assert s["runtime"][0] == ("FROM", "debian:bookworm-slim")


def test_runtime_image():
    runtime = dict(stages(DOCKERFILE)["runtime"])
    user = runtime["USER"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER {user} is not a numeric non-root user"
    assert runtime["EXPOSE"] == "8080"
    assert runtime["VOLUME"] == '["/var/lib/kiln"]'
    assert runtime["ENTRYPOINT"] == '["/usr/local/bin/docker-entrypoint.sh"]'
    assert runtime["CMD"] == '["serve"]'
    assert runtime["HEALTHCHECK"].endswith('CMD ["/usr/local/bin/docker-entrypoint.sh", "health"]')
    assert "--start-period=" in runtime["HEALTHCHECK"]
    env = image_env()
    assert env["KILN_SERVER__BIND"] == "0.0.0.0:8080"
    assert env["KILN_SERVER__DATA_DIR"] == "/var/lib/kiln"
    # The Kubernetes manifest runs as the image's user.
    uid = user.split(":")[0]
    assert f"runAsUser: {uid}" in (DEPLOY / "k8s" / "deployment.yaml").read_text()


def test_dockerignore_keeps_the_context_small_and_clean():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    for must in ["target", "**/node_modules", "**/.venv", "web/dist", "data", "logs", ".git", "deploy/.env"]:
        assert must in ignored, f".dockerignore lacks {must}"


def test_image_environment_is_a_valid_configuration(tmp_path):
    """The image's ENV, as kiln reads it: exactly what a bare `docker run` gets."""
    env = image_env()
    env["KILN_SERVER__DATA_DIR"] = str(tmp_path / "data")
    result = config_check(env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'bind = "0.0.0.0:8080"' in result.stdout
    assert 'dir = ""' in result.stdout  # no log file in a container: stderr only


def test_worker_image():
    path = ROOT / "worker" / "Dockerfile"
    s = stages(path)
    final = dict(list(s.values())[-1])
    assert final["FROM"].startswith("nvidia/cuda:12.4")
    assert re.fullmatch(r"[1-9]\d*", final["USER"])
    assert final["CMD"] == '["python", "-m", "kiln_worker"]'
    assert "/health" in final["HEALTHCHECK"]
    assert final["EXPOSE"] == "8000"
    # Every KILN_ variable it sets is one the worker reads (worker/README.md's table).
    readme = (ROOT / "worker" / "README.md").read_text()
    for name in image_env(path):
        if name.startswith("KILN_"):
            assert f"| `{name}` |" in readme, f"{name} is not a worker setting"
    ignored = (ROOT / "worker" / ".dockerignore").read_text()
    assert ".venv/" in ignored


def dockerignore_regexes():
    """.dockerignore's patterns as Docker reads them: relative to the context, `**` any
    number of directories, a pattern that matches a directory excludes what is in it."""
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions are not handled here"
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif line[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif line[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(line[i]), i + 1
        out.append(re.compile(regex + "(?:/.*)?"))
    return out


def test_build_context_has_what_the_build_needs(tmp_path):
    """The context `docker build .` sends from a checkout (its files git does not ignore, less
    .dockerignore's), copied: it has what each stage copies, and cargo resolves the
    workspace in it with --locked."""
    import shutil
    import subprocess

    patterns = dockerignore_regexes()
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True).stdout
    context = tmp_path / "context"
    kept = 0
    for name in tracked.decode().split("\0"):
        if not name or any(p.fullmatch(name) for p in patterns):
            continue
        if not (ROOT / name).exists():  # deleted in the work tree, not committed yet
            continue
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
        kept += 1
    assert kept > 100
    for needed in ["Cargo.toml", "Cargo.lock", "build.rs", "src/main.rs", "web/package.json",
                   "web/package-lock.json", "web/index.html", "deploy/docker-entrypoint.sh"]:
        assert (context / needed).is_file(), f"{needed} is not in the build context"
    assert not (context / "docs" / "screenshots").exists()
    result = run(["cargo", "metadata", "--locked", "--format-version", "1"], cwd=context, timeout=120)
    assert result.returncode == 0, result.stderr
