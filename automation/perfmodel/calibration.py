"""Calibration from measurement: three per-system factors fitted to measured TTFT/TPOT, their file, their use."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Final, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from automation.errors import InputError
from automation.perfmodel import queueing
from automation.perfmodel.plan import Plan
from automation.perfmodel.system import SystemSpec

KIND: Final = "autodeploy-calibration"
INLINE = "inline:"  # a calibration given as its parameters (what the fit tries), not as a file

# What a calibration fits, per GPU system and never per model or per row: the system's measured steps
# against the model's, and the fixed cost of the serving stack that ran.
#   prefill_scale: every prefill step (context phase) takes prefill_scale × the fitted kernels' time
#   decode_scale:  every decode step takes decode_scale × it (a mixed agg step blends them, ops.calibrated)
#   extra_request_ms: added to the serving stack's fixed per-request cost (system.calibrated_stack)
PARAMS = ("prefill_scale", "decode_scale", "extra_request_ms")
# Physical bounds; a fit outside them is refused, never clipped. 3× faster than the shipped fits would put
# their GEMMs, attention and HBM streaming above the datasheet peaks (the fitted efficiencies of the
# dominant terms are 0.4–0.99 of peak, configs/systems/*.fit.yaml); 10× slower is not a system's speed
# but a broken deployment (throttled clocks, a debug build, the wrong quantization), which a calibration
# must not absorb. A fixed cost beyond −200 ms / +2 s per request is a queue or a timeout, not a cost.
BOUNDS: dict[str, tuple[float, float]] = {
    "prefill_scale": (1.0 / 3.0, 10.0),
    "decode_scale": (1.0 / 3.0, 10.0),
    "extra_request_ms": (-200.0, 2000.0),
}
# The fewest measurements a fit may use, per system: points (a level or a row gives a TTFT and a TPOT),
# and distinct concurrencies (one concurrency cannot tell a fixed cost from a slower prefill).
MIN_POINTS = 3
MIN_CONCURRENCIES = 2
# A weak pull of each parameter towards "no correction" (log-scale 0, 0 ms): it decides only directions
# the measurements leave open, never one they fix. The fixed cost is pulled harder than the scales: at one
# workload a slower prefill and an extra fixed cost differ only in how TTFT grows with the concurrency
# (the burst queues prefills), which few levels measure poorly; a stack's fixed cost is known to tens of
# milliseconds (evaluate.LOOP_MS 18 ms, request_ms 29–45 ms), a device's speed is not.
PRIOR_WEIGHT = 0.01
PRIOR_MS = 25.0  # a fixed-cost offset of 25 ms weighs like a factor e in a scale
LOSS_SCALE = 0.1  # soft-L1: residuals beyond 10 % count linearly
ROAM_LOG, ROAM_MS = math.log(30.0), 5000.0  # how far the optimiser may go before BOUNDS judge the result


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorStats(_Strict):
    """Errors of predicted against measured (m/p − 1), in percent, over a system's points."""

    ttft_median_abs: float = Field(description="Median |TTFT error| (%).")
    ttft_p90_abs: float = Field(description="90th percentile |TTFT error| (%).")
    ttft_bias: float = Field(description="Median signed TTFT error (%): > 0 measured slower than predicted.")
    tpot_median_abs: float = Field(description="Median |TPOT error| (%).")
    tpot_p90_abs: float = Field(description="90th percentile |TPOT error| (%).")
    tpot_bias: float = Field(description="Median signed TPOT error (%).")


class SystemCalibration(_Strict):
    """One system's fitted factors, what they were fitted on, and the errors before and after."""

    prefill_scale: float = Field(1.0, description="Prefill steps take this × the model's time.")
    decode_scale: float = Field(1.0, description="Decode steps take this × the model's time.")
    extra_request_ms: float = Field(0.0, description="Added to the serving stack's fixed cost per request.")
    points: int = Field(description="Measured points (levels or rows) the fit used.")
    concurrencies: list[int] = Field(description="The distinct concurrencies among them.")
    models: list[str] = Field(description="The models they measured (the fit is per system, not per model).")
    before: ErrorStats = Field(description="Errors of the uncalibrated model on these points.")
    after: ErrorStats = Field(description="Errors with this calibration on these points.")


