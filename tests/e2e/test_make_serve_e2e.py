"""The `make serve` recipe's steps (`tskit serve --config config.properties --sample ...`, then `tskit stop`) on a
fresh copy of the project's config, with the default model's archive served by 1 worker or by 2, as `tskit
optimize` may choose either: `tskit serve` waits for what TorchServe registered, never for a number read
elsewhere, and a `models=` entry that disagrees with its archive is one line naming both values."""
import json
import shutil
import subprocess
import sys

import pytest

from export.archive import ArchiveSpec, build_archive
from export.zoo import DEFAULT_NAME
from export.zoo.minilm import EMBEDDER_NAME, SPAM_NAME
from tests.e2e.conftest import REPO
from tskit.client import TorchServeClient
from tskit.properties import read_properties, write_properties
from tskit.server import PORT_KEYS, free_port
from tskit.stand_in import stand_in_files

TSKIT = [sys.executable, "-m", "tskit.cli"]
CONFIG_SAYS_TWO = ('{"efficientnet_lite0": {"1.0": {"defaultVersion": true, "marName": "efficientnet_lite0.mar", '
                   '"minWorkers": 2, "maxWorkers": 2, "batchSize": 8, "maxBatchDelay": 5}}}')


def fresh_project(root, workers: int, photo: bytes, models: str | None = None):
    """What a fresh clone holds after `make archives samples`: config.properties (on free ports), config/metrics.yaml,
    samples/coffee.png and model_store/efficientnet_lite0.mar, here a stand-in whose archive says `workers`, and the
    two MiniLM archives, here stand-ins of their tasks under their names."""
    (root / "config").mkdir(parents=True)
    (root / "samples").mkdir()
    shutil.copy(REPO / "config" / "metrics.yaml", root / "config" / "metrics.yaml")
    (root / "samples" / "coffee.png").write_bytes(photo)
    files = stand_in_files("image_classifier", root / "build")
    build_archive(ArchiveSpec(name=DEFAULT_NAME, serialized_file=files.serialized_file, model_file=files.model_file,
                              labels=files.labels, export_path=str(root / "model_store"),
                              config={"minWorkers": workers, "maxWorkers": workers, "batchSize": 8,
                                      "maxBatchDelay": 5, "handler": {"threads": 1}}))
    for name, task in ((EMBEDDER_NAME, "sentence_embedder"), (SPAM_NAME, "transformer_classifier")):
        text = stand_in_files(task, root / "build" / task)
        build_archive(ArchiveSpec(name=name, serialized_file=None, handler=task, model_dir=text.model_dir,
                                  export_path=str(root / "model_store"), model_format="onnx",
                                  config={"handler": {"threads": 1}}))
    props = read_properties(REPO / "config.properties")
    props.update({key: fmt.format(free_port()) for key, fmt in PORT_KEYS.items()})
    if models:
        props["models"] = models
    write_properties(root / "config.properties", props)


@pytest.mark.parametrize("workers, models", [(1, CONFIG_SAYS_TWO), (2, None)], ids=["1-worker", "2-worker"])
def test_make_serve_steps_wait_for_what_torchserve_registered(workers, models, photo_bytes, tmp_path):
    project = tmp_path / "project"
    fresh_project(project, workers, photo_bytes["coffee.png"], models)
    try:
        # a wait for the config's 2 workers would time out here, as the 300 s one did before
        served = subprocess.run(TSKIT + ["serve", "--config", "config.properties", "--sample", "samples/coffee.png",
                                         "--timeout", "120"], capture_output=True, text=True, cwd=project, timeout=300)
        print(served.stdout + served.stderr)
        assert served.returncode == 0, served.stdout + served.stderr
        assert f"{DEFAULT_NAME}: {workers} worker(s) READY, batch size 8" in served.stdout
        disagreement = [line for line in served.stdout.splitlines() if "config.properties says" in line]
        if models:
            assert disagreement == [
                f"{DEFAULT_NAME}: config.properties says minWorkers 2, the archive's model-config.yaml says 1; "
                "TorchServe registered 1 (the archive's)",
                f"{DEFAULT_NAME}: config.properties says maxWorkers 2, the archive's model-config.yaml says 1; "
                "TorchServe registered 1 (the archive's)"]
        else:
            assert not disagreement
        client = TorchServeClient.from_config(project / "config.properties", project)
        assert client.ready_workers(DEFAULT_NAME) == workers
        answer = client.predict(DEFAULT_NAME, photo_bytes["coffee.png"], timeout=60)
        assert answer.status_code == 200 and len(answer.json()) == 5, answer.text
        curls = [line.strip() for line in served.stdout.splitlines() if line.strip().startswith("curl ")]
        assert len(curls) == 3, served.stdout
        text_curl = next(c for c in curls if f"/predictions/{SPAM_NAME} " in c)
        tried = subprocess.run(["bash", "-c", text_curl], capture_output=True, text=True, cwd=project, timeout=60)
        assert set(json.loads(tried.stdout)) == {"ham", "spam"}, (text_curl, tried.stdout, tried.stderr)
    finally:
        stopped = subprocess.run(TSKIT + ["stop"], capture_output=True, text=True, cwd=project, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
