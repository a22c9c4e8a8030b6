"""Archive integrity: the sha256 of every file an archive was built with, checked before loading.

`tskit build` writes `tskit-manifest.json` into the archive with a hash per file. A worker refuses to load
an archive whose files differ from it, lack one, or carry one it does not list: a tampered archive
fails with the reason in the model log instead of serving something nobody validated.
"""
import hashlib
import json
import os
from pathlib import Path

MANIFEST_NAME = "tskit-manifest.json"
UNHASHED_DIRS = {"MAR-INF", "__pycache__"}  # the archiver's own manifest; bytecode Python writes on import


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
            if rel != MANIFEST_NAME and not name.endswith(".pyc"):
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


def check_integrity(model_dir: str | Path) -> dict | None:
    """Raise IntegrityError if the archive's files differ from its manifest; return the manifest."""
    manifest = read_manifest(model_dir)
    if manifest is None:
        return None
    problems = integrity_problems(model_dir, manifest)
    if problems:
        raise IntegrityError("archive refused: its files do not match " + MANIFEST_NAME
                             + " (tampered or corrupted):\n  " + "\n  ".join(problems))
    return manifest
