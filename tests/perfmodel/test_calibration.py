"""Calibration: factors applied to the steps and the stack, the file, the fit and its refusals, the pipeline."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import automation.perfmodel as pm
from automation import calibrate
from automation.errors import InputError
from automation.perfmodel import calibration, evaluate
from automation.perfmodel.calibration import Observation, apply, fit_system, inline, predict_point
from automation.perfmodel.plan import Plan
from automation.perfmodel.queueing import Method
from automation.perfmodel.system import calibrated_stack, load_system
from automation.stages.generate import render_files
from tests.generate.cases import MODEL, agg_plan, disagg_plan, pipeline, role

TRUTH = {"prefill_scale": 1.6, "decode_scale": 1.3, "extra_request_ms": 12.0}
METHOD = Method(requests_per_concurrency=10, warmup="burst")


def _plan(calibration_ref: str = "") -> Plan:
    return replace(disagg_plan(p_tp=2, p_workers=1, d_tp=2, replicas=1), calibration=calibration_ref)


def _observations(
    truth: dict[str, float], concurrencies: tuple[int, ...] = (1, 4, 8, 16)
) -> list[Observation]:
    """What a cluster that runs as `truth` says measures: the model's own prediction under it."""
    out = []
    for c in concurrencies:
        obs = Observation(_plan(), c, 1.0, 1.0, METHOD, evaluate.MOCKER_STACK)
        ttft, tpot = predict_point(obs, inline(truth))
        out.append(replace(obs, ttft_ms=ttft, tpot_ms=tpot))
    return out


def test_the_factors_scale_prefill_and_decode_steps_and_the_stack_pays_the_extra_cost() -> None:
    model, base = pm.load_model(MODEL), load_system("h200_sxm")
    slow = apply(base, inline(TRUTH))
    assert (slow.prefill_scale, slow.decode_scale, slow.extra_request_ms) == (1.6, 1.3, 12.0)
    r = role("prefill", 2, 1)
    tokens = np.array([100.0, 4000.0, 16000.0])
    np.testing.assert_allclose(
        pm.prefill_time_ms(model, slow, r, tokens), 1.6 * pm.prefill_time_ms(model, base, r, tokens)
    )
    d = role("decode", 2, 32)
    np.testing.assert_allclose(
        pm.decode_step_ms(model, slow, d, np.array([1.0, 32.0]), np.array([4500.0, 4500.0])),
        1.3 * pm.decode_step_ms(model, base, d, np.array([1.0, 32.0]), np.array([4500.0, 4500.0])),
    )
    stack = calibrated_stack(evaluate.trtllm_stack(base), slow)
    assert stack.request_ms == pytest.approx(evaluate.request_ms(base) + 12.0)
    # A negative extra never makes a cost below zero.
    cheaper = apply(base, inline({**TRUTH, "extra_request_ms": -1000.0}))
    assert calibrated_stack(evaluate.MOCKER_STACK, cheaper).request_ms == 0.0


def test_a_calibrated_plan_is_predicted_slower_and_the_uncalibrated_one_is_unchanged() -> None:
    before = evaluate.predict_at_concurrency(_plan(), 8, method=METHOD)
    slow = evaluate.predict_at_concurrency(_plan(inline(TRUTH)), 8, method=METHOD)
    assert slow.tpot_ms == pytest.approx(1.3 * before.tpot_ms, rel=0.02)
    assert slow.ttft_ms > 1.4 * before.ttft_ms
    assert evaluate.predict_at_concurrency(_plan(), 8, method=METHOD) == before


def test_the_fit_recovers_the_factors_a_cluster_runs_at() -> None:
    fit = fit_system("h200_sxm", _observations(TRUTH))
    assert fit.params["prefill_scale"] == pytest.approx(1.6, rel=0.05)
    assert fit.params["decode_scale"] == pytest.approx(1.3, rel=0.03)
    # 12 ms of a 250–700 ms TTFT and 4 % of prefill look alike over c ≤ 16: the prior decides between
    # them (calibration.PRIOR_MS), and the predictions agree either way.
    assert -5.0 < fit.params["extra_request_ms"] < 15.0
    assert fit.before.tpot_median_abs > 25 and fit.after.tpot_median_abs < 1
    assert fit.before.ttft_median_abs > 40 and fit.after.ttft_median_abs < 2 and fit.after.ttft_p90_abs < 2
    assert fit.to_model().concurrencies == [1, 4, 8, 16]


