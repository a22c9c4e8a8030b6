"""Checks the module TorchServe loads from an archive built with `tskit build --handler FILE.py` runs before
it imports the user's module: so a missing package is refused with its name and version, and a tampered
archive is refused, before any of the user's code runs.

The generated module (export/user_handler.py writes it) reads:

    from handlers.entry import check_archive
    check_archive(__file__)
    from my_handler import MyHandler as UserHandler
    ...
"""
from pathlib import Path

import handlers.torchserve  # noqa: F401  (TorchServe's handler classes, imported without openvino.torch)
from handlers.integrity import check_integrity
from handlers.requirements import check_requirements


def check_archive(entry_file: str) -> dict | None:
    """Verify the archive the entry module sits in (its folder is the model dir): file hashes, then the
    recorded requirements. Returns the manifest (None for an archive without one)."""
    model_dir = Path(entry_file).resolve().parent
    manifest = check_integrity(model_dir)
    if manifest is None:  # `integrity: off`
        return None
    check_requirements(manifest.get("requirements", []))
    return manifest
