#!/usr/bin/env python3
"""Renders container/rendered.Dockerfile, taking the arguments Dynamo 1.x's container/render.py takes."""

import argparse
from pathlib import Path

DOCKERFILE = """\
# Rendered by container/render.py --framework={framework} --target={target} --cuda-version={cuda}
ARG BASE_IMAGE=autodeploy-rehearsal/dynamo-base:local
FROM ${{BASE_IMAGE}}
# What a real 1.x build pins (the upstream TensorRT-LLM release image, or its pip wheel); kept as labels.
ARG RUNTIME_IMAGE_TAG=
ARG TENSORRTLLM_PIP_WHEEL=
ARG FAIL=
LABEL org.opencontainers.image.title="dynamo {framework} {target} (rehearsal)"
COPY container/launch_message /opt/dynamo/launch_message
RUN test -z "$FAIL" || {{ echo "the build was told to fail (FAIL=$FAIL)"; exit 3; }}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--framework", default="vllm", choices=["dynamo", "vllm", "sglang", "trtllm"])
    parser.add_argument("--target", default="runtime")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--platform", default="linux/amd64")
    parser.add_argument("--cuda-version", default="12.9", choices=["12.9", "13.0", "13.1"])
    parser.add_argument("--make-efa", action="store_true")
    parser.add_argument("--output-short-filename", action="store_true")
    parser.add_argument("--show-result", action="store_true")
    args = parser.parse_args()
    if args.framework == "trtllm" and args.cuda_version != "13.1":
        parser.error("trtllm needs --cuda-version 13.1")
    text = DOCKERFILE.format(framework=args.framework, target=args.target, cuda=args.cuda_version)
    name = (
        "rendered.Dockerfile"
        if args.output_short_filename
        else f"{args.framework}-{args.target}-rendered.Dockerfile"
    )
    out = Path(__file__).parent / name
    out.write_text(text)
    print(f"wrote {out}")
    if args.show_result:
        print(text)


if __name__ == "__main__":
    main()