def test_too_few_points_or_one_concurrency_are_refused() -> None:
    with pytest.raises(InputError, match=r"2 measured point\(s\) at 2 concurrency"):
        fit_system("h200_sxm", _observations(TRUTH, (1, 4)))
    with pytest.raises(InputError, match=r"at 1 concurrency"):
        fit_system("h200_sxm", _observations(TRUTH, (4, 4, 4)))


def test_a_fit_outside_the_physical_bounds_is_refused_not_clipped() -> None:
    # Measured 20× slower than the model in every step: not this system, model or workload.
    with pytest.raises(InputError, match=r"outside its physical bounds"):
        fit_system("h200_sxm", _observations({"prefill_scale": 20.0, "decode_scale": 20.0}))


def test_the_file_round_trips_and_load_system_applies_it(tmp_path: Path) -> None:
    gathered = calibrate.Gathered(
        calibration.Source(path="synthetic", kind="rows", points=4), _observations(TRUTH)
    )
    fits = calibrate.fit_all([gathered])
    path = tmp_path / "cal.yaml"
    calibrate.write(path, calibrate.calibration_file([gathered], fits))
    text = path.read_text()
    assert text.startswith("# An autodeploy calibration") and "kind: autodeploy-calibration" in text
    data = calibration.read(path)
    assert data.systems["h200_sxm"].points == 4 and data.sources[0].kind == "rows"
    spec = load_system("h200_sxm", str(path))
    assert spec.decode_scale == pytest.approx(1.3, rel=0.03) and spec.calibration == str(path)
    assert "decode ×1.29" in calibration.describe(str(path), "h200_sxm")
    with pytest.raises(InputError, match=r"has no fit for system 'b200_sxm' \(it has: h200_sxm\)"):
        load_system("b200_sxm", str(path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\n", "is not an autodeploy calibration"),
        (": : :\n", "is not YAML"),
        ("kind: autodeploy-calibration\nversion: 1\n", "created: Field required"),
    ],
)
def test_a_file_that_is_not_a_calibration_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        calibration.read(path)


def test_the_sweep_under_a_calibration_plans_with_it() -> None:
    args = (MODEL, "h200_sxm", 8, 4000, 512, 2000.0, 50.0)
    plain = pm.search(*args, modes=("disagg",), method=METHOD)
    slow = pm.search(*args, modes=("disagg",), method=METHOD, calibration=inline(TRUTH))
    assert plain.best is not None and slow.best is not None
    assert slow.best.plan.calibration == inline(TRUTH) and plain.best.plan.calibration == ""
    # The pick is predicted (and was screened) under the calibration: 1.3× the shipped model's TPOT.
    shipped = evaluate.estimate(replace(slow.best.plan, calibration=""), METHOD)
    assert slow.best.prediction.tpot_ms == pytest.approx(1.3 * shipped.tpot_ms, rel=0.02)
    assert slow.best.tokens_per_s_per_gpu_cluster < plain.best.tokens_per_s_per_gpu_cluster


def test_mocker_speed_plays_the_shipped_model_slowed_whatever_the_calibration(tmp_path: Path) -> None:
    gathered = calibrate.Gathered(calibration.Source(path="s", kind="rows", points=4), _observations(TRUTH))
    path = tmp_path / "cal.yaml"
    calibrate.write(path, calibrate.calibration_file([gathered], calibrate.fit_all([gathered])))
    plan = agg_plan()

    def prefill_curve(config_plan: Plan, **sections: object) -> np.ndarray:
        config = pipeline([8], engine="mocker", dynamo="1.6.1", backend="1.3.0rc23", **sections)
        with np.load(io.BytesIO(render_files(config, config_plan)["mocker/agg_profile.npz"])) as npz:
            return np.asarray(npz["prefill_ttft_ms"])

    shipped = prefill_curve(plan)
    slowed = prefill_curve(plan, launch={"mocker_speed": {"prefill": 2.0, "decode": 1.0}})
    np.testing.assert_allclose(slowed, 2.0 * shipped)
    calibrated_plan = replace(plan, calibration=str(path))
    np.testing.assert_allclose(prefill_curve(calibrated_plan), 1.6 * shipped, rtol=0.03)
    # The "hardware" does not change when the model is calibrated.
    np.testing.assert_allclose(
        prefill_curve(calibrated_plan, launch={"mocker_speed": {"prefill": 2.0, "decode": 1.0}}),
        2.0 * shipped,
    )


