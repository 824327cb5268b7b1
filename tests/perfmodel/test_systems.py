"""GPU systems: the yaml facts, NVLink domains, and the fitted efficiencies every system carries."""

from __future__ import annotations

import numpy as np
import pytest

from automation.perfmodel import ops
from automation.perfmodel.system import FIT_DEFAULTS, SYSTEMS_DIR, known_systems, load_system

# The system strings of aiconfigurator's measured silicon table (its `system` column).
TABLE_SYSTEMS = ("h100_sxm", "h200_sxm", "b200_sxm", "b300_sxm", "gb200", "gb300")
EFFICIENCIES = [k for k in FIT_DEFAULTS if k.endswith("_eff")]
# Fixed costs (µs) and their physically plausible ranges (the bounds tests/perf/fit_measured.py fits within).
FIXED_US = {"gemm_us": 30.0, "fp4_us": 30.0, "attn_us": 40.0, "ar_us": 60.0, "moe_us": 60.0}


def test_every_table_system_is_known():
    assert set(TABLE_SYSTEMS) <= set(known_systems())


@pytest.mark.parametrize(
    ("name", "per_node", "domain", "hbm_gib", "bw", "bf16", "fp8", "fp4"),
    [
        # aiconfigurator 0.12 systems/*.yaml and the NVIDIA datasheets cited in each yaml.
        ("b300_sxm", 8, 8, 268.59, 7.75, 2250, 4500, 14000),
        ("gb200", 4, 72, 185.03, 8.0, 2500, 5000, 10000),
        ("gb300", 4, 72, 277.55, 8.0, 2500, 5000, 15000),
    ],
)
def test_new_systems_facts(name, per_node, domain, hbm_gib, bw, bf16, fp8, fp4):
    s = load_system(name)
    assert (s.gpus_per_node, s.domain_gpus, s.hbm_gib, s.hbm_bw_tbs) == (per_node, domain, hbm_gib, bw)
    assert s.peak_flops("bf16") == bf16 * 1e12
    assert s.peak_flops("fp8") == fp8 * 1e12
    assert s.peak_flops("fp4") == fp4 * 1e12
    assert (s.nvlink_gbs, s.internode_gbs) == (900.0, 100.0)


@pytest.mark.parametrize("name", known_systems())
def test_every_system_yaml_cites_its_sources(name):
    text = (SYSTEMS_DIR / f"{name}.yaml").read_text()
    assert "Sources:" in text or "Source:" in text


def test_an_hgx_node_is_its_own_nvlink_domain():
    for name in ("h100_sxm", "h200_sxm", "b200_sxm", "b300_sxm", "a100_sxm"):
        s = load_system(name)
        assert s.domain_gpus == s.gpus_per_node == 8


def test_link_bandwidth_is_nvlink_within_the_domain():
    gb, b2 = load_system("gb200"), load_system("b200_sxm")
    # A 16- or 72-GPU group spans trays of an NVL72 rack but stays on NVLink; on HGX B200 it leaves the node.
    assert gb.link_gbs(4) == gb.link_gbs(16) == gb.link_gbs(72) == 900.0
    assert gb.link_gbs(73) == gb.link_gbs(144) == 100.0
    assert b2.link_gbs(8) == 900.0 and b2.link_gbs(16) == 100.0
    np.testing.assert_array_equal(gb.link_gbs(np.array([8.0, 72.0, 144.0])), [900.0, 900.0, 100.0])


def test_allreduce_across_trays_of_a_rack_runs_at_nvlink_speed():
    fit = {"ar_us": 10.0, "ar_eff": 1.0}
    gb, b2 = load_system("gb200").with_fit(fit), load_system("b200_sxm").with_fit(fit)
    big = 256 * 2**20
    ring16 = (2 * 10e-6 * 4 + 2 * big * 15 / 16 / 900e9) * 1e3
    assert ops.allreduce_ms(gb, 16, big) == pytest.approx(ring16)
    # The same group on 8-GPU HGX nodes crosses the 100 GB/s scale-out link.
    assert ops.allreduce_ms(b2, 16, big) > 7 * ops.allreduce_ms(gb, 16, big)
    assert ops.allreduce_ms(gb, 144, big) > 7 * ops.allreduce_ms(gb, 72, big)


@pytest.mark.parametrize("name", known_systems())
def test_every_system_has_a_complete_plausible_fit(name):
    s = load_system(name)
    assert (SYSTEMS_DIR / f"{name}.fit.yaml").is_file(), "every system ships a fit file"
    text = (SYSTEMS_DIR / f"{name}.fit.yaml").read_text()
    assert all(f"  {k}:" in text for k in FIT_DEFAULTS), "fit files carry every key"
    for k in EFFICIENCIES:
        assert 0.0 < s.fit[k] <= 1.0, k
    for k, top in FIXED_US.items():
        assert 0.0 <= s.fit[k] <= top, k
    assert s.fit["knee"] >= 1.0 and s.fit["m_tile"] >= 1.0


def test_fits_are_per_system_not_shared_defaults():
    for name in ("h100_sxm", "h200_sxm", "b200_sxm", "gb200", "gb300"):
        assert load_system(name).fit_source.startswith("fit_measured.py on")
    assert "borrowed from b200_sxm" in load_system("b300_sxm").fit_source
