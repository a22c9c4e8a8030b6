"""End-to-end fixtures: archives built with the real `tskit build` CLI, served by a real TorchServe."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from export.zoo import (CONFIG_DIR, DEFAULT_NAME, ZOO_DIR, efficientnet_lite0_weights, reference_photos,
                        sample_photos, write_imagenet_labels)
from tskit.server import TorchServeProcess

REPO = CONFIG_DIR.parent
TSKIT = [sys.executable, "-m", "tskit.cli"]
# drift windows small enough for a test to fill them (per worker); the rest is the shipped config
E2E_DRIFT = {"drift_window": 48, "drift_min_count": 24, "drift_every": 8}


def tskit_build(store: Path, work: Path) -> Path:
    """The default archive through the CLI, with the guard photos as its drift reference."""
    labels = write_imagenet_labels(work / "index_to_name.json")
    reference = work / "reference"
    reference.mkdir()
    for photo in reference_photos():
        (reference / photo.name).write_bytes(photo.payload)
    config = yaml.safe_load((CONFIG_DIR / f"{DEFAULT_NAME}.yaml").read_text())
    config["handler"].update(E2E_DRIFT)
    (work / "model-config.yaml").write_text(yaml.safe_dump(config))
    cmd = TSKIT + ["build", DEFAULT_NAME, "--serialized-file", efficientnet_lite0_weights(),
                   "--model-file", str(ZOO_DIR / "efficientnet_lite0.py"), "--handler", "image_classifier",
                   "--labels", str(labels), "--config", str(work / "model-config.yaml"),
                   "--export-path", str(store), "--reference", str(reference),
                   "--golden", *map(str, sample_photos().values())]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def e2e_store(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e-build")
    store = work / "model_store"
    mar = tskit_build(store, work)
    assert mar == store / f"{DEFAULT_NAME}.mar" and mar.exists()
    return store


@pytest.fixture(scope="module")
def server(e2e_store, tmp_path_factory):
    """The shipped config.properties, as is except for free ports and the model store path."""
    ts = TorchServeProcess(tmp_path_factory.mktemp("ts"), REPO / "config.properties", e2e_store)
    ts.start(timeout=300)
    yield ts
    ts.stop()


@pytest.fixture(scope="session")
def kserve_built(e2e_store, tmp_path_factory):
    """One archive per handler, as built: the default image classifier, the spam text classifier, the tabular
    model and the scene detector."""
    from export.zoo.detection import build_detector_archive
    from export.zoo.tabular import build_tabular_archive
    from export.zoo.text import build_text_archive

    work = tmp_path_factory.mktemp("kserve-build")
    built = work / "built"
    built.mkdir()
    shutil.copy(e2e_store / f"{DEFAULT_NAME}.mar", built)
    build_text_archive(str(built), work / "text")
    build_tabular_archive(built, work / "tabular")
    build_detector_archive(built, work / "detector")
    return built


@pytest.fixture(scope="session")
def kserve_store(kserve_built, tmp_path_factory):
    """`kserve_built` as `tskit k8s` ships archives: batchSize 1, since TorchServe's KServe envelopes answer
    only the first request of a batch; one worker each."""
    from export.variants import derive_archive

    store = tmp_path_factory.mktemp("kserve-store")
    for mar in kserve_built.glob("*.mar"):
        derive_archive(mar, store / mar.name, {"batchSize": 1, "minWorkers": 1, "maxWorkers": 1})
    return store