def test_the_pipeline_refuses_a_slowed_real_engine_and_a_calibration_of_another_system(
    tmp_path: Path,
) -> None:
    with pytest.raises(InputError, match=r"launch\.mocker_speed.*launch\.engine is trtllm"):
        pipeline([8], launch={"engine": "trtllm", "mocker_speed": {"prefill": 2.0}})
    gathered = calibrate.Gathered(calibration.Source(path="s", kind="rows", points=4), _observations(TRUTH))
    path = tmp_path / "cal.yaml"
    calibrate.write(path, calibrate.calibration_file([gathered], calibrate.fit_all([gathered])))
    with pytest.raises(InputError, match=r"perfmodel\.calibration.*no fit for system 'b200_sxm'"):
        pipeline([8], system="b200_sxm", perfmodel={"calibration": str(path)})
    assert pipeline([8], perfmodel={"calibration": str(path)}).perfmodel.calibration == path


def _rows_file(path: Path, truth_file: Path | None) -> list[dict[str, str]]:
    """Agg rows of Qwen3-32B-FP8 on H200 at five concurrencies (and one B200 row), measured on a cluster
    that runs as the calibration `truth_file` says (the model's own prediction under it)."""
    import csv

    from automation.perfmodel.rows import predict_rows

    rows = []
    for i, (system, c) in enumerate([("h200_sxm", c) for c in (1, 2, 4, 8, 16)] + [("b200_sxm", 4)]):
        rows.append(
            {
                "id": f"row{i}",
                "silicon_data_source": f"synthetic; silicon_concurrency={c}",
                "model_path": MODEL,
                "system": system,
                "mode": "agg",
                "isl": "2000",
                "osl": "256",
                "gemm_quant_mode": "fp8",
                "moe_quant_mode": "fp8",
                "batch_size": str(c),
                "tp_size": "2",
                "pp_size": "1",
                "attention_dp_size": "1",
                "silicon_ttft_ms": "1",
                "silicon_tpot_ms": "1",
            }
        )
    if truth_file is not None:
        for row, result in zip(rows, predict_rows(rows, calibration=str(truth_file)), strict=True):
            if not result.error:
                row["silicon_ttft_ms"], row["silicon_tpot_ms"] = str(result.ttft_ms), str(result.tpot_ms)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_calibrate_and_estimate_rows_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv

    from automation.cli import main

    truth = tmp_path / "truth.yaml"
    none = calibration.ErrorStats(
        ttft_median_abs=0, ttft_p90_abs=0, ttft_bias=0, tpot_median_abs=0, tpot_p90_abs=0, tpot_bias=0
    )
    system = calibration.SystemCalibration(
        prefill_scale=1.6, decode_scale=1.3, points=0, concurrencies=[], models=[], before=none, after=none
    )
    calibrate.write(
        truth,
        calibration.CalibrationFile(created="x", autodeploy="test", sources=[], systems={"h200_sxm": system}),
    )
    measured = tmp_path / "rows.csv"
    _rows_file(measured, truth)
    out = tmp_path / "fitted.yaml"
    assert main(["calibrate", str(measured), "--out", str(out), "--system", "h200_sxm"]) == 0
    printed = capsys.readouterr().out
    assert f"{measured}: 6 point(s)" in printed and "h200_sxm" in printed
    fitted = calibration.read(out).systems["h200_sxm"]
    assert fitted.decode_scale == pytest.approx(1.3, rel=0.05) and fitted.after.tpot_median_abs < 2
    assert calibration.read(out).sources[0].kind == "rows"

    predictions = tmp_path / "pred.csv"
    assert (
        main(["estimate", "--rows", str(measured), "--out", str(predictions), "--calibration", str(out)]) == 0
    )
    by_id = {r["id"]: r for r in csv.DictReader(predictions.open())}
    rows = {r["id"]: r for r in csv.DictReader(measured.open())}
    for rid in ("row0", "row2", "row4"):
        assert float(by_id[rid]["tpot_ms"]) == pytest.approx(float(rows[rid]["silicon_tpot_ms"]), rel=0.03)
    assert "has no fit for system 'b200_sxm'" in by_id["row5"]["error"]
    # Too few points of a system: refused in one line, exit 2.
    assert main(["calibrate", str(measured), "--out", str(out), "--system", "b200_sxm"]) == 2
    assert "1 measured point(s) at 1 concurrency(ies) for system 'b200_sxm'" in capsys.readouterr().err
