#!/usr/bin/env bash
# Set up a fresh machine for autodeploy's demo and tests: system packages, then the virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"

missing=()
while read -r package; do
  [[ -z "$package" || "$package" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done < scripts/system-packages.txt
if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null; then
    echo "bootstrap: missing system packages (${missing[*]}) and no apt-get to install them" >&2
    exit 1
  fi
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "bootstrap: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=$(command -v python3.11 || command -v python3)
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: autodeploy needs Python >= 3.11; $python is $("$python" --version)" >&2
  exit 1
fi
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e ".[test]"
echo "bootstrap: ready ($venv)"
