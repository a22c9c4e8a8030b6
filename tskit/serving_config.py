"""Which archives a config.properties loads at start, and where each model's serving numbers come from.

Workers, batch size, batch delay and response timeout are decided once, in the archive's own model-config.yaml
(`tskit build --config`, or measured on the machine by `tskit optimize`), and TorchServe 0.12 uses those over a
`models=` entry of config.properties. So the tools never wait for a number read from the config: they wait for
what TorchServe registered (its describe answer), and a config entry that disagrees with its archive is said in
one line, naming both values and the one TorchServe registered.
"""
import json
import zipfile
from pathlib import Path

import yaml

from export.variants import archiver_model
from tskit.properties import model_settings

SERVING_KEYS = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout")


def loaded_archives(props: dict[str, str]) -> dict[str, Path]:
    """{model name: archive} for what `load_models` registers at start: `all`, or a comma list of archives in the
    model store, each optionally `name=file.mar`. The name is the archive's own unless given."""
    store = Path(props.get("model_store") or "model_store")
    spec = (props.get("load_models") or "").strip()
    if spec.lower() == "all":
        entries = [(None, path) for path in sorted(store.glob("*.mar"))]
    else:
        entries = []
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, file = item.rpartition("=")
            entries.append((name or None, store / file))
    return {name or archive_model_name(path): path for name, path in entries if path.is_file()}


def archive_model_name(mar: Path) -> str:
    return archiver_model(mar)["modelName"]


def archive_takes_text(mar: Path) -> bool:
    """Whether the archive's handler is one of this library's text tasks (what an example request should send)."""
    from handlers.tasks import task_of_handler_file

    task = task_of_handler_file(Path(archiver_model(mar).get("handler", "")).name)
    return task is not None and task.takes.startswith("text")


def archive_settings(mar: Path) -> dict:
    """The serving numbers of the archive's own model-config.yaml ({} without one)."""
    with zipfile.ZipFile(mar) as zf:
        config_name = json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"].get("configFile")
        config = yaml.safe_load(zf.read(config_name)) if config_name else {}
    return {k: config[k] for k in SERVING_KEYS if k in (config or {})}


def configured_settings(props: dict[str, str], model: str) -> dict:
    """What the config's `models=` entry says for the model's default version (or its only one)."""
    versions = model_settings(props).get(model, {})
    default = [v for v in versions.values() if v.get("defaultVersion")] or list(versions.values())
    return {k: default[0][k] for k in SERVING_KEYS if default and k in default[0]}


def disagreements(model: str, configured: dict, archive: dict, registered: dict) -> list[str]:
    """One line per number the config and the archive disagree on, naming both and the one TorchServe
    registered (its describe answer)."""
    lines = []
    for key in SERVING_KEYS:
        if key in configured and key in archive and int(configured[key]) != int(archive[key]):
            used = registered.get(key)
            whose = ("the archive's" if used == archive[key] else "the config's" if used == configured[key]
                     else "neither")
            lines.append(f"{model}: config.properties says {key} {configured[key]}, the archive's model-config.yaml "
                         f"says {archive[key]}; TorchServe registered {used} ({whose})")
    return lines
