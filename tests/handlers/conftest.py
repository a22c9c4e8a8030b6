"""Fixtures shared by the Hugging Face handler tests: the small random folders of tests/hf_models.py and their
archives, built once per session when a test first asks for them."""
import pytest

from export.archive import ArchiveSpec, build_archive
from tests.hf_models import ARCHITECTURES, build_folder
from tskit.testing import unpack_archive


@pytest.fixture(scope="session")
def hf_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {arch: build_folder(arch, root) for arch in ARCHITECTURES}


def archive_builder(folders: dict, handler: str, tmp_path_factory):
    """get(architecture, format): the unpacked `handler` archive of folders[architecture] in that format, each
    built once, when a test first asks for it."""
    built = {}

    def get(arch: str, fmt: str):
        if (arch, fmt) not in built:
            work = tmp_path_factory.mktemp(f"{handler}-{arch}-{fmt}")
            mar = build_archive(ArchiveSpec(f"{arch}_{fmt}", None, handler=handler, model_dir=str(folders[arch]),
                                            model_format=fmt, export_path=str(work / "store"),
                                            config={"batchSize": 8}))
            built[arch, fmt] = unpack_archive(mar, work / "unpacked")
        return built[arch, fmt]

    return get


@pytest.fixture(scope="session")
def transformer_archive(hf_folders, tmp_path_factory):
    return archive_builder(hf_folders, "transformer_classifier", tmp_path_factory)
