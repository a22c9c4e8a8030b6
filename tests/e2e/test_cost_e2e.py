"""`tskit cost` against a real TorchServe: the default archive loaded with one worker and scaled to two, each
worker's and the frontend's memory read from /proc, load and scale times and the first request against the
steady state, in JSON and Markdown."""
import json
import subprocess

from export.zoo import DEFAULT_NAME
from tests.e2e.conftest import REPO, TSKIT


def test_cost_reports_memory_per_worker_and_time_to_ready(e2e_store, tmp_path):
    out = tmp_path / "cost"
    result = subprocess.run(TSKIT + ["cost", str(e2e_store / f"{DEFAULT_NAME}.mar"), "--workers", "1,2",
                                     "--requests", "3", "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [report] = json.loads((out / "cost.json").read_text())["archives"]
    assert report["archive"] == DEFAULT_NAME and report["load_s"] > 0 and report["frontend_up_s"] > 0
    assert report["first_request_ms"] > 0 and report["steady_request_ms"] > 0
    one, two = report["rows"]
    assert (one["workers"], len(one["worker_memory"]), two["workers"], len(two["worker_memory"])) == (1, 1, 2, 2)
    assert one["scale_s"] is None and two["scale_s"] > 0
    for row in (one, two):
        for worker in row["worker_memory"].values():
            assert 0 < worker["uss"] <= worker["pss"] <= worker["rss"], worker
        assert row["frontend"]["rss"] > 0
        parts = sum(w["pss"] for w in row["worker_memory"].values()) + row["frontend"]["pss"]
        assert abs(row["total_pss"] - parts) < 1, "the total is the workers' and the frontend's PSS"
    assert two["pss_per_added_worker"] > 0
    table = (out / "cost.md").read_text()
    assert f"| {DEFAULT_NAME} | 2 |" in table and "smaps_rollup" in table
