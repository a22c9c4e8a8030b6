"""End-to-end fixtures: archives built with the real `tskit build` CLI, served by a real TorchServe."""
import json
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from export.zoo import (CONFIG_DIR, DEFAULT_NAME, ZOO_DIR, efficientnet_lite0_weights, reference_photos,
                        sample_photos, write_imagenet_labels)
from tskit.client import read_keys
from tskit.server import TorchServeProcess

REPO = CONFIG_DIR.parent
TSKIT = [sys.executable, "-m", "tskit.cli"]
# drift windows small enough for a test to fill them (per worker); the rest is the shipped config
E2E_DRIFT = {"drift_window": 48, "drift_min_count": 24, "drift_every": 8}
# how long a drift test scrapes for its gauges: a liveness bound for a loaded 2-core machine, not a speed one
DRIFT_LIVENESS_S = 120
SLOW_MODEL_FILE = Path(__file__).with_name("slow_model.py")


def drift_build_inputs(work: Path, config: Path, drift: dict, reference: list) -> tuple[Path, Path]:
    """What `tskit build --config --reference` takes for a drift test: `config` with `drift` in its handler
    section, as work/model-config.yaml, and the `reference` inputs (name, payload) as files in work/reference."""
    settings = yaml.safe_load(Path(config).read_text())
    settings["handler"].update(drift)
    (work / "model-config.yaml").write_text(yaml.safe_dump(settings))
    (work / "reference").mkdir()
    for item in reference:
        (work / "reference" / item.name).write_bytes(item.payload)
    return work / "model-config.yaml", work / "reference"


def tskit_build(store: Path, work: Path) -> Path:
    """The default archive through the CLI, with the guard photos as its drift reference."""
    labels = write_imagenet_labels(work / "index_to_name.json")
    config, reference = drift_build_inputs(work, CONFIG_DIR / f"{DEFAULT_NAME}.yaml", E2E_DRIFT, reference_photos())
    cmd = TSKIT + ["build", DEFAULT_NAME, "--serialized-file", efficientnet_lite0_weights(),
                   "--model-file", str(ZOO_DIR / "efficientnet_lite0.py"), "--handler", "image_classifier",
                   "--labels", str(labels), "--config", str(config),
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


def tskit_cli(ts: TorchServeProcess, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`tskit ARGS` against the live server `ts`: its config.properties, and the key file in its workdir."""
    return subprocess.run(TSKIT + [*args, "--config", str(ts.config_file), "--workdir", str(ts.workdir)],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout)


def build_slow_archive(store: Path, work: Path, name: str, frontend: dict) -> Path:
    """`slow_model.py` behind the tensor handler (rows of 4 features; the first is seconds to sleep), with
    TorchServe settings `frontend` (workers, batching, responseTimeout) in its model-config.yaml."""
    import torch

    from export.archive import ArchiveSpec, build_archive
    from export.golden import GoldenInput
    from handlers.loading import load_module_class

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    weights = work / f"{name}.pt"
    torch.save(load_module_class(str(SLOW_MODEL_FILE))().state_dict(), weights)
    schema = work / "tensor_schema.json"
    schema.write_text(json.dumps({"shape": [4], "dtype": "float32", "labels": ["a", "b"]}))
    return build_archive(ArchiveSpec(
        name=name, serialized_file=str(weights), model_file=str(SLOW_MODEL_FILE), handler="tensor",
        config={**frontend, "handler": {"topk": 2}}, export_path=str(store), extra_files=[str(schema)],
        golden_inputs=[GoldenInput("row.json", slow_row(0), "application/json")]))


def slow_row(seconds: float) -> bytes:
    """A request body for the slow model that makes its forward sleep `seconds`."""
    return json.dumps([seconds, 1.0, 2.0, 3.0]).encode()


def tamper_archive(mar: Path, out: Path, member: str = "handlers/payload.py") -> Path:
    """A copy of a sealed archive with one line appended to `member` after sealing."""
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, data + b"\n# injected\n" if item.filename == member else data)
    return out


@pytest.fixture(scope="session")
def curl():
    """`curl(server, path, *args)`: the real curl binary against a live server, with the Bearer token read
    from the server's key_file.json as a user would; returns (HTTP status, body parsed as JSON or text)."""
    def run(server, path: str, *args: str):
        key = read_keys(server.workdir / "key_file.json")["inference"]
        cmd = ["curl", "-sS", "--max-time", "300", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {key}",
               f"{server.client.inference_url}{path}", *args]
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        body, _, status = result.stdout.rpartition("\n")
        try:
            return int(status), json.loads(body)
        except ValueError:
            return int(status), body
    return run


@pytest.fixture(scope="session")
def kserve_built(e2e_store, text_mar, tabular_mar, detector_mar, tmp_path_factory):
    """One archive per handler, as built: the default image classifier, the spam text classifier, the tabular
    model and the scene detector."""
    built = tmp_path_factory.mktemp("kserve-built")
    for mar in (e2e_store / f"{DEFAULT_NAME}.mar", text_mar, tabular_mar, detector_mar):
        shutil.copy(mar, built)
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


def stock_venv(root: Path, blocked: tuple[str, ...] = ()) -> str:
    """A Python that sees the installed torch/torchserve but not this project, as a stock TorchServe host has, nor
    the `blocked` packages (each shadowed by one that fails to import, as a missing one does).

    A venv whose one .pth file adds the project venv's site-packages as a plain path: .pth files inside that
    folder (the project's editable install among them) are not processed, so `handlers`, `export` and `tskit`
    are not importable, while torch, ts and PIL are."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    paths = []
    if blocked:
        for package in blocked:
            (root / "blocked" / package).mkdir(parents=True)
            (root / "blocked" / package / "__init__.py").write_text(
                f"raise ModuleNotFoundError(\"No module named '{package}'\", name='{package}')\n")
        paths.append(str(root / "blocked"))
    Path(site, "stock.pth").write_text("\n".join([*paths, sysconfig.get_paths()["purelib"]]) + "\n")
    probe = subprocess.run([str(python), "-c", "import ts, torch, PIL\nimport handlers"], capture_output=True,
                           text=True, cwd=root)
    assert "No module named 'handlers'" in probe.stderr, "the stock Python must not see the project"
    for package in blocked:
        probe = subprocess.run([str(python), "-c", f"import {package}"], capture_output=True, text=True, cwd=root)
        assert f"No module named '{package}'" in probe.stderr, probe.stderr
    return str(python)


@pytest.fixture(scope="session")
def stock_python(tmp_path_factory) -> str:
    return stock_venv(tmp_path_factory.mktemp("stock-venv"))


def wait_drift(client, until, what: str, **labels: str) -> dict[str, float]:
    """TskitDriftPSI by feature once `until(values)` holds, scraped every 0.25 s for up to DRIFT_LIVENESS_S:
    workers report metrics through their log, so the gauges trail the answers, and by more on a busy machine.
    The scraping time is printed (`pytest -rP`), never asserted; the caller asserts on the values returned."""
    def holds(values: dict) -> bool:
        try:
            return until(values)
        except (KeyError, ValueError):  # a feature not reported yet
            return False

    start = time.monotonic()
    values = client.wait_metric("TskitDriftPSI", "Feature", holds, timeout=DRIFT_LIVENESS_S, **labels)
    print(f"{what}: TskitDriftPSI read after {time.monotonic() - start:.1f} s of scraping: "
          + ", ".join(f"{k}={v:.2f}" for k, v in sorted(values.items())))
    return values
