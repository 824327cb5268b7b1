"""The version table: which Dynamo releases are supported, and each release's command-line facts."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import yaml

from automation.config.schema import VERSIONS_FILE
from automation.errors import InputError

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:\.dev(\d+))?(?:rc(\d+))?(?:\.post(\d+))?$")


def version_key(version: str) -> tuple[int, ...]:
    """Sortable key of a version like 1.2.0rc6.post1 (dev < rc < final < .postN).

    Raises:
        InputError: the text is not such a version.
    """
    match = _VERSION.match(str(version).strip())
    if not match:
        raise InputError(f"'{version}' is not a version like 1.0.0rc6 or 1.3.0", hint="fix the version")
    major, minor, patch, dev, rc, post = match.groups()
    # A final release sorts after its release candidates, which sort after its development builds.
    if dev is not None:
        stage = (0, int(dev))
    elif rc is not None:
        stage = (1, int(rc))
    else:
        stage = (2, 0)
    return (int(major), int(minor), int(patch), *stage, int(post or 0))


def is_version(text: str) -> bool:
    return bool(_VERSION.match(str(text).strip()))


@functools.cache
def versions_data() -> dict[str, Any]:
    """automation/data/versions.yaml, parsed once."""
    data: dict[str, Any] = yaml.safe_load(VERSIONS_FILE.read_text())
    return data


def in_range(version: str, entry: dict[str, Any]) -> bool:
    """Whether version lies in a row's [from, until) (no `until`: open above)."""
    key = version_key(version)
    if key < version_key(str(entry["from"])):
        return False
    return "until" not in entry or key < version_key(str(entry["until"]))


def supported_releases() -> dict[str, str]:
    """Supported Dynamo release -> the TensorRT-LLM release it ships, oldest first."""
    table = {str(k): str(v) for k, v in versions_data()["dynamo_releases"].items()}
    return dict(sorted(table.items(), key=lambda item: version_key(item[0])))


def newest_release() -> str:
    return list(supported_releases())[-1]


def wheel_of(release: str) -> str:
    """The ai-dynamo wheel version whose parsers a release's command lines are checked against."""
    return str(versions_data().get("dynamo_wheels", {}).get(release, release))


def nearest_release(version: str) -> str:
    """The supported release closest below version (the oldest when version is older than all)."""
    releases = list(supported_releases())
    key = version_key(version)
    below = [r for r in releases if version_key(r) <= key]
    return below[-1] if below else releases[0]


def refusal(version: str) -> str | None:
    """Why a Dynamo version is not supported, in one line naming the nearest supported release; None if it is.

    Supported means: in the table, every command line autodeploy writes for it checked against that
    release's own parsers (tests/conformance).
    """
    releases = supported_releases()
    if version in releases:
        return None
    oldest, newest = next(iter(releases)), newest_release()
    if not is_version(version):
        return f"'{version}' is not a Dynamo release; use one like {newest} (the newest supported)"
    if version_key(version) < version_key(oldest):
        return f"Dynamo {version} predates {oldest}, the oldest release autodeploy supports; use {oldest} or later"
    if version_key(version) > version_key(newest):
        return (
            f"Dynamo {version} is newer than {newest}, the newest release autodeploy's command lines are "
            f"checked against; use {newest}"
        )
    what = "a development build" if ".dev" in version else "a release candidate" if "rc" in version else None
    return (
        f"Dynamo {version} is {what or 'not a published release'}; "
        f"use {nearest_release(version)}, the nearest supported release"
    )


@dataclass(frozen=True)
class DynamoRelease:
    """The command-line and environment facts of one Dynamo release (versions.yaml's dynamo_facts)."""

    version: str
    model_flag: str
    strategy_flag: tuple[str, ...]
    next_endpoint_flag: str | None
    components: dict[str, str]
    kv_events_flag: str
    kv_block_size_flag: str
    router_block_size_flag: str
    attention_dp_flag: str | None
    system_enabled_env: bool
    health_status_env: bool
    # Environment variables that make a process bind and advertise on one address (else Dynamo picks
    # the first interface's address, which may not be the one the other nodes reach).
    bind_address_env: tuple[str, ...]
    image_user: str


def _fact(version: str, name: str) -> Any:
    rows = versions_data()["dynamo_facts"][name]
    for row in rows:
        if in_range(version, row):
            return row["value"]
    raise InputError(
        f"versions.yaml: no '{name}' fact covers Dynamo {version}", hint="add a row for it to versions.yaml"
    )


def dynamo_release(version: str) -> DynamoRelease:
    """The facts of a supported Dynamo release.

    Raises:
        InputError: the release is not supported (the one-line reason names the nearest supported one).
    """
    reason = refusal(version)
    if reason is not None:
        raise InputError(f"dynamo.version: {reason}", hint="set dynamo.version to a supported release")
    facts = versions_data()["dynamo_facts"]
    bind = tuple(str(row["value"]) for row in facts["bind_address_env"] if in_range(version, row))
    return DynamoRelease(
        version=version,
        model_flag=str(_fact(version, "model_flag")),
        strategy_flag=tuple(str(x) for x in _fact(version, "strategy_flag")),
        next_endpoint_flag=_fact(version, "next_endpoint_flag"),
        components={str(k): str(v) for k, v in _fact(version, "components").items()},
        kv_events_flag=str(_fact(version, "kv_events_flag")),
        kv_block_size_flag=str(_fact(version, "kv_block_size_flag")),
        router_block_size_flag=str(_fact(version, "router_block_size_flag")),
        attention_dp_flag=_fact(version, "attention_dp_flag"),
        system_enabled_env=bool(_fact(version, "system_enabled_env")),
        health_status_env=bool(_fact(version, "health_status_env")),
        bind_address_env=bind,
        image_user=str(_fact(version, "image_user")),
    )
