"""Importing aiconfigurator's results: every committed result folder (tests/data/aiconfigurator/, made by
running the aiconfigurator release named in each case's README) is read, and its pick is the one
aiconfigurator printed: mode, tokens/s/gpu within 0.5 %, and the rank-1 layout and worker counts of
each mode's printed table."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from automation import aiconfigurator
from automation.errors import InputError
from tests.conftest import REPO

DATA = REPO / "tests" / "data" / "aiconfigurator"
CASES = sorted(p for p in DATA.glob("*") if (p / "printed.txt").is_file()) if DATA.is_dir() else []
# "Best Experiment Chosen: disagg at 489.83 tokens/s/gpu (disagg 1.17x better than agg)"
CHOSEN = re.compile(r"Best Experiment Chosen: (?:\x1b\[[0-9;]*m)?(\w+) at ([\d.]+) tokens/s/gpu")


def _saved(case: Path) -> Path:
    """What aiconfigurator wrote: the case's save_dir/ (its --save-dir), else the case folder itself."""
    return case / "save_dir" if (case / "save_dir").is_dir() else case


def _printed_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """aiconfigurator's printed "<mode> Top Configurations" tables, as rows of header -> cell."""
    tables: dict[str, list[dict[str, str]]] = {}
    mode, header = None, None
    for line in text.splitlines():
        found = re.search(r"(\w+) Top Configurations", line)
        if found:
            mode, header = found.group(1), None
            continue
        if mode and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            else:
                tables.setdefault(mode, []).append(dict(zip(header, cells, strict=False)))
        elif mode and header and not line.startswith("+"):
            mode = None
    return tables


