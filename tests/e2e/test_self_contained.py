"""A stock TorchServe whose Python cannot import this project serves the archive."""
from pathlib import Path

from tskit.server import TorchServeProcess

from export.zoo import DEFAULT_NAME

REPO = Path(__file__).resolve().parents[2]
ONE_WORKER = ('{"%s": {"1.0": {"defaultVersion": true, "marName": "%s.mar", "minWorkers": 1, "maxWorkers": 1, '
              '"batchSize": 4, "maxBatchDelay": 10}}}' % (DEFAULT_NAME, DEFAULT_NAME))


def test_archive_serves_without_the_project_installed(e2e_store, photo_bytes, tmp_path, stock_python):
    ts = TorchServeProcess(tmp_path / "ts", REPO / "config.properties", e2e_store, python=stock_python,
                           overrides={"models": ONE_WORKER})
    with ts:
        response = ts.client.predict(DEFAULT_NAME, photo_bytes["coffee.png"])
        assert response.status_code == 200, response.text
        assert next(iter(response.json())) == "espresso"
    assert "loaded eager model" in ts.log()