class Source(_Strict):
    path: str = Field(description="A measured-rows CSV or a finished run directory.")
    kind: Literal["rows", "run"]
    points: int = Field(description="Points it gave.")
    skipped: int = Field(0, description="Points it held that could not be used (see `autodeploy calibrate`).")


class CalibrationFile(_Strict):
    """What `autodeploy calibrate` writes and perfmodel.calibration reads."""

    kind: Literal["autodeploy-calibration"] = "autodeploy-calibration"
    version: Literal[1] = 1
    created: str = Field(description="When it was fitted (UTC, ISO 8601).")
    autodeploy: str = Field(description="The autodeploy version that fitted it.")
    sources: list[Source]
    systems: dict[str, SystemCalibration]


@dataclass(frozen=True)
class Observation:
    """One measured point: a plan at a concurrency, measured with `method` on `stack` (None: TRT-LLM's)."""

    plan: Plan
    concurrency: float
    ttft_ms: float
    tpot_ms: float
    method: queueing.Method = queueing.DEFAULT_METHOD
    stack: queueing.Stack | None = None
    source: str = ""


@dataclass(frozen=True)
class Fit:
    """A system's fitted parameters and its errors before and after."""

    system: str
    params: dict[str, float]
    before: ErrorStats
    after: ErrorStats
    observations: tuple[Observation, ...]

    def to_model(self) -> SystemCalibration:
        obs = self.observations
        return SystemCalibration(
            **{k: round(v, 6) for k, v in self.params.items()},
            points=len(obs),
            concurrencies=sorted({round(o.concurrency) for o in obs}),
            models=sorted({o.plan.model for o in obs}),
            before=self.before,
            after=self.after,
        )


# -- reading and applying -----------------------------------------------------------------------------


def inline(params: dict[str, float]) -> str:
    """The calibration reference of a parameter set (what a plan carries while a fit tries it)."""
    return INLINE + ",".join(f"{k}={params[k]!r}" for k in PARAMS if k in params)