def test_there_are_cases() -> None:
    assert len(CASES) >= 4, f"tests/data/aiconfigurator holds {len(CASES)} result folders"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_imported_pick_is_the_printed_pick(case: Path) -> None:
    text = (case / "printed.txt").read_text(errors="replace")
    chosen = CHOSEN.search(text)
    if chosen is None:
        pytest.skip(f"{case.name}: aiconfigurator printed no pick (see its README)")
    result = aiconfigurator.load(_saved(case))
    mode, value = chosen.group(1), float(chosen.group(2))
    assert result.winner == mode
    best = result.pick()
    assert best.tokens_per_s_per_gpu_cluster(result.total_gpus) == pytest.approx(value, rel=0.005)
    for table_mode, rows in _printed_tables(text).items():
        first = rows[0]
        pick = result.pick(table_mode, 1)
        assert float(first["tokens/s/gpu"]) == pytest.approx(
            pick.tokens_per_s_per_gpu_cluster(result.total_gpus), rel=0.005
        )
        assert int(first["replicas"]) == pick.replicas(result.total_gpus)
        if table_mode == "agg":
            assert pick.row["parallel"].startswith(first["parallel"]) and int(first["bs"]) == int(
                pick.number("bs")
            )
        else:
            for side in ("(p)", "(d)"):
                assert pick.row[f"{side}parallel"].startswith(first[f"{side}parallel"])
                assert int(first[f"{side}workers"]) == int(pick.number(f"{side}workers"))
                assert int(first[f"{side}bs"]) == int(pick.number(f"{side}bs"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_pick_becomes_a_plan_over_the_whole_cluster(case: Path) -> None:
    from automation.perfmodel import load_model
    from automation.perfmodel.evaluate import estimate, kv_cache_dtype

    result = aiconfigurator.load(_saved(case))
    model = str(aiconfigurator.experiment_value(result.experiment, "model_path"))
    system = str(aiconfigurator.experiment_value(result.experiment, "system_name"))
    isl = int(aiconfigurator.experiment_value(result.experiment, "isl"))
    osl = int(aiconfigurator.experiment_value(result.experiment, "osl"))
    try:
        arch = load_model(model)
    except InputError as exc:
        pytest.skip(f"{model}: {exc.message}")
    for picks in result.picks.values():
        for pick in picks:
            plan = aiconfigurator.to_plan(pick, result, model, system, isl, osl, kv_cache_dtype(arch))
            assert plan.gpus_per_replica == pick.gpus_per_replica
            assert plan.total_gpus <= result.total_gpus < plan.total_gpus + plan.gpus_per_replica
            assert estimate(plan).tokens_per_s_per_gpu > 0
            if pick.folder is not None:  # the engine YAML aiconfigurator generated sets the token budget
                role = plan.roles[-1]
                yaml_file = next(pick.folder.glob(f"{role.role}_config.yaml"), None)
                if yaml_file is not None and "max_num_tokens" in yaml_file.read_text():
                    import yaml

                    data = yaml.safe_load(yaml_file.read_text())
                    budget = data.get("max_num_tokens") or (data.get("build_config") or {}).get(
                        "max_num_tokens"
                    )
                    assert role.max_num_tokens == budget


def test_configure_import_prints_the_shape_of_configure_json() -> None:
    case = next((c for c in CASES if c.name.startswith("qwen3-32b-fp8-h200-8gpu")), None)
    if case is None:
        pytest.skip("the qwen3-32b-fp8-h200-8gpu case is not committed")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "automation",
            "configure",
            "--import-aiconfigurator",
            str(_saved(case)),
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["source"] == "aiconfigurator" and out["winner"] in ("agg", "disagg")
    for mode in ("agg", "disagg"):
        for row in out.get(mode, []):
            for key in ("tokens_per_s_per_gpu", "tokens_per_s_per_user", "ttft_ms", "tpot_ms", "concurrency"):
                assert isinstance(row[key], float | int)
            assert row["plan"]["mode"] == mode and row["autodeploy"]["tokens_per_s_per_gpu"] > 0
            roles = [row] if mode == "agg" else [row["prefill"], row["decode"]]
            assert all({"tp", "pp", "ep", "attention_dp", "batch_size"} <= set(r) for r in roles)
    assert sum(row["chosen"] for mode in ("agg", "disagg") for row in out.get(mode, [])) == 1


def test_a_folder_that_is_not_a_result_says_what_it_found(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"found notes.txt; expected aiconfigurator's run folder"):
        aiconfigurator.load(tmp_path)
    (tmp_path / "agg").mkdir()
    (tmp_path / "agg" / "pareto.csv").write_text("a,b\n")
    with pytest.raises(InputError, match=r"found pareto.csv; expected best_config_topn.csv"):
        aiconfigurator.load(tmp_path)


def test_a_rank_beyond_the_ranking_is_refused() -> None:
    if not CASES:
        pytest.skip("no cases")
    result = aiconfigurator.load(_saved(CASES[0]))
    mode = next(iter(result.picks))
    with pytest.raises(InputError, match=r"configure\.rank 99"):
        result.pick(mode, 99)


OTHER = DATA / "_other-formats"


def test_the_older_backend_configs_layout_gives_the_best_it_printed() -> None:
    """aiconfigurator 0.2.0 (the seed guide's layout): no best_config_topn.csv; its printed "Actual Best" of
    each mode is the frontier row within the TPOT limit with the highest tokens/s/gpu_cluster."""
    case = next(OTHER.glob("legacy-backend-configs-*"))
    text = (case / "printed.txt").read_text(errors="replace")
    result = aiconfigurator.load(case / "save_dir")
    assert result.layout == "backend_configs" and result.total_gpus == 8
    assert result.winner == "disagg"  # aiconfigurator_result.json: chosen_system_type
    for mode, label in (("agg", "Agg"), ("disagg", "Disagg")):
        printed = re.search(rf"{label} Actual Best: ([\d.]+) tokens/s/gpu\s+([\d.]+) tokens/s/user", text)
        assert printed is not None
        best = result.pick(mode, 1)
        assert best.tokens_per_s_per_gpu_cluster(8) == pytest.approx(float(printed.group(1)), rel=0.005)
        assert best.number("tokens/s/user") == pytest.approx(float(printed.group(2)), rel=0.005)
        assert best.folder is not None and best.folder.name == mode  # backend_configs/<mode>/
    plan = aiconfigurator.to_plan(result.pick(), result, "Qwen/Qwen3-32B-FP8", "h200_sxm", 4000, 512, "fp8")
    assert plan.layout() == "4P(tp1 bs1) + 1D(tp4 bs64)" and plan.total_gpus == 8


def test_aisimulate_recommendations_keep_its_ranking() -> None:
    """AISimulate's own recommender (recommendation.json + recommendations/<NNNN>.yaml): its top_n order
    across modes, its winner (the first), and each candidate's layout from its engine config."""
    case = next(OTHER.glob("aisimulate-*-recommend-*"))
    result = aiconfigurator.load(case / "output_dir")
    data = json.loads((case / "output_dir" / "recommendation.json").read_text())
    candidates = {c["candidate_id"]: c for c in data["candidates"]}
    order = [candidates[c] for c in data["views"]["top_n"]]
    assert result.layout == "aisimulate recommend" and result.total_gpus == 8
    assert result.winner == order[0]["config"]["deployment_mode"]
    for mode in ("agg", "disagg"):
        theirs = [c for c in order if c["config"]["deployment_mode"] == mode]
        ours = result.picks.get(mode, [])
        assert len(ours) == len(theirs)
        for pick, candidate in zip(ours, theirs, strict=True):
            used = candidate["used_gpus"]
            assert pick.number("tokens/s/gpu") == pytest.approx(
                candidate["metrics"]["output_throughput_tok_s"] / used
            )
            assert pick.number("ttft") == pytest.approx(candidate["metrics"]["mean_ttft_ms"])
    best = result.pick()
    plan = aiconfigurator.to_plan(best, result, "Qwen/Qwen3-32B-FP8", "h200_sxm", 4000, 512, "fp8")
    assert plan.role(plan.roles[0].role).max_num_tokens == 16384  # its scheduler's max_batched_tokens
