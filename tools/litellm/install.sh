#!/usr/bin/env bash
# Installs LiteLLM's proxy into tools/litellm/.venv for the side-by-side benchmark
# (`KILN_LITELLM=tools/litellm/.venv/bin/litellm cargo bench --bench cloud -- openai`).
# Not part of `make test`.
#
# `litellm[proxy]` pins `litellm-proxy`, `litellm-proxy-extras` and `litellm-enterprise`
# releases the package index here does not carry, so the proxy's own dependencies are
# installed from requirements.txt instead; the proxy code ships in `litellm` itself.
# Never 1.107.0: a compromised release.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
if [ ! -x "$venv/bin/litellm" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet -r "$here/requirements.txt"
fi
"$venv/bin/python" -c 'import litellm.proxy.proxy_server' >/dev/null 2>&1 || {
    echo "LiteLLM's proxy does not import; see $here/requirements.txt" >&2
    exit 1
}
echo "$venv/bin/litellm"