def _parse_inline(ref: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in ref[len(INLINE) :].split(","):
        key, _, value = part.partition("=")
        if key not in PARAMS:
            raise InputError(
                f"calibration {ref!r}: unknown parameter {key!r}", hint=f"one of {', '.join(PARAMS)}"
            )
        out[key] = float(value)
    return out


def read(path: Path) -> CalibrationFile:
    """A calibration file, validated.

    Raises:
        InputError: missing, not YAML, or not a calibration autodeploy wrote (one line naming the field).
    """
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InputError(
            f"calibration {path}: {exc.strerror or exc}",
            hint="pass a file `autodeploy calibrate ... --out FILE` wrote",
        ) from None
    except yaml.YAMLError as exc:
        raise InputError(
            f"calibration {path} is not YAML: {exc}", hint="re-run autodeploy calibrate"
        ) from None
    if not isinstance(raw, dict) or raw.get("kind") != KIND:
        raise InputError(
            f"{path} is not an autodeploy calibration (no 'kind: {KIND}')",
            hint="pass a file `autodeploy calibrate ... --out FILE` wrote",
        )
    try:
        return CalibrationFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(
            f"calibration {path}: {where}: {first['msg']}", hint="re-run autodeploy calibrate to rewrite it"
        ) from None


@lru_cache(maxsize=32)
def _factors(ref: str, mtime_ns: int) -> dict[str, dict[str, float]]:
    """Per system, the parameters of a calibration reference (cached per file version)."""
    del mtime_ns  # part of the cache key only: an edited file is read again
    data = read(Path(ref))
    return {name: {k: float(getattr(sc, k)) for k in PARAMS} for name, sc in data.systems.items()}


def factors(ref: str, system: str) -> dict[str, float]:
    """The parameters a calibration reference gives `system`.

    Raises:
        InputError: the file has no fit for that system.
    """
    if ref.startswith(INLINE):
        return _parse_inline(ref)
    path = Path(ref)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = 0  # read() names the problem
    per_system = _factors(ref, mtime)
    if system not in per_system:
        have = ", ".join(sorted(per_system)) or "none"
        raise InputError(
            f"calibration {ref} has no fit for system '{system}' (it has: {have})",
            hint=f"calibrate with measurements of {system} (autodeploy calibrate), or drop perfmodel.calibration",
        )
    return per_system[system]


def apply(spec: SystemSpec, ref: str) -> SystemSpec:
    """`spec` under the calibration `ref` (a file path, or inline parameters)."""
    p = {**dict.fromkeys(PARAMS, 0.0), "prefill_scale": 1.0, "decode_scale": 1.0, **factors(ref, spec.name)}
    return replace(
        spec,
        prefill_scale=p["prefill_scale"],
        decode_scale=p["decode_scale"],
        extra_request_ms=p["extra_request_ms"],
        calibration=ref,
    )


def describe(ref: str, system: str) -> str:
    """One line: the calibration `ref` and the factors it gives `system` (configure's outputs, the report)."""
    p = factors(ref, system)
    return (
        f"{ref}: prefill ×{p['prefill_scale']:.3f}, decode ×{p['decode_scale']:.3f}, "
        f"fixed cost {p['extra_request_ms']:+.1f} ms per request"
    )


# -- fitting ------------------------------------------------------------------------------------------

Predict = Callable[[Observation, str], tuple[float, float]]


def predict_point(obs: Observation, ref: str) -> tuple[float, float]:
    """(TTFT, TPOT) the model predicts for one observation under calibration `ref` ("" for none)."""
    from automation.perfmodel.evaluate import predict_at_concurrency

    plan = replace(obs.plan, calibration=ref)
    pred = predict_at_concurrency(plan, obs.concurrency, method=obs.method, stack=obs.stack)
    return pred.ttft_ms, pred.tpot_ms


def error_stats(pairs: Sequence[tuple[float, float, float, float]]) -> ErrorStats:
    """ErrorStats of (measured TTFT, predicted TTFT, measured TPOT, predicted TPOT) quadruples."""

    def stats(errors: list[float]) -> tuple[float, float, float]:
        a = np.abs(errors)
        return (
            round(float(np.median(a)) * 100, 2),
            round(float(np.percentile(a, 90)) * 100, 2),
            round(float(statistics.median(errors)) * 100, 2),
        )

    tt = stats([m / p - 1.0 for m, p, _, _ in pairs])
    tp = stats([m / p - 1.0 for _, _, m, p in pairs])
    return ErrorStats(
        ttft_median_abs=tt[0],
        ttft_p90_abs=tt[1],
        ttft_bias=tt[2],
        tpot_median_abs=tp[0],
        tpot_p90_abs=tp[1],
        tpot_bias=tp[2],
    )


def check_enough(system: str, observations: Sequence[Observation]) -> None:
    """Refuse a fit from too few points.

    Raises:
        InputError: fewer than MIN_POINTS points or MIN_CONCURRENCIES concurrencies for `system`.
    """
    concurrencies = {round(o.concurrency) for o in observations}
    if len(observations) < MIN_POINTS or len(concurrencies) < MIN_CONCURRENCIES:
        raise InputError(
            f"calibrate: {len(observations)} measured point(s) at {len(concurrencies)} concurrency(ies) for "
            f"system '{system}'; fitting {len(PARAMS)} parameters needs at least {MIN_POINTS} points at "
            f"{MIN_CONCURRENCIES} or more concurrencies",
            hint="benchmark more levels (benchmark.concurrency), or add measured rows of this system",
        )


def fit_system(system: str, observations: Sequence[Observation], predict: Predict = predict_point) -> Fit:
    """Fit PARAMS for one system: a robust fit of log(predicted/measured) TTFT and TPOT.

    minimise Σ_i ρ(log(T̂_i(θ)/T_i)) + ρ(log(τ̂_i(θ)/τ_i)) + w·(log² s_p + log² s_d + (e/25 ms)²)
    over θ = (s_p = prefill_scale, s_d = decode_scale, e = extra_request_ms), with the soft-L1 loss
    ρ(z) = 2f²(√(1 + (z/f)²) − 1), f = LOSS_SCALE (a point off by more than f counts linearly, so one odd
    level cannot swing the fit) and w = PRIOR_WEIGHT. Scales are fitted in log space (a factor 2 slower
    and 2 faster weigh alike).

    Why Nelder–Mead and not a gradient method: the predicted TTFT of a burst comes from an event
    simulation, which is piecewise in the step times (a prefill that finishes just before or just after
    a decode step changes a whole round), so finite-difference gradients can be zero or huge; a simplex
    of 10 %-sized steps sees the trend. Three parameters take ~100–200 evaluations of every point.

    The optimiser may roam wide; the result must then lie within BOUNDS, else the fit is refused.

    Raises:
        InputError: too few points (check_enough), or a fitted parameter outside its physical bounds.
    """
    from scipy.optimize import minimize

    check_enough(system, observations)
    measured = [(o.ttft_ms, o.tpot_ms) for o in observations]

    def params_of(x: np.ndarray) -> dict[str, float]:
        # Clipped to the roaming range (30× either way, ±5 s), far enough that a fit wanting more is
        # seen (and refused) as such.
        lp, ld, e = np.clip(
            x, [-ROAM_LOG, -ROAM_LOG, -ROAM_MS / PRIOR_MS], [ROAM_LOG, ROAM_LOG, ROAM_MS / PRIOR_MS]
        )
        return {
            "prefill_scale": float(math.exp(lp)),
            "decode_scale": float(math.exp(ld)),
            "extra_request_ms": float(e * PRIOR_MS),
        }

    def cost(x: np.ndarray) -> float:
        ref = inline(params_of(x))
        z: list[float] = []
        for obs, (ttft, tpot) in zip(observations, measured, strict=True):
            p_ttft, p_tpot = predict(obs, ref)
            z += [math.log(max(p_ttft, 1e-6) / ttft), math.log(max(p_tpot, 1e-6) / tpot)]
        r = np.asarray(z) / LOSS_SCALE
        robust = float(np.sum(2.0 * LOSS_SCALE**2 * (np.sqrt(1.0 + r * r) - 1.0)))
        return robust + PRIOR_WEIGHT * float(np.sum(np.asarray(x) ** 2))

    simplex = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.4]])
    result = minimize(
        cost,
        np.zeros(3),
        method="Nelder-Mead",
        options={"initial_simplex": simplex, "xatol": 2e-3, "fatol": 1e-6, "maxfev": 400},
    )
    params = params_of(result.x)
    for key, value in params.items():
        low, high = BOUNDS[key]
        if not low <= value <= high:
            raise InputError(
                f"calibrate: system '{system}' fits {key} = {value:.3g}, outside its physical bounds "
                f"[{low:.3g}, {high:.3g}]: these measurements are not of the model's system, model or workload",
                hint="check each source's system, model, quantization and workload against what was measured",
            )

    def quads(ref: str) -> list[tuple[float, float, float, float]]:
        preds = (predict(o, ref) for o in observations)
        return [(m[0], p[0], m[1], p[1]) for m, p in zip(measured, preds, strict=True)]

    return Fit(
        system,
        params,
        error_stats(quads("")),
        error_stats(quads(inline(params))),
        tuple(observations),
    )
