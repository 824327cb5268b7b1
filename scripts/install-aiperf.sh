#!/usr/bin/env bash
# Install aiperf (NVIDIA's benchmark client; benchmark.client: aiperf) into its own virtual environment,
# pinned to the release automation/bench/aiperf.py reads: its command line and export format change
# between releases. Its own venv because its dependencies (~1 GB) are not autodeploy's.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-aiperf}"
version="${AIPERF_VERSION:-0.13.0}"
stamp="$venv/.aiperf-$version"
[[ -f "$stamp" ]] && exit 0
python=$(command -v python3.11 || command -v python3)
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
# Keep pip's own exit status (pipefail); drop the noise of unreachable extra index locations.
pip() {
  "$venv/bin/python" -m pip "$@" 2>&1 | { grep -v -e "^WARNING: Location" || true; }
}
pip install --quiet --upgrade pip
pip install --quiet "aiperf==$version"
installed=$("$venv/bin/aiperf" --version)
[[ "$installed" == "$version" ]] || { echo "install-aiperf: $venv/bin/aiperf is $installed, not $version" >&2; exit 1; }
touch "$stamp"
echo "install-aiperf: aiperf $version ready in $venv"
