"""The image build command of every supported Dynamo release, and where an image goes in a registry."""

from __future__ import annotations

import pytest

from automation.errors import InputError
from automation.image_build import build_recipe
from automation.image_transfer import registry_reference
from automation.versions import supported_releases


@pytest.mark.parametrize("release", list(supported_releases()))
def test_every_supported_release_has_a_build_command(release: str) -> None:
    trtllm = supported_releases()[release]
    recipe = build_recipe(release, trtllm, "dynamo:x", ["--no-cache"])
    words = [word for step in recipe.steps for word in step]
    assert "dynamo:x" in words and words.count("--no-cache") == 1
    assert any(trtllm in word for word in words)  # the TensorRT-LLM version is pinned, whichever way
    if release.startswith("0."):
        assert recipe.needs == "container/build.sh" and words[:2] == ["./container/build.sh", "--framework"]
        assert words[words.index("--target") + 1] == "runtime"  # build.sh's default target is dev
    else:
        assert recipe.needs == "container/render.py"
        assert recipe.steps[0][:2] == ("python3", "container/render.py")
        assert "--cuda-version=13.1" in recipe.steps[0]  # the only CUDA render.py accepts for trtllm
        assert recipe.steps[1][-1] == "." and "--no-cache" in recipe.steps[1][:-1]


def test_framework_spelling_follows_build_sh_of_the_release() -> None:
    assert "TENSORRTLLM" in build_recipe("0.4.0", "1.0.0rc4", "t", []).steps[0]
    assert "TRTLLM" in build_recipe("0.4.1", "1.0.0rc6", "t", []).steps[0]
    assert "TRTLLM" in build_recipe("0.9.1", "1.3.0rc3", "t", []).steps[0]


def test_trtllm_pin_switches_from_pip_wheel_to_release_image() -> None:
    old = build_recipe("1.1.1", "1.3.0rc11", "t", []).steps[1]
    assert "TENSORRTLLM_PIP_WHEEL=tensorrt-llm==1.3.0rc11" in old
    new = build_recipe("1.6.1", "1.3.0rc29", "t", []).steps[1]
    assert "RUNTIME_IMAGE_TAG=1.3.0rc29" in new and not any("PIP_WHEEL" in w for w in new)
    # 1.2.x: the checkout's container/context.yaml decides
    pip = build_recipe("1.2.1", "1.3.0rc14", "t", [], has=lambda file, text: text == "pip_wheel:")
    assert "TENSORRTLLM_PIP_WHEEL=tensorrt-llm==1.3.0rc14" in pip.steps[1]
    upstream = build_recipe("1.2.1", "1.3.0rc14", "t", [], has=lambda file, text: False)
    assert "RUNTIME_IMAGE_TAG=1.3.0rc14" in upstream.steps[1]


def test_a_release_before_the_table_is_refused() -> None:
    with pytest.raises(InputError, match="no build command is known"):
        build_recipe("0.3.2", "0.21.0", "t", [])


@pytest.mark.parametrize(
    ("registry", "image", "expected"),
    [
        ("10.0.0.1:5000", "dynamo:1.6.1-trtllm-1.3.0rc29", "10.0.0.1:5000/dynamo:1.6.1-trtllm-1.3.0rc29"),
        (
            "reg:5000/team",
            "nvcr.io/nvidia/ai-dynamo/tensorrtllm-runtime:1.6.1",
            "reg:5000/team/nvidia/ai-dynamo/tensorrtllm-runtime:1.6.1",
        ),
        ("reg:5000", "localhost:5001/x/y", "reg:5000/x/y:latest"),
        ("reg:5000/", "library/ubuntu:24.04", "reg:5000/library/ubuntu:24.04"),
    ],
)
def test_registry_reference(registry: str, image: str, expected: str) -> None:
    assert registry_reference(registry, image) == expected
