"""The benchmark's pieces: concurrency levels, prompts of exactly ISL tokens, aiperf-style metrics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from automation.bench.metrics import RequestRecord, stats, summarize
from automation.bench.prompts import PromptMaker, read_tokenizer
from automation.errors import StageError
from automation.stages.benchmark import concurrency_levels
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("setting", "predicted", "expected"),
    [
        ("auto", 32.0, [1, 2, 4, 8, 16, 32]),
        ("auto", 10.4, [1, 2, 4, 8, 10]),
        ("auto", 1.0, [1]),
        ("auto", 0.2, [1]),
        ([3, 7], 32.0, [3, 7]),
    ],
)
def test_concurrency_levels(setting: object, predicted: float, expected: list[int]) -> None:
    assert concurrency_levels(setting, predicted) == expected  # type: ignore[arg-type]


def test_stats_by_hand() -> None:
    got = stats([4.0, 1.0, 3.0, 2.0])
    assert got["avg"] == 2.5 and got["min"] == 1.0 and got["max"] == 4.0
    assert got["p50"] == pytest.approx(2.5) and got["p90"] == pytest.approx(3.7)
    assert got["std"] == pytest.approx(1.118, abs=1e-3)
    assert stats([]) == {}


def test_request_metrics_follow_aiperf() -> None:
    record = RequestRecord(index=0, warmup=False, start=10.0, first_token=10.1, end=11.0, output_tokens=10)
    assert record.ttft_ms == pytest.approx(100.0)
    assert record.latency_ms == pytest.approx(1000.0)
    assert record.itl_ms == pytest.approx(100.0)  # (1000 − 100) / (10 − 1)


def test_level_summary_excludes_warmup_and_errors() -> None:
    records = [
        RequestRecord(0, True, 0.0, 0.1, 5.0, 100),  # warm-up: not counted, not in the duration
        RequestRecord(1, False, 1.0, 1.2, 3.0, 10),
        RequestRecord(2, False, 2.0, 2.1, 4.0, 20),
        RequestRecord(3, False, 2.5, error="HTTP 503: busy"),
    ]
    summary = summarize(records, concurrency=2, gpus=4)
    assert summary["requests"] == 3 and summary["errors"] == 1
    assert summary["error_examples"] == ["HTTP 503: busy"]
    assert summary["duration_s"] == pytest.approx(3.0)  # first measured start 1.0 → last end 4.0
    assert summary["output_token_throughput"] == pytest.approx(10.0)  # 30 tokens / 3 s
    assert summary["tokens_per_s_per_gpu"] == pytest.approx(2.5)
    assert summary["time_to_first_token_ms"]["avg"] == pytest.approx(150.0)
    itls = [(2000 - 200) / 9, (2000 - 100) / 19]
    assert summary["inter_token_latency_ms"]["avg"] == pytest.approx(sum(itls) / 2)
    assert summary["output_token_throughput_per_user"] == pytest.approx(sum(1000 / v for v in itls) / 2)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("tok") / "model"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-tiny-model.py"), str(path)], check=True)
    return read_tokenizer(path)


def test_prompts_have_exactly_isl_tokens_and_share_no_prefix(tiny_tokenizer: str) -> None:
    maker = PromptMaker(tiny_tokenizer, isl=300, seed=5)
    prompts = [maker.make(i) for i in range(20)]
    for prompt in prompts:
        assert len(maker.tokenizer.encode(prompt, add_special_tokens=False).ids) == 300
        assert "<|" not in prompt  # no special tokens
    assert len({p.split()[0] for p in prompts}) == 20  # distinct first tokens: no shared prefix
    assert PromptMaker(tiny_tokenizer, isl=300, seed=5).make(7) == prompts[7]  # reproducible
    assert PromptMaker(tiny_tokenizer, isl=300, seed=6).make(7) != prompts[7]
    unknown = maker.tokenizer.token_to_id("[UNK]")
    assert unknown not in maker.ids and 0 not in maker.ids  # neither [UNK] nor special tokens are drawn


def test_missing_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"no tokenizer\.json at"):
        read_tokenizer(tmp_path)
