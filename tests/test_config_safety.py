"""Pipeline values that reach scripts, paths and versions: what load_pipeline accepts and refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from automation.cli import main
from automation.config import load_pipeline, validate_pipeline
from automation.errors import ConfigError
from tests.conftest import MINIMAL_PIPELINE


def _data(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(MINIMAL_PIPELINE)
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate_pipeline(data)
    return caught.value.problems


@pytest.mark.parametrize(
    "host", ["gpu-01.example.com", "localhost", "node1.", "10.0.0.1", "::1", "fe80::1%eth0", "H200-A"]
)
def test_hostnames_and_ip_literals_are_accepted(host: str) -> None:
    config = validate_pipeline(_data(cluster={"nodes": [{"host": host, "gpus": 8, "address": host}]}))
    assert config.cluster.nodes[0].address == host


@pytest.mark.parametrize(
    "host",
    ["a b", "-gpu", "gpu-", "a..b", "x" * 64, "$(id)", "a'b", "fe80::1%eth0;id", "1.2.3", "gpu_01", ""],
)
def test_hosts_that_are_not_names_or_addresses_are_refused(host: str) -> None:
    (problem,) = _problems(_data(cluster={"nodes": [{"host": host, "gpus": 8}]}))
    assert problem.startswith("pipeline: cluster.nodes[0].host: ")


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "n 0", "n\n0", ""])
def test_node_names_must_be_file_name_tokens(name: str) -> None:
    (problem,) = _problems(_data(cluster={"nodes": [{"host": "h1", "gpus": 8, "name": name}]}))
    assert "cluster.nodes[0].name" in problem and "\n" not in problem


def test_a_given_name_may_not_repeat_a_default_one() -> None:
    nodes = [{"host": "h1", "gpus": 8}, {"host": "h2", "gpus": 8, "name": "node0"}]
    (problem,) = _problems(_data(cluster={"nodes": nodes}))
    assert "cluster.nodes[1].name: name 'node0' is used twice" in problem


@pytest.mark.parametrize(
    ("key", "fix"),
    [
        ("SERVED_MODEL_NAME", "model.served_name"),
        ("DYN_NAMESPACE", "dynamo.namespace"),
        ("CUDA_VISIBLE_DEVICES", "placement"),
        ("DYN_SYSTEM_PORT", "launch.system_port_base"),
        ("PYTHON", "launch.python"),
        ("HEAD_NODE_IP", "cluster.nodes[0]"),
        ("SECONDS", "remove it"),
    ],
)
def test_env_names_the_script_sets_are_refused_with_where_to_set_them(key: str, fix: str) -> None:
    (problem,) = _problems(_data(launch={"env": {key: "1"}}))
    assert problem.startswith(f"pipeline: launch.env.{key}: the node script sets {key} itself (")
    assert fix in problem


@pytest.mark.parametrize("key", ["1X", "A-B", "A B", "A\nB", "A=B", ""])
def test_env_names_must_be_shell_names(key: str) -> None:
    (problem,) = _problems(_data(launch={"env": {key: "1"}}))
    assert "is not an environment variable name" in problem and "\n" not in problem


def test_bind_addresses_may_be_set_for_nodes_known_by_hostname() -> None:
    # The script exports DYN_TCP_RPC_HOST & co. only for a node whose address is an IP.
    env = {"DYN_TCP_RPC_HOST": "gpu-01.example.com"}
    assert validate_pipeline(_data(launch={"env": env})).launch.env == env


def test_env_values_may_hold_anything() -> None:
    env = {"NCCL_DEBUG": "INFO", "_X": "$(touch /tmp/x); `id`\n'\"", "lower_case": ""}
    assert validate_pipeline(_data(launch={"env": env})).launch.env == env


@pytest.mark.parametrize("work_dir", ["~", "~/", "~/autodeploy", "/srv/autodeploy", "/"])
def test_work_dir_may_be_absolute_or_under_the_login_home(work_dir: str) -> None:
    data = _data()
    data["cluster"]["work_dir"] = work_dir
    assert validate_pipeline(data).cluster.work_dir == work_dir


@pytest.mark.parametrize("work_dir", ["autodeploy", "./runs", "~alice/x", "~alice", "", "/srv/a\nb"])
def test_work_dir_relative_or_of_another_user_is_refused(work_dir: str) -> None:
    data = _data()
    data["cluster"]["work_dir"] = work_dir
    (problem,) = _problems(data)
    assert problem.startswith("pipeline: cluster.work_dir: ") and "\n" not in problem


def test_key_and_token_files_need_not_exist_when_the_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        MINIMAL_PIPELINE.replace("cluster:\n", "cluster:\n  ssh: {key_file: keys/id}\n")
        + "checkpoint: {token_file: secrets/token}\n"
    )
    config = load_pipeline(path)
    assert config.cluster.ssh.key_file == tmp_path / "keys" / "id"
    assert config.checkpoint.token_file == tmp_path / "secrets" / "token"


def test_a_hostile_address_gives_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(MINIMAL_PIPELINE.replace("gpus: 8}", 'gpus: 8, address: "10.0.0.1\\ntouch /tmp/x"}'))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "cluster.nodes[0].address" in err


@pytest.mark.parametrize(
    ("engine", "where"),
    [
        ({"extra": {"kv_cache_config": {"free_gpu_memory_fraction": 0.5}}}, "engine.extra.kv_cache_config"),
        ({"prefill": {"extra": {"build_config": {}}}}, "engine.prefill.extra.build_config"),
        ({"agg": {"extra": {"kv_cache_config": {"host_cache": 1}}}}, "engine.agg.extra.kv_cache_config"),
        ({"extra": {"cuda_graph_config": {"batch_sizes": [0, 8]}}}, "engine.extra.cuda_graph_config"),
    ],
)
def test_engine_extra_is_checked_when_the_file_is_loaded(engine: dict[str, Any], where: str) -> None:
    (problem,) = _problems(_data(engine=engine))
    assert f"pipeline: {where}" in problem


def test_engine_extra_that_generate_accepts_is_accepted() -> None:
    engine = {
        "extra": {"print_iter_log": True, "cuda_graph_config": {"batch_sizes": [1, 8]}},
        "decode": {"extra": {"kv_cache_config": {"host_cache_size": 1000000000}}},
        "prefill": {"extra": {"speculative_config": {"anything": 1}}},
    }
    assert validate_pipeline(_data(engine=engine)).engine.decode.extra


@pytest.mark.parametrize("backend", ["1.2.0rc4", "1.4.0rc1", "0.20.0"])
def test_trtllm_versions_outside_every_family_are_refused_at_load(backend: str) -> None:
    (problem,) = _problems(_data(backend={"version": backend}))
    assert (
        f"backend.version: TensorRT-LLM {backend} " in problem
        and "the nearest a supported Dynamo ships" in problem
    )


def test_a_newer_dynamo_with_an_explicit_backend_is_accepted() -> None:
    config = validate_pipeline(_data(dynamo={"version": "1.6.1"}, backend={"version": "1.3.0rc23"}))
    assert config.dynamo.version == "1.6.1"


def test_every_name_imported_from_the_package_is_still_there() -> None:
    import automation.config as package

    used = [
        "PipelineConfig",
        "Node",
        "VERSIONS_FILE",
        "load_pipeline",
        "validate_pipeline",
        "resolved_yaml",
        "dynamo_versions",
    ]
    assert all(hasattr(package, name) for name in used)
    assert package.VERSIONS_FILE.is_file()


@pytest.mark.parametrize(
    ("section", "value"),
    [("name", "run\ntouch /tmp/x"), ("model", {"hf_id": "org/x\ny"}), ("system", "h200\nx")],
)
def test_a_value_with_a_newline_is_echoed_on_one_line(section: str, value: Any) -> None:
    data = _data()
    data[section] = value
    (problem,) = _problems(data)
    assert "\n" not in problem and "\\n" in problem
