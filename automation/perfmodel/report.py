"""Files of a sweep: per-mode frontier and top-N CSVs, and the Pareto frontier plot (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_search_report(res: Any, save_dir: Path) -> None:
    """Write <dir>/<mode>/pareto.csv, <dir>/<mode>/best_config_topn.csv and <dir>/pareto_frontier.png."""
    import csv

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    for mode, f in res.frontier.items():
        d = save_dir / mode
        d.mkdir(parents=True, exist_ok=True)
        with (d / "pareto.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            columns = ["tokens_per_s_per_user", "tokens_per_s_per_gpu", "ttft_ms", "tpot_ms"]
            w.writerow(columns)
            if any(column not in f for column in columns):
                f = {column: () for column in columns}  # nothing met the SLA in this mode
            for row in zip(
                f["tokens_per_s_per_user"], f["tokens_per_s_per_gpu"], f["ttft_ms"], f["tpot_ms"], strict=True
            ):
                w.writerow([f"{v:.4f}" for v in row])
        rows = [_flat(c.to_row()) for c in res.top.get(mode, [])]
        with (d / "best_config_topn.csv").open("w", newline="") as fh:
            keys = list(rows[0]) if rows else ["rank"]
            table = csv.DictWriter(fh, fieldnames=["rank", *[k for k in keys if k != "rank"]])
            table.writeheader()
            for i, r in enumerate(rows, 1):
                table.writerow({"rank": i, **r})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for mode, f in res.frontier.items():
        if len(f.get("tokens_per_s_per_user", ())):
            ax.plot(f["tokens_per_s_per_user"], f["tokens_per_s_per_gpu"], marker="o", ms=3, label=mode)
    if res.best is not None:
        best = res.best
        ax.plot(
            best.prediction.tokens_per_s_per_user,
            best.tokens_per_s_per_gpu_cluster,
            marker="*",
            ms=16,
            color="crimson",
            ls="none",
            label=f"picked ({best.mode})",
        )
    ax.axvline(1000.0 / res.tpot_ms, color="grey", ls="--", lw=1, label="TPOT limit")
    ax.set_xlabel("tokens/s/user")
    ax.set_ylabel("tokens/s/gpu (cluster)")
    ax.set_title(f"{res.model} on {res.total_gpus}x {res.system}, ISL {res.isl} OSL {res.osl}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(save_dir / "pareto_frontier.png", dpi=110)
    plt.close(fig)


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k == "plan":
            continue
        if isinstance(v, dict):
            out.update({f"{k}_{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out
