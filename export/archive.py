"""Build a self-contained `.mar` with the real `torch-model-archiver`.

Self-contained means a stock TorchServe, whose Python does not have this project installed, serves it:
the archive carries the `handlers` package, the model file, the labels and a `model-config.yaml`.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import handlers
from export.golden import GoldenInput
from handlers.explain import EXPLAIN_MODEL_FILE, EXPLAIN_WEIGHTS
from export.manifest import seal_archive

HANDLERS_DIR = Path(handlers.__file__).resolve().parent

# TorchServe's per-model keys (everything else in model-config.yaml reaches the handler untouched).
FRONTEND_KEYS = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout")
DEFAULT_FRONTEND = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 10, "responseTimeout": 120}


@dataclass
class ArchiveSpec:
    name: str
    serialized_file: str
    handler: str = "image_classifier"
    model_file: str | None = None
    labels: str | None = None
    config: dict = field(default_factory=dict)
    export_path: str = "model_store"
    version: str = "1.0"
    extra_files: list[str] = field(default_factory=list)
    golden_inputs: list[GoldenInput] = field(default_factory=list)
    # requests whose drift statistics become the archive's tskit-reference.json (export/reference.py)
    reference_inputs: list[GoldenInput] = field(default_factory=list)
    # an eager state_dict (+ its model file, default `model_file`) shipped for explanations: what lets an
    # archive of a compiled format answer /explanations; loaded only when an explanation is asked for
    explain_weights: str | None = None
    explain_model_file: str | None = None


def archiver_command() -> list[str]:
    """`torch-model-archiver` from this Python's environment (a venv need not be activated)."""
    exe = Path(sys.executable).with_name("torch-model-archiver")
    return [str(exe)] if exe.exists() else ["torch-model-archiver"]


def model_config(user_config: dict) -> dict:
    """The archive's model-config.yaml: TorchServe batching/worker defaults under the user's values."""
    config = {**DEFAULT_FRONTEND, **(user_config or {})}
    config.setdefault("handler", {})
    return config


def read_config(path: str | None) -> dict:
    if not path:
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


def stage_bundle(spec: ArchiveSpec, stage: Path) -> tuple[Path, Path]:
    """Lay out what goes into the archive; returns (handler entry file, extra-files folder)."""
    if spec.handler not in handlers.TASKS:
        raise ValueError(f"unknown handler {spec.handler!r}; choose one of {sorted(handlers.TASKS)}")
    bundle = stage / "bundle"
    shutil.copytree(HANDLERS_DIR, bundle / "handlers", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if spec.labels:
        shutil.copy(spec.labels, bundle / "index_to_name.json")
    for extra in spec.extra_files:
        shutil.copy(extra, bundle / os.path.basename(extra))
    if spec.explain_weights:
        shutil.copy(spec.explain_weights, bundle / EXPLAIN_WEIGHTS)
        shutil.copy(spec.explain_model_file or spec.model_file, bundle / EXPLAIN_MODEL_FILE)
    if spec.golden_inputs:
        (bundle / "golden").mkdir()
        for golden in spec.golden_inputs:
            (bundle / "golden" / golden.name).write_bytes(golden.payload)
    return HANDLERS_DIR / handlers.TASKS[spec.handler][0], bundle


def build_archive(spec: ArchiveSpec) -> Path:
    """Write `{export_path}/{name}.mar`, sealed with its reproducibility manifest, and return its path."""

    for label, path in (("serialized file", spec.serialized_file), ("model file", spec.model_file),
                        ("labels", spec.labels), ("explanation weights", spec.explain_weights),
                        ("explanation model file", spec.explain_model_file)):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{label} not found: {path}")
    if spec.explain_weights and not (spec.explain_model_file or spec.model_file):
        raise ValueError("explanation weights need the model file that defines their class (--explain-model-file)")
    os.makedirs(spec.export_path, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"tskit-{spec.name}-") as tmp:
        stage = Path(tmp)
        entry, bundle = stage_bundle(spec, stage)
        config_path = stage / "model-config.yaml"
        config = model_config(spec.config)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd = archiver_command() + [
            "--model-name", spec.name,
            "--version", spec.version,
            "--serialized-file", spec.serialized_file,
            "--handler", str(entry),
            "--extra-files", str(bundle),
            "--config-file", str(config_path),
            "--export-path", spec.export_path,
            "--force",
        ]
        if spec.model_file:
            cmd += ["--model-file", spec.model_file]
        # the archiver stages files under $TMPDIR/<model name>: keep concurrent builds apart
        env = {**os.environ, "TMPDIR": tmp}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed ({result.returncode}):\n{result.stderr}")
        mar = Path(spec.export_path) / f"{spec.name}.mar"
        seal_archive(mar, spec.golden_inputs, config, stage, spec.reference_inputs)
    return mar
