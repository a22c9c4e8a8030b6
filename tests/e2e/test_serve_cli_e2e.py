"""`tskit serve` and `tskit stop` (what `make serve` and `make stop` run) with the shipped config copied into a
project folder and started from another directory: relative paths resolve against the config's folder."""
import shutil
import subprocess
import sys

from export.zoo import DEFAULT_NAME, SAMPLE_TOP1
from tests.e2e.conftest import REPO
from tskit.client import TorchServeClient
from tskit.properties import read_properties, write_properties
from tskit.server import PORT_KEYS, free_port

TSKIT = [sys.executable, "-m", "tskit.cli"]


def test_serve_from_another_directory_then_stop(e2e_store, photo_bytes, tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "config").mkdir(parents=True)
    elsewhere.mkdir()
    shutil.copy(REPO / "config" / "metrics.yaml", project / "config" / "metrics.yaml")
    shutil.copytree(e2e_store, project / "model_store")
    props = read_properties(REPO / "config.properties")
    assert props["model_store"] == "model_store" and props["metrics_config"] == "config/metrics.yaml"  # relative
    props.update({key: fmt.format(free_port()) for key, fmt in PORT_KEYS.items()})
    write_properties(project / "config.properties", props)
    config = "../project/config.properties"
    try:
        served = subprocess.run(TSKIT + ["serve", "--config", config, "--sample", "photo.png", "--timeout", "300"],
                                capture_output=True, text=True, cwd=elsewhere, timeout=400)
        assert served.returncode == 0, served.stdout + served.stderr
        assert f"{DEFAULT_NAME}: 2 worker(s) READY" in served.stdout and "curl -H" in served.stdout
        client = TorchServeClient.from_config(project / "config.properties", elsewhere)
        answer = client.predict(DEFAULT_NAME, photo_bytes["coffee.png"], timeout=60)
        assert answer.status_code == 200 and next(iter(answer.json())) in SAMPLE_TOP1["coffee.png"], answer.text
        assert (elsewhere / "key_file.json").is_file() and (elsewhere / "logs").is_dir()
    finally:
        stopped = subprocess.run(TSKIT + ["stop"], capture_output=True, text=True, cwd=elsewhere, timeout=120)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not TorchServeClient.from_config(project / "config.properties", elsewhere).ping()
