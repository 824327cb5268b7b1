#!/usr/bin/env bash
# Install the rehearsal's Dynamo (frontend + mocker) into its own virtual environment.
# ai-dynamo must go in with --no-deps: its `aisimulate` dependency downloads from an index that
# cannot be reached, so its other requirements are listed here (ai-dynamo 1.6.1's, minus aisimulate).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-dynamo}"
version="${DYNAMO_VERSION:-1.6.1}"
stamp="$venv/.dynamo-$version"
[[ -f "$stamp" ]] && exit 0
python=$(command -v python3.11 || command -v python3)
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# pip's complaint about the missing aisimulate is expected; keep pip's own exit status (pipefail).
pip() {
  "$venv/bin/python" -m pip "$@" 2>&1 |
    { grep -v -e "^WARNING: Location" -e "aisimulate" -e "dependency resolver does not" || true; }
}
pip install --quiet --no-deps "ai-dynamo==$version" "ai-dynamo-runtime==$version"
pip install --quiet "aiohttp>=3.14.3" certifi "kubernetes>=32.0.1,<33" msgspec \
  prometheus-client pyzmq redis tqdm transformers typing-extensions zstandard "pydantic>=2.10.6,<=2.13.5" uvloop
"$venv/bin/python" -c "import dynamo.frontend, dynamo.mocker"
touch "$stamp"
echo "install-dynamo: Dynamo $version ready in $venv"
