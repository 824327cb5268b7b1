#!/usr/bin/env bash
# Builds the image the way Dynamo 0.x's container/build.sh does (the flags autodeploy passes), from
# container/Dockerfile.trtllm: --framework (upper-cased, as build.sh does), --tensorrtllm-pip-wheel,
# --tag, --target, --build-arg, --no-cache.
set -euo pipefail
cd "$(dirname "$0")/.."
framework="" wheel="" tag="" target="" args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --framework) framework=${2^^}; shift ;;
    --tensorrtllm-pip-wheel) wheel=$2; shift ;;
    --tag) tag=$2; shift ;;
    --target) target=$2; shift ;;
    --build-arg) args+=(--build-arg "$2"); shift ;;
    --no-cache) args+=(--no-cache) ;;
    *) echo "ERROR: unknown option $1" >&2; exit 1 ;;
  esac
  shift
done
case $framework in
  TRTLLM|TENSORRTLLM) ;;
  *) echo "ERROR: Framework '$framework' is not supported" >&2; exit 1 ;;
esac
[[ -n $tag ]] || tag="dynamo:latest-${framework,,}"
python3 container/render.py --framework=trtllm --target="${target:-runtime}" --cuda-version=13.1 --output-short-filename > /dev/null
echo "docker build -f container/rendered.Dockerfile --tag $tag ${args[*]} --build-arg TENSORRTLLM_PIP_WHEEL=$wheel ."
docker build -f container/rendered.Dockerfile --tag "$tag" "${args[@]}" --build-arg "TENSORRTLLM_PIP_WHEEL=$wheel" .
