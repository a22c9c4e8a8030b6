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


def derive_archive(mar: str | Path, out: str | Path, frontend: dict | None = None, handler: dict | None = None) -> Path:
    """Copy `mar` to `out` with top-level keys `frontend` and `handler:` keys `handler` overridden."""
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
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                if item.filename in (CONFIG_NAME, MANIFEST_NAME):
                    continue
                dst.writestr(item, src.read(item.filename))
            dst.writestr(CONFIG_NAME, new_config)
            if manifest_json is not None:
                dst.writestr(MANIFEST_NAME, json.dumps(manifest_json, indent=1))
    if CONFIG_NAME not in names:
        _point_manifest_at_config(out)
    return out


def _point_manifest_at_config(mar: Path) -> None:
    """An archive built without a config file: tell TorchServe's MANIFEST.json about the new one."""
    with zipfile.ZipFile(mar) as src:
        items = [(i, src.read(i.filename)) for i in src.infolist()]
    with zipfile.ZipFile(mar, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for item, data in items:
            if item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["configFile"] = CONFIG_NAME
                data = json.dumps(manifest, indent=2).encode()
            dst.writestr(item, data)
