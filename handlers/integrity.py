"""Archive integrity: the sha256 of every file an archive was built with, checked before its code runs.

`tskit build` writes `tskit-manifest.json` into the archive with a hash per file. A worker refuses to load
an archive whose files differ from it, lack one, or carry one it does not list, and one without a manifest
unless its model-config.yaml says `integrity: off`. The check runs when the archive's `handlers` package is
first imported (`handlers/__init__.py`), so no other module of the library or the user's runs before it.

This check lives inside the archive, so whoever can edit the archive can edit it out: it catches corruption
and mix-ups. Trust in who made the archive comes from outside it: a signature checked before TorchServe
starts (export/signing.py, `tskit serve --require-signed`).
"""
import hashlib
import json
import logging
import os
from pathlib import Path

MANIFEST_NAME = "tskit-manifest.json"
SIGNATURE_NAME = "tskit-signature.json"  # export/signing.py: a signature over the manifest, outside the hashes
UNHASHED_DIRS = {"MAR-INF", "__pycache__"}  # the archiver's own manifest; bytecode Python writes on import
# set only by `tskit build` for the replay that computes the golden answers of an archive it is about to seal
SEALING_ENV = "TSKIT_SEALING"
OFF = "integrity: off"

logger = logging.getLogger(__name__)


class IntegrityError(RuntimeError):
    pass


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def archive_files(root: str | Path) -> list[str]:
    """Relative paths of the files whose hashes the manifest records."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in UNHASHED_DIRS)
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in (MANIFEST_NAME, SIGNATURE_NAME) and not name.endswith(".pyc"):
                out.append(rel)
    return out


def file_hashes(root: str | Path) -> dict[str, str]:
    return {rel: sha256_file(Path(root) / rel) for rel in archive_files(root)}


def read_manifest(model_dir: str | Path) -> dict | None:
    path = Path(model_dir) / MANIFEST_NAME
    return json.loads(path.read_text()) if path.exists() else None


def integrity_problems(model_dir: str | Path, manifest: dict) -> list[str]:
    expected = manifest.get("files", {})
    actual = file_hashes(model_dir)
    problems = [f"{rel}: sha256 {actual[rel][:12]}… differs from the manifest's {digest[:12]}…"
                for rel, digest in expected.items() if rel in actual and actual[rel] != digest]
    problems += [f"{rel}: listed in the manifest but missing" for rel in expected if rel not in actual]
    problems += [f"{rel}: not in the manifest" for rel in actual if rel not in expected]
    return problems


def integrity_off(model_config: dict | None) -> bool:
    """model-config.yaml's `integrity: off` (YAML reads a bare `off` as false)."""
    value = (model_config or {}).get("integrity", True)
    return value is False or str(value).strip().lower() in ("off", "false", "no")


def archive_model_config(model_dir: str | Path) -> dict:
    """The archive's model-config.yaml, as MAR-INF/MANIFEST.json names it ({} without one)."""
    model_dir = Path(model_dir)
    try:
        name = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())["model"].get("configFile")
    except (OSError, ValueError, KeyError):
        return {}
    if not name or not (model_dir / name).is_file():
        return {}
    import yaml  # TorchServe's own dependency, there wherever a worker runs

    return yaml.safe_load((model_dir / name).read_text()) or {}


def check_integrity(model_dir: str | Path, model_config: dict | None = None) -> dict | None:
    """Raise IntegrityError if the archive's files differ from its manifest, or it has none and its
    model-config does not say `integrity: off`; return the manifest (None when unchecked)."""
    manifest = read_manifest(model_dir)
    if manifest is None:
        config = archive_model_config(model_dir) if model_config is None else model_config
        if not integrity_off(config) and os.environ.get(SEALING_ENV) != "1":
            raise IntegrityError(
                f"archive refused: it has no {MANIFEST_NAME}, so nothing can check its files. Build it with "
                f"`tskit build`, or put `{OFF}` in its model-config.yaml to serve it unchecked")
        if os.environ.get(SEALING_ENV) != "1":
            logger.warning("%s in model-config.yaml: this archive's files, handler code and requirements go "
                           "unchecked (no %s)", OFF, MANIFEST_NAME)
        return None
    problems = integrity_problems(model_dir, manifest)
    if problems:
        raise IntegrityError("archive refused: its files do not match " + MANIFEST_NAME
                             + " (tampered or corrupted):\n  " + "\n  ".join(problems))
    return manifest


def check_enclosing_archive(package_dir: str | Path) -> None:
    """Check the archive a bundled `handlers` package sits in (its parent holds MAR-INF/ once TorchServe
    unpacked it); a source checkout or a `tskit bundle` folder has no MAR-INF and is left alone."""
    model_dir = Path(package_dir).resolve().parent
    if (model_dir / "MAR-INF" / "MANIFEST.json").is_file():
        check_integrity(model_dir)
