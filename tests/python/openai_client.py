"""OpenAI's own Python client, unchanged, against kiln's OpenAI-compatible face.

Run by tests/api/openai_python.rs with the interpreter of tests/python/.venv (made by
`scripts/deps.sh --test`), which passes where kiln listens and which models to ask:

    KILN_BASE_URL   kiln's base URL, e.g. http://127.0.0.1:PORT (the client gets `/v1`)
    KILN_MODELS     comma-separated image models to generate with, one after the other

For each model it asks `client.images.generate` for an image as a URL and as base64,
downloads the URL, decodes the base64, and checks that both are PNG, JPEG or WebP
files; it lists the models and checks the error of an unknown one. It prints one line
per check and exits non-zero at the first failure.
"""

from __future__ import annotations

import base64
import os
import sys
import urllib.request

import openai

MAGIC = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
}


def image_kind(data: bytes) -> str | None:
    for magic, kind in MAGIC.items():
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def check(condition: bool, what: str) -> None:
    if not condition:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def main() -> None:
    base = os.environ["KILN_BASE_URL"].rstrip("/")
    models = [m for m in os.environ["KILN_MODELS"].split(",") if m]
    # The key is accepted and ignored by kiln; the client insists on one.
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-ignored-by-kiln", max_retries=0, timeout=120)
    print(f"openai {openai.__version__} against {base}", flush=True)

    listed = [m.id for m in client.models.list()]
    for model in models:
        check(model in listed, f"GET /v1/models lists {model} ({listed})")

    for model in models:
        by_url = client.images.generate(model=model, prompt="a red vase on a table", response_format="url")
        check(by_url.created > 0 and len(by_url.data) == 1, f"{model}: one image by url")
        url = by_url.data[0].url or ""
        check(url.startswith(base + "/files/"), f"{model}: the url is kiln's own ({url})")
        with urllib.request.urlopen(url, timeout=30) as response:
            downloaded = response.read()
        check(image_kind(downloaded) is not None, f"{model}: the url gives an image ({len(downloaded)} bytes)")

        by_b64 = client.images.generate(model=model, prompt="a blue mug", response_format="b64_json")
        check(len(by_b64.data) == 1 and by_b64.data[0].url is None, f"{model}: one image as base64")
        decoded = base64.b64decode(by_b64.data[0].b64_json or "", validate=True)
        check(image_kind(decoded) is not None, f"{model}: the base64 decodes to an image ({len(decoded)} bytes)")

    try:
        client.images.generate(model="no-such-model", prompt="anything")
    except openai.NotFoundError as err:
        body = err.body if isinstance(err.body, dict) else {}
        check(body.get("code") == "model_not_found", f"an unknown model is NotFoundError model_not_found ({body})")
    else:
        check(False, "an unknown model is refused")
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
