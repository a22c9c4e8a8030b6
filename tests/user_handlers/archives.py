"""The user handlers of this folder packed as users pack them: `tskit build --handler` through the real CLI, and
one archive made with plain `torch-model-archiver` from the README's command line (`tskit bundle` first).

    top1        top1_handler.py         postprocess override             default model, eager
    tempered    tempered_handler.py     inference override               default model, eager
    mirrored    mirrored_handler.py     preprocess override + mylib/     default model, eager
    stock_style stock_style_handler.py  TorchServe's stock ImageClassifier  default model, TorchScript
    plain       top1_handler.py         plain torch-model-archiver       default model, eager
    strict      strict_rows_handler.py  decode/postprocess that raise    tabular MLP
    needs_dep   needs_dep_handler.py    --requirements (built where tskit-fixture-dep is installed)  tabular MLP
"""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from export.golden import GoldenInput
from export.zoo import CONFIG_DIR, ZOO_DIR, efficientnet_lite0_weights, golden_photos, write_imagenet_labels
from export.zoo.tabular import export_files, golden_rows

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TSKIT = [sys.executable, "-m", "tskit.cli"]
FIXTURE_SITE = HERE / "fixture_site"  # a package installed where needs_dep is built, not where it is served
FRONTEND = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 50, "responseTimeout": 120}


def write_inputs(folder: Path, inputs: list[GoldenInput]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for item in inputs:
        (folder / item.name).write_bytes(item.payload)
    return folder


def image_config(work: Path) -> Path:
    """The default model's handler settings with one worker and batches of 4 gathered over 50 ms."""
    config = yaml.safe_load((CONFIG_DIR / "efficientnet_lite0.yaml").read_text())
    config.update(FRONTEND)
    path = work / "image-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(cmd: list[str], env: dict | None = None) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def build_user_archives(store: Path, work: Path, torchscript: Path) -> dict[str, Path]:
    """Every archive of the table above into `store`; `torchscript` is the default model as TorchScript."""
    store.mkdir(parents=True, exist_ok=True)
    labels = str(write_imagenet_labels(work / "index_to_name.json"))
    golden = str(write_inputs(work / "golden", golden_photos()[:2]))
    config = str(image_config(work))
    lite0 = ["--serialized-file", efficientnet_lite0_weights(), "--model-file", str(ZOO_DIR / "efficientnet_lite0.py"),
             "--labels", labels, "--config", config, "--golden", golden]
    weights, schema = export_files(work / "tabular")
    rows = str(write_inputs(work / "rows", golden_rows(2)))
    tabular = ["--serialized-file", str(weights), "--model-file", str(ZOO_DIR / "tabular_mlp.py"),
               "--extra-files", str(schema), "--golden", rows]
    out = ["--export-path", str(store)]
    builds = {
        "top1": ["--handler", str(HERE / "top1_handler.py"), *lite0],
        "tempered": ["--handler", str(HERE / "tempered_handler.py"), *lite0],
        "mirrored": ["--handler", str(HERE / "mirrored_handler.py"), *lite0, "--extra-files", str(HERE / "mylib")],
        "stock_style": ["--handler", str(HERE / "stock_style_handler.py"), "--serialized-file", str(torchscript),
                        "--labels", labels, "--config", config, "--golden", golden],
        "strict": ["--handler", str(HERE / "strict_rows_handler.py"), *tabular],
        "needs_dep": ["--handler", str(HERE / "needs_dep_handler.py"), *tabular,
                      "--requirements", str(HERE / "needs_dep_requirements.txt")],
    }
    dep_env = {**os.environ, "PYTHONPATH": str(FIXTURE_SITE)}

    def build(name: str) -> Path:
        run(TSKIT + ["build", name, *builds[name], *out], env=dep_env if name == "needs_dep" else None)
        return store / f"{name}.mar"

    with ThreadPoolExecutor(2) as pool:
        archives = dict(zip(builds, pool.map(build, builds)))
    archives["plain"] = plain_archive(store, work, labels, config)
    return archives


def plain_archive(store: Path, work: Path, labels: str, config: str) -> Path:
    """The README's recipe for plain torch-model-archiver: `tskit bundle` lays out the library (and any package of
    your own) in one folder, which the archiver gets as --extra-files (it copies a folder's contents); its
    model-config.yaml says `integrity: off`, since such an archive has no manifest to check."""
    plain_config = work / "plain-config.yaml"
    plain_config.write_text(Path(config).read_text() + "integrity: off\n")
    config = str(plain_config)
    bundle = work / "bundle"
    run(TSKIT + ["bundle", str(bundle), "--handler", str(HERE / "top1_handler.py")])
    archiver = str(Path(sys.executable).with_name("torch-model-archiver"))
    run([archiver, "--model-name", "plain", "--version", "1.0",
         "--serialized-file", efficientnet_lite0_weights(), "--model-file", str(ZOO_DIR / "efficientnet_lite0.py"),
         "--handler", str(HERE / "top1_handler.py"), "--extra-files", f"{bundle},{labels}",
         "--config-file", config, "--export-path", str(store)])
    return store / "plain.mar"
