"""The reproducibility manifest sealed into every archive (`tskit-manifest.json`)."""
import json
import platform
import zipfile
from importlib import metadata
from pathlib import Path

from export.golden import TOLERANCE
from export.reference import reference_cases
from export.replay import replay
from handlers.drift import REFERENCE_NAME
from handlers.integrity import MANIFEST_NAME, file_hashes
from handlers.loading import detect_format
from export.inprocess import unpack_archive

PACKAGES = ("torch", "torchvision", "torchserve", "torch-model-archiver", "onnxruntime", "numpy", "pillow")


def environment() -> dict[str, str | None]:
    env = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            env[package] = None
    return env


def add_reference(mar: Path, unpacked: Path, stats: dict | None) -> dict | None:
    """Add the drift reference `stats` (computed by the archive's own handler) to the archive; without them,
    describe the reference the archive already carries (one an optimized archive inherits), if any."""
    if stats:
        text = json.dumps(stats, indent=1)
        (unpacked / REFERENCE_NAME).write_text(text)
        with zipfile.ZipFile(mar, "a", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(REFERENCE_NAME, text)
    elif (unpacked / REFERENCE_NAME).is_file():
        stats = json.loads((unpacked / REFERENCE_NAME).read_text())
    else:
        return None
    return {"file": REFERENCE_NAME, "inputs": stats["inputs"], "rows": stats["rows"],
            "features": [f["name"] for f in stats["features"]]}


def archive_manifest(mar: str | Path) -> dict:
    """The manifest sealed into a built archive (KeyError if it has none)."""
    with zipfile.ZipFile(mar) as zf:
        return json.loads(zf.read(MANIFEST_NAME))


def seal_archive(mar: Path, golden: list, config: dict, work_dir: Path, reference_inputs: list = (),
                 requirements: list[str] = (), user_handler: dict | None = None, extra: dict | None = None) -> dict:
    """Run the archive's own handler, in one fresh Python, on its golden inputs (their answers go into the
    manifest) and its reference inputs (their drift statistics go into the archive), hash every file of the
    built archive, and add the manifest to the archive. Returns the
    manifest. `requirements` are checked where the archive is served; `user_handler` ({module, class_name,
    kind}) describes a user's handler file; `extra` adds sections (`tskit optimize`'s report)."""
    unpacked = unpack_archive(mar, work_dir / "unpacked")
    cases = [{"input": f"golden/{g.name}", "content_type": g.content_type} for g in golden]
    references = reference_cases(list(reference_inputs), work_dir) if reference_inputs else None
    out = replay(unpacked, cases, work_dir, references, sealing=True)  # loads and runs it once, even without cases
    reference = add_reference(mar, unpacked, out and out["reference"])
    info = json.loads((unpacked / "MAR-INF" / "MANIFEST.json").read_text())["model"]
    model_file = info.get("modelFile")
    fmt = detect_format(str(unpacked / info["serializedFile"]), str(unpacked / model_file) if model_file else None)
    manifest = {
        "manifest_version": 1,
        "model": {"name": info["modelName"], "version": info["modelVersion"], "handler": info["handler"],
                  "format": fmt, "serialized_file": info["serializedFile"], "model_file": model_file},
        "files": file_hashes(unpacked),
        "environment": environment(),
        "preprocessing": config.get("handler", {}),
        "requirements": list(requirements),
        "user_handler": user_handler,
        "golden": {"precision": None, "tolerance": None, "cases": []},
        "reference": reference,
        **(extra or {}),
    }
    if cases:
        for case, (status, body) in zip(cases, out["results"]):
            if status != 200:
                raise RuntimeError(f"golden input {case['input']} was refused at build time ({status}): {body}")
            case["output"] = body
        manifest["golden"] = {"precision": out["precision"], "tolerance": TOLERANCE[out["precision"]],
                              "cases": cases}
    with zipfile.ZipFile(mar, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST_NAME, json.dumps(manifest, indent=1))
    return manifest
