"""The linters: actionlint (the workflow, with shellcheck on its `run:` steps), hadolint
(both Dockerfiles), shellcheck (the scripts), yamllint (every YAML file of the
deployment)."""

from __future__ import annotations

import re

from conftest import DEPLOY, ROOT, run, tool

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
DOCKERFILES = [ROOT / "Dockerfile", ROOT / "worker" / "Dockerfile"]
SCRIPTS = [DEPLOY / "docker-entrypoint.sh", ROOT / "scripts" / "deploy-check.sh", ROOT / "scripts" / "deps.sh"]
YAML = [DEPLOY / "compose.yaml", *sorted((DEPLOY / "k8s").glob("*.yaml")), *WORKFLOWS]


def test_actionlint():
    tool("shellcheck")  # actionlint checks `run:` scripts with it when it is on PATH
    assert WORKFLOWS, "no workflow in .github/workflows"
    result = run([tool("actionlint"), "-no-color", *map(str, WORKFLOWS)], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actions_are_pinned_to_commits():
    """Every `uses:` names a full commit and says its version beside it."""
    for workflow in WORKFLOWS:
        for line in workflow.read_text().splitlines():
            m = re.search(r"uses:\s*(\S+)(.*)$", line)
            if not m:
                continue
            ref = m.group(1)
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), f"{workflow.name}: {ref} is not pinned to a commit"
            assert re.search(r"#\s*v\d+\.\d+\.\d+", m.group(2)), f"{workflow.name}: {ref} has no version comment"


def test_hadolint():
    result = run([tool("hadolint"), "--no-color", "--failure-threshold", "info", *map(str, DOCKERFILES)], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck():
    result = run([tool("shellcheck"), "--severity", "info", *map(str, SCRIPTS)], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint(tmp_path):
    config = tmp_path / "yamllint.yaml"
    config.write_text(
        "extends: default\n"
        "rules:\n"
        "  line-length: {max: 200}\n"
        "  document-start: disable\n"
        "  truthy: {allowed-values: ['true', 'false', 'on']}\n"
        "  comments: {min-spaces-from-content: 1}\n"
    )
    result = run([tool("yamllint"), "-f", "parsable", "-c", str(config), *map(str, YAML)], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
