"""Shared fixtures: real sample photos, the real default archive and an in-process handler on it; and the
markers every test gets (pytest.ini): `e2e` under tests/e2e, `slow` for what needs a costly fixture or says so,
`unit` for the rest (`make unit`)."""
from pathlib import Path

import pytest

from export.zoo import DEFAULT_NAME, SAMPLE_TOP1, sample_photos
from export.zoo.tabular import build_tabular_archive
from export.zoo.text import build_text_archive
from handlers.image_classifier import ImageClassifier
from tskit.testing import load_handler, unpack_archive

# fixtures that train, export to every format or optimize an archive: a test that needs one is not a unit test
COSTLY_FIXTURES = {"format_archives", "optimized", "detector_mar", "detector_dir", "segmenter_mar", "user_archives",
                   "outlier_mar", "text_mar", "text_model_dir", "tabular_mar", "model_dir", "signed_mar",
                   "hf_folders", "transformer_archive", "embedder_archive", "token_folders", "token_archive"}


def pytest_collection_modifyitems(items):
    for item in items:
        if "e2e" in Path(str(item.path)).parts:
            item.add_marker("e2e")
        elif item.get_closest_marker("slow") or COSTLY_FIXTURES & set(item.fixturenames):
            item.add_marker("slow")
        else:
            item.add_marker("unit")


@pytest.fixture(scope="session")
def photos():
    found = sample_photos()
    missing = set(SAMPLE_TOP1) - set(found)
    assert not missing, f"sample photos missing ({missing}): is scikit-image installed? run `make install`"
    return found


@pytest.fixture(scope="session")
def photo_bytes(photos):
    return {name: path.read_bytes() for name, path in photos.items()}


def tskit_main(*argv: str) -> str:
    """`tskit ARGV` through the CLI's own entry point, in this process; its stdout (asserted to exit 0)."""
    import contextlib
    import io

    from tskit.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    assert code == 0, f"tskit {' '.join(argv)} exited {code}: {out.getvalue()[-2000:]}"
    return out.getvalue()


def built_by_cli(*argv: str) -> Path:
    """The archive a `tskit build-default ...` run prints as its last line, checked to exist."""
    mar = Path(tskit_main("build-default", *argv).split()[-1])
    assert mar.suffix == ".mar" and mar.is_file(), mar
    return mar


@pytest.fixture(scope="session")
def default_mar(tmp_path_factory):
    """The default archive as `tskit build-default` builds it (what `make` puts in model_store/), through the
    command itself: every test on this archive tests the command's output."""
    store = tmp_path_factory.mktemp("default-archive") / "model_store"
    mar = built_by_cli("--export-path", str(store))
    assert mar == store / f"{DEFAULT_NAME}.mar"
    return mar


@pytest.fixture(scope="session")
def default_model_dir(default_mar, tmp_path_factory):
    return unpack_archive(default_mar, tmp_path_factory.mktemp("unpacked"))


@pytest.fixture(scope="session")
def classifier(default_model_dir):
    """The default archive's handler, initialised exactly as a TorchServe worker would."""
    return load_handler(ImageClassifier, default_model_dir)


@pytest.fixture(scope="session")
def text_mar(tmp_path_factory):
    """The SMS spam archive (its model trained at build time), built once for every test."""
    work = tmp_path_factory.mktemp("text-archive")
    return build_text_archive(str(work / "model_store"), work)


@pytest.fixture(scope="session")
def text_model_dir(text_mar, tmp_path_factory):
    return unpack_archive(text_mar, tmp_path_factory.mktemp("text-unpacked"))


@pytest.fixture(scope="session")
def detector_mar(tmp_path_factory):
    """The scene detector's archive (FCOS trained at build time, once per session), as the zoo builds it."""
    from export.zoo.detection import build_detector_archive

    work = tmp_path_factory.mktemp("detector")
    return build_detector_archive(work / "model_store", work)


@pytest.fixture(scope="session")
def tabular_mar(tmp_path_factory):
    """The tabular archive (an MLP trained at build time), built once for every test."""
    work = tmp_path_factory.mktemp("tabular")
    return build_tabular_archive(work / "model_store", work / "build")


@pytest.fixture(scope="session")
def format_archives(tmp_path_factory):
    """The default model exported to every format, each built into its own sealed archive as `tskit
    build-default --format FMT` builds it: the ONNX one ships the eager weights for explanations; the
    AOTInductor one is built without them (`--no-explain-weights`), so it answers 501."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from export.formats import FORMATS

    store = tmp_path_factory.mktemp("formats") / "model_store"

    def build(fmt: str) -> Path:  # two `tskit build-default` processes at a time: one per core
        no_explain = ["--no-explain-weights"] if fmt == "aoti" else []
        result = subprocess.run([sys.executable, "-m", "tskit.cli", "build-default", "--format", fmt, "--name",
                                 f"lite0_{fmt}", "--export-path", str(store), *no_explain],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        mar = Path(result.stdout.split()[-1])
        assert mar == store / f"lite0_{fmt}.mar" and mar.is_file(), mar
        return mar

    store.mkdir(parents=True)
    order = sorted(FORMATS, key=lambda fmt: fmt != "aoti")  # the longest build (an AOTInductor compile) first
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(order, pool.map(build, order)))


@pytest.fixture(scope="session")
def user_archives(tmp_path_factory):
    """The handler files of tests/user_handlers packed as users pack them (tests/user_handlers/archives.py):
    {name: archive}, built once for the in-process and the end-to-end tests."""
    from export.zoo import export_default
    from tests.user_handlers.archives import build_user_archives

    work = tmp_path_factory.mktemp("user-archives")
    torchscript = export_default("torchscript", work).serialized_file
    return build_user_archives(work / "model_store", work, torchscript)


@pytest.fixture(scope="session")
def calibration_photos(photos, tmp_path_factory):
    """The six sample photos in a folder, as a user's `tskit optimize --calibration` folder."""
    import shutil

    folder = tmp_path_factory.mktemp("calibration")
    for name, path in photos.items():
        shutil.copy(path, folder / name)
    return folder


@pytest.fixture(scope="session")
def optimized(format_archives, calibration_photos, tmp_path_factory):
    """`tskit optimize` on the default model's ONNX archive (what `make serve` builds), through the real CLI:
    (its output, the optimized archive). The fewest views the guard takes and short speed runs; two candidates."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("optimized")
    result = subprocess.run([sys.executable, "-m", "tskit.cli", "optimize", str(format_archives["onnx"]),
                             "--calibration", str(calibration_photos), "--export-path", str(out), "--views", "500",
                             "--seconds", "0.3", "--only", "openvino-fp32,openvino-int8"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, out / "lite0_onnx.mar"
