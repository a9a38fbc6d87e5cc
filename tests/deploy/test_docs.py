"""docs/deploy.md's links to files and headings of this repository resolve, and what it
says of the deployment files matches them."""

from __future__ import annotations

import re

from conftest import DEPLOY, ROOT

DOC = ROOT / "docs" / "deploy.md"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", path.read_text(), re.M)}


def test_links_resolve():
    for source in (DOC, ROOT / "README.md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", source.read_text()):
            if re.match(r"https?://", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (source.parent / path).resolve() if path else source
            assert resolved.exists(), f"{source.name}: {target} does not exist"
            if anchor:
                assert anchor in anchors(resolved), f"{source.name}: no heading #{anchor} in {path or source.name}"


def test_the_files_it_describes_exist():
    text = DOC.read_text()
    for name in ["compose.yaml", "nginx.conf", "garage.toml", "garage-init.py", ".env.example", "docker-entrypoint.sh"]:
        assert (DEPLOY / name).is_file() and name in text
    for manifest in (DEPLOY / "k8s").glob("*.yaml"):
        if manifest.name != "kustomization.yaml":
            assert f"`{manifest.name}`" in text, f"docs/deploy.md does not describe {manifest.name}"
