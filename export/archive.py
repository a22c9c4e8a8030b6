"""Build a self-contained `.mar` with the real `torch-model-archiver`.

Self-contained means a stock TorchServe, whose Python does not have this project installed, serves it:
the archive carries the `handlers` package, the model file, the labels and a `model-config.yaml`, and for a
user's own handler file its module, its `--extra-files` folders as packages and the entry module TorchServe
loads (export/user_handler.py).
"""
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

import handlers
from export.golden import GoldenInput
from export.manifest import seal_archive
from export.user_handler import (LIBRARY_PACKAGE, UserHandler, check_names, inspect_handler, is_handler_file,
                                 stage_user_module, write_entry)
from handlers.drift import REFERENCE_NAME
from handlers.explain import EXPLAIN_MODEL_FILE, EXPLAIN_WEIGHTS
from handlers.requirements import parse_requirements, unmet

HANDLERS_DIR = Path(handlers.__file__).resolve().parent

# TorchServe's per-model keys, under the user's values (everything else in model-config.yaml reaches the handler)
DEFAULT_FRONTEND = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 10, "responseTimeout": 120}


@dataclass
class ArchiveSpec:
    name: str
    serialized_file: str | None
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
    # a requirements.txt of the user's handler code: recorded in the manifest and checked where it is served
    requirements: str | None = None
    # a drift reference already computed (tskit-reference.json of the archive an optimized one derives from)
    reference_file: str | None = None
    manifest_extra: dict = field(default_factory=dict)  # more manifest sections (tskit optimize's report)
    # a Hugging Face folder, instead of a serialized file, for the transformer tasks (export/hugging_face.py),
    # exported in `model_format`
    model_dir: str | None = None
    model_format: str = "eager"


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


IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def bundle_library(folder: Path) -> Path:
    """This library's `handlers` package, copied into `folder` (what an archive carries at its root)."""
    target = Path(folder) / LIBRARY_PACKAGE
    shutil.copytree(HANDLERS_DIR, target, ignore=IGNORED, dirs_exist_ok=True)
    return target


def copy_extra(extra: str, bundle: Path) -> None:
    """A file to the archive root; a folder as a folder of that name (a package stays importable by it)."""
    path = Path(extra)
    if path.is_dir():
        shutil.copytree(path, bundle / path.name, ignore=IGNORED)
    elif path.is_file():
        shutil.copy(path, bundle / path.name)
    else:
        raise FileNotFoundError(f"extra file not found: {extra}")


def openvino_weights(serialized_file: str) -> list[str]:
    """An OpenVINO IR's `.bin`, which OpenVINO reads from beside its `.xml`: it travels with it."""
    weights = Path(serialized_file).with_suffix(".bin")
    if not serialized_file.endswith(".xml"):
        return []
    if not weights.is_file():
        raise FileNotFoundError(f"OpenVINO IR {serialized_file} needs its weights {weights} beside it")
    return [str(weights)]


def stage_bundle(spec: ArchiveSpec, stage: Path) -> tuple[Path, Path, UserHandler | None]:
    """Lay out what goes into the archive; returns (handler entry file, extra-files folder, the user's handler
    for a handler file)."""
    user_file = Path(spec.handler) if is_handler_file(spec.handler) else None
    if user_file is None and spec.handler not in handlers.TASKS:
        raise ValueError(f"unknown handler {spec.handler!r}: give one of {sorted(handlers.TASKS)} or your own "
                         "handler file (my_handler.py)")
    if user_file is not None:
        if not user_file.is_file():
            raise FileNotFoundError(f"handler file not found: {user_file}")
        check_names(user_file, spec.extra_files)
    bundle = stage / "bundle"
    bundle_library(bundle)
    if spec.labels:
        shutil.copy(spec.labels, bundle / "index_to_name.json")
    for extra in spec.extra_files + openvino_weights(spec.serialized_file):
        copy_extra(extra, bundle)
    if spec.explain_weights:
        shutil.copy(spec.explain_weights, bundle / EXPLAIN_WEIGHTS)
        shutil.copy(spec.explain_model_file or spec.model_file, bundle / EXPLAIN_MODEL_FILE)
    if spec.reference_file:
        shutil.copy(spec.reference_file, bundle / REFERENCE_NAME)
    if spec.golden_inputs:
        (bundle / "golden").mkdir()
        for golden in spec.golden_inputs:
            (bundle / "golden" / golden.name).write_bytes(golden.payload)
    if user_file is None:
        return HANDLERS_DIR / handlers.TASKS[spec.handler].file, bundle, None
    user = inspect_handler(bundle, stage_user_module(user_file, bundle), stage)
    if spec.reference_inputs and user.kind != "tskit":
        raise ValueError(f"{user.module}.{user.class_name} derives from TorchServe's classes, which have no drift "
                         "features: a drift reference (--reference) needs a handler of this library")
    return write_entry(user, stage), bundle, user


def build_archive(spec: ArchiveSpec) -> Path:
    """Write `{export_path}/{name}.mar`, sealed with its reproducibility manifest, and return its path."""
    if spec.model_dir:
        from export.hugging_face import transformer_spec

        with tempfile.TemporaryDirectory(prefix=f"tskit-{spec.name}-hf-") as tmp:
            return build_archive(transformer_spec(spec, Path(tmp)))
    if not spec.serialized_file:
        raise ValueError("give the model: a serialized file (--serialized-file), or for a transformer task a "
                         "Hugging Face folder (--model-dir)")

    for label, path in (("serialized file", spec.serialized_file), ("model file", spec.model_file),
                        ("labels", spec.labels), ("explanation weights", spec.explain_weights),
                        ("explanation model file", spec.explain_model_file)):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{label} not found: {path}")
    if spec.explain_weights and not (spec.explain_model_file or spec.model_file):
        raise ValueError("explanation weights need the model file that defines their class (--explain-model-file)")
    os.makedirs(spec.export_path, exist_ok=True)
    requirements = read_requirements(spec.requirements)
    with tempfile.TemporaryDirectory(prefix=f"tskit-{spec.name}-") as tmp:
        stage = Path(tmp)
        entry, bundle, user = stage_bundle(spec, stage)
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
        if spec.requirements:  # TorchServe installs it per model only where install_py_dep_per_model=true
            cmd += ["--requirements-file", spec.requirements]
        # the archiver stages files under $TMPDIR/<model name>: keep concurrent builds apart
        env = {**os.environ, "TMPDIR": tmp}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed ({result.returncode}):\n{result.stderr}")
        mar = Path(spec.export_path) / f"{spec.name}.mar"
        try:
            seal_archive(mar, spec.golden_inputs, config, stage, spec.reference_inputs, requirements,
                         asdict(user) if user else None, spec.manifest_extra)
        except BaseException:  # an archive that could not be sealed (refused, or failed) must not be served
            mar.unlink(missing_ok=True)
            raise
    return mar


def read_requirements(path: str | None) -> list[str]:
    """The requirements file's packages; the build runs the handler (inspection, golden answers), so they
    must be installed here too."""
    if not path:
        return []
    if not os.path.isfile(path):
        raise FileNotFoundError(f"requirements file not found: {path}")
    requirements = parse_requirements(Path(path).read_text(), path)
    problems = unmet(requirements)
    if problems:
        raise ValueError("tskit build runs the handler to inspect it and record its golden answers, so its "
                         f"requirements must be installed here too; missing: {', '.join(problems)}")
    return requirements
