"""Soak: `tskit soak` on the default archive at its shipped 2 workers, good and bad requests mixed at a steady rate,
each worker's memory sampled from /proc; memory must level off, not climb. Short enough for `make test` (SOAK_S;
the tens-of-minutes run and its figures are in docs/performance.md); `pytest -rP` prints the report."""
import json
import subprocess

from export.zoo import DEFAULT_NAME
from tests.e2e.conftest import REPO, TSKIT

SOAK_S = 30
RATE = 8
BAD_SHARE = 0.2
MAX_GROWTH_MB = 25  # PSS per worker, from the first tenth of the run to its end


def test_worker_memory_levels_off_under_good_and_bad_requests(e2e_store, tmp_path):
    out = tmp_path / "soak"
    result = subprocess.run(TSKIT + ["soak", str(e2e_store / f"{DEFAULT_NAME}.mar"), "--minutes", str(SOAK_S / 60),
                                     "--rate", str(RATE), "--bad-share", str(BAD_SHARE), "--sample", "2",
                                     "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout)
    report = json.loads((out / "soak.json").read_text())
    statuses = {int(k): v for k, v in report["statuses"].items()}
    sent = sum(statuses.values())
    assert sent == SOAK_S * RATE and set(statuses) <= {200, 400, 413, 415}, statuses
    assert abs((sent - statuses.get(200, 0)) / sent - BAD_SHARE) < 0.02, "each bad request, and only those, a 4xx"
    assert report["restarted"] == [] and len(report["workers"]) == 2
    for worker in report["workers"].values():
        assert worker["samples"] >= SOAK_S / 2 / 2
        assert worker["pss"]["growth"] < MAX_GROWTH_MB, worker
