"""Read and write TorchServe's config.properties (Java properties: key=value, `\\` continues a line)."""
import json
from pathlib import Path


def read_properties(path: str | Path) -> dict[str, str]:
    props: dict[str, str] = {}
    pending = ""
    for raw in Path(path).read_text().splitlines():
        line = raw.strip() if not pending else raw.lstrip()
        if not pending and (not line or line[0] in "#!"):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        sep = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if sep < 0:
            props[line] = ""
        else:
            props[line[:sep].strip()] = line[sep + 1:].strip()
    return props


def write_properties(path: str | Path, props: dict[str, str], header: str = "") -> None:
    Path(path).write_text(header + "".join(f"{k}={v}\n" for k, v in props.items()))


def model_settings(props: dict[str, str]) -> dict:
    """The `models={...}` JSON: {model: {version: {minWorkers, batchSize, ...}}}; without it, the models of a
    `model_snapshot={...}` (as KServe's TorchServe configs carry them)."""
    if props.get("models"):
        return json.loads(props["models"])
    return json.loads(props["model_snapshot"]).get("models", {}) if props.get("model_snapshot") else {}


def serve_overrides(settings: dict[str, dict]) -> dict[str, str]:
    """The config.properties keys that load each `{model: settings}` at start, from `{model}.mar`, as its
    default version 1.0 with those settings (minWorkers, batchSize, ...): what `model_settings` reads back."""
    models = {name: {"1.0": {"defaultVersion": True, "marName": f"{name}.mar", **s}} for name, s in settings.items()}
    return {"load_models": ",".join(f"{name}.mar" for name in settings), "models": json.dumps(models)}


PATH_KEYS = ("model_store", "metrics_config")  # paths a config.properties may give relative to its own folder


def resolved_properties(path: str | Path) -> dict[str, str]:
    """The config's properties with its relative paths made absolute against the file's folder, so the
    server reads the same files wherever it starts (TorchServe itself resolves them against its start
    directory)."""
    props = read_properties(path)
    folder = Path(path).resolve().parent
    for key in PATH_KEYS:
        if props.get(key) and not Path(props[key]).is_absolute():
            props[key] = str((folder / props[key]).resolve())
    return props
