"""tools/bench_criteo1tb.py end to end at a tiny size: day files -> ctr-preprocess (the last
day the test split) -> ctr-train --loader stream --nproc 2 -> per-rank memory, loader vs step
rate, test AUC; a second run reuses the processed dataset after --delete-days."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_criteo1tb.py"
TINY = ["--rows", "60k", "--days", "3", "--steps", "3", "--batch", "1k", "--row-group-rows", "4096",
        "--shuffle-buffer", "8192", "--min-count", "2", "--train-args", "--mlp 32,32", "--quiet"]


def _run(work: Path, *extra: str) -> tuple[dict, str]:
    out = work / "r.json"
    p = subprocess.run([sys.executable, str(TOOL), *TINY, "--workdir", str(work), "--json", str(out),
                        *extra], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(out.read_text()), p.stdout


@pytest.mark.slow
def test_bench_criteo1tb_end_to_end_and_reuse(tmp_path):
    res, stdout = _run(tmp_path, "--delete-days")
    (r,) = res["results"]
    assert (r["rows"], r["days_how"], r["processed_how"]) == (60_000, "generated", "preprocessed")
    assert [f["rows"] for f in r["days"]["files"]] == [20_000] * 3
    assert r["preprocess"]["splits"] == {"train": 40_000, "test": 20_000}    # test = the last day
    assert "--split files:2,1" in r["preprocess"]["command"]
    assert r["preprocess"]["peak_rss_bytes"] > 50 * 2**20
    tr = r["train"]
    assert tr["status"] == "ok" and tr["global_steps"] == 3 and tr["world_size"] == 2
    assert 0.0 < tr["test_auc"] < 1.0 and 0.8 < r["days"]["oracle_last"]["test_auc"] < 0.9
    assert [m["rank"] for m in r["memory"]] == [0, 1]
    for m, rank in zip(r["memory"], tr["ranks"]):
        assert m["tables_wmv_mb"] == pytest.approx(3 * rank["table_bytes"] / 2**20)
        assert m["else_mb"] == pytest.approx(m["peak_rss_mb"] - 4 * rank["table_bytes"] / 2**20)
        assert 0 < m["else_before_eval_mb"] <= m["else_mb"]
    ld = r["loader"]
    assert [x["rank"] for x in ld["ranks"]] == [0, 1] and ld["rows"] >= 2 * 8192
    assert r["loader_over_step"] == pytest.approx(ld["rows_per_s"] / r["step_rate"])
    assert "| rows | rank | peak RSS |" in stdout and "command: python tools/bench_criteo1tb.py" in stdout
    assert not list((tmp_path / "days-60k-d3-s0").iterdir())                # --delete-days
    again, _ = _run(tmp_path)
    (r2,) = again["results"]
    assert (r2["days_how"], r2["processed_how"]) == ("not needed", "reused")
    assert r2["days"]["oracle_last"] == r["days"]["oracle_last"]
    assert r2["train"]["test_auc"] == pytest.approx(tr["test_auc"], abs=1e-6)   # same data, same seed
