"""Derive an archive that differs only in its model-config.yaml (workers, batching, handler keys).

TorchServe 0.12 takes a model's batchSize/maxBatchDelay/workers from the archive's model-config.yaml
over config.properties' `models=`, so a benchmark sweep needs one archive per setting. The derived
archive's manifest gets the new config's hash (and preprocessing section); everything else, golden
cases included, stays as built.
"""
import hashlib
import json
import zipfile
from pathlib import Path

import yaml

from handlers.integrity import MANIFEST_NAME

CONFIG_NAME = "model-config.yaml"
ARCHIVER_MANIFEST = "MAR-INF/MANIFEST.json"


def archiver_model(mar: str | Path) -> dict:
    """The `model` section torch-model-archiver wrote into the archive (name, version, handler, files)."""
    with zipfile.ZipFile(mar) as zf:
        return json.loads(zf.read(ARCHIVER_MANIFEST))["model"]


def derive_archive(mar: str | Path, out: str | Path, frontend: dict | None = None, handler: dict | None = None,
                   version: str | None = None) -> Path:
    """Copy `mar` to `out` with top-level keys `frontend` and `handler:` keys `handler` overridden, and
    with another model version if `version` is given (for a rollout beside the original)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(mar) as src:
        names = src.namelist()
        manifest_json = json.loads(src.read(MANIFEST_NAME)) if MANIFEST_NAME in names else None
        raw_config = src.read(CONFIG_NAME) if CONFIG_NAME in names else b""
        config = yaml.safe_load(raw_config) or {}
        config.update(frontend or {})
        if handler:
            config["handler"] = {**config.get("handler", {}), **handler}
        new_config = yaml.safe_dump(config, sort_keys=False).encode()
        if manifest_json is not None:
            manifest_json["files"][CONFIG_NAME] = hashlib.sha256(new_config).hexdigest()
            manifest_json["preprocessing"] = config.get("handler", {})
            if version:
                manifest_json["model"]["version"] = version
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                if item.filename in (CONFIG_NAME, MANIFEST_NAME):
                    continue
                data = src.read(item.filename)
                if item.filename == ARCHIVER_MANIFEST:
                    data = _archiver_manifest(data, version)
                dst.writestr(item, data)
            dst.writestr(CONFIG_NAME, new_config)
            if manifest_json is not None:
                dst.writestr(MANIFEST_NAME, json.dumps(manifest_json, indent=1))
    return out


def _archiver_manifest(data: bytes, version: str | None) -> bytes:
    """TorchServe's MAR-INF/MANIFEST.json pointing at the config file (an archive built without one gets
    it here) and carrying the version."""
    manifest = json.loads(data)
    manifest["model"]["configFile"] = CONFIG_NAME
    if version:
        manifest["model"]["modelVersion"] = version
    return json.dumps(manifest, indent=2).encode()
