"""`tskit bench` against real TorchServe instances: a short compare run of the stock handler and ours."""
import json
import subprocess
import sys

import pytest

from export.stock import build_stock_archive


@pytest.fixture(scope="module")
def bench_archives(default_mar, tmp_path_factory):
    store = tmp_path_factory.mktemp("bench-store")
    ours = store / default_mar.name
    ours.write_bytes(default_mar.read_bytes())
    return build_stock_archive(store), ours


def test_bench_compare_produces_rows_split_and_reports(bench_archives, tmp_path):
    stock, ours = bench_archives
    out = tmp_path / "bench"
    cli = subprocess.run([sys.executable, "-m", "tskit.cli", "bench", str(stock), str(ours), "--workers", "1",
                          "--batch", "4", "--delay", "10", "--concurrency", "4", "--rate", "4", "--duration", "4",
                          "--warmup", "1", "--generator", "wrk", "--out", str(out)], capture_output=True, text=True,
                         timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "] closed 4 (wrk, client CPU" in cli.stderr  # progress is visible while it runs
    report = json.loads((out / "bench.json").read_text())
    rows = report["rows"]
    assert [(r["archive"], r["mode"]) for r in rows] == [
        (stock.stem, "closed"), (stock.stem, "open"), (ours.stem, "closed"), (ours.stem, "open")]
    assert [r["generator"] for r in rows] == ["wrk", "python", "wrk", "python"]  # the open loop is Python's
    for row in rows:
        assert row["errors"] == 0 and row["ok"] > 0 and row["p50_ms"] <= row["p99_ms"] and row["client_cpu"] >= 0
        assert row["server"]["queue_ms"] is not None
    ours_closed = rows[2]["server"]
    assert ours_closed["inference_ms_per_batch"] > 0 and 1 <= ours_closed["avg_batch_size"] <= 4
    assert report["compare"]["ratio"] > 0
    assert (out / "bench.png").stat().st_size > 0 and "x the throughput" in (out / "bench.md").read_text()
    assert "batchSize: 4" in (out / f"recommended-{ours.stem}.yaml").read_text()


def test_bench_sweeps_precision(bench_archives, tmp_path):
    _, ours = bench_archives
    out = tmp_path / "bench"
    cli = subprocess.run([sys.executable, "-m", "tskit.cli", "bench", str(ours), "--workers", "1", "--batch", "2",
                          "--precision", "fp32,bf16", "--concurrency", "2", "--duration", "2", "--warmup", "1",
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    assert all(r["errors"] == 0 for r in rows), [(r["precision"], r["statuses"]) for r in rows]
    assert "(bf16)" in (out / "bench.md").read_text()
