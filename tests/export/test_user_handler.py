"""`tskit build --handler FILE.py` with handler files as users write them (tests/user_handlers/): what goes into
the archive, what is refused with a message that says what to do, and the archive's own handler run in-process."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from export.archive import ArchiveSpec, build_archive
from export.golden import GoldenInput
from export.manifest import archive_manifest as manifest
from export.user_handler import ENTRY_FILE
from export.zoo import CONFIG_DIR, ZOO_DIR, efficientnet_lite0_weights, write_imagenet_labels
from export.zoo.tabular import export_files, golden_rows
from tskit.testing import assert_same_answer, load_archive_handler, run_batch

REPO = Path(__file__).resolve().parents[2]
USER = REPO / "tests" / "user_handlers"
TSKIT = [sys.executable, "-m", "tskit.cli"]


@pytest.fixture(scope="module")
def lite0_args(tmp_path_factory):
    """`tskit build` arguments for the default model's eager files (no golden inputs: refusals come first)."""
    work = tmp_path_factory.mktemp("lite0-files")
    return ["--serialized-file", efficientnet_lite0_weights(), "--model-file", str(ZOO_DIR / "efficientnet_lite0.py"),
            "--labels", str(write_imagenet_labels(work / "index_to_name.json")),
            "--config", str(CONFIG_DIR / "efficientnet_lite0.yaml")]


@pytest.fixture(scope="module")
def tabular_files(tmp_path_factory):
    """`tskit build` arguments for the tabular model (no golden inputs: refusals come first)."""
    weights, schema = export_files(tmp_path_factory.mktemp("tabular"))
    return ["--serialized-file", str(weights), "--model-file", str(ZOO_DIR / "tabular_mlp.py"),
            "--extra-files", str(schema)]


def tskit_build(name: str, handler: Path, args: list, store: Path, *extra: str):
    return subprocess.run(TSKIT + ["build", name, "--handler", str(handler), *args, "--export-path", str(store),
                                   *extra], capture_output=True, text=True, cwd=REPO)


def members(mar: Path) -> set[str]:
    with zipfile.ZipFile(mar) as zf:
        return set(zf.namelist())


def test_a_subclass_of_a_library_handler_is_packed_and_verified(user_archives):
    mar = user_archives["top1"]
    names = members(mar)
    assert {"top1_handler.py", ENTRY_FILE, "handlers/base.py", "handlers/image_classifier.py"} <= names
    built = manifest(mar)
    assert built["model"]["handler"] == ENTRY_FILE
    assert built["user_handler"] == {"module": "top1_handler", "class_name": "Top1Classifier", "kind": "tskit"}
    assert {"top1_handler.py", ENTRY_FILE} <= set(built["files"])
    outputs = [case["output"] for case in built["golden"]["cases"]]
    assert all(set(out) == {"label", "probability"} for out in outputs), outputs  # the user's format
    verify = subprocess.run(TSKIT + ["verify", str(mar)], capture_output=True, text=True, cwd=REPO)
    assert verify.returncode == 0 and "PASSED" in verify.stdout, verify.stdout + verify.stderr


def test_a_users_helper_package_keeps_its_name(user_archives, tmp_path, photo_bytes):
    assert {"mylib/__init__.py", "mylib/augment.py"} <= members(user_archives["mirrored"])
    handler = load_archive_handler(user_archives["mirrored"], tmp_path / "unpacked")
    assert type(handler).__mro__[1].__module__ == "mirrored_handler"
    [(status, scores)] = run_batch(handler, [{"body": photo_bytes["coffee.png"]}])
    assert status == 200 and next(iter(scores)) == "espresso"


def test_a_handler_written_against_torchserves_stock_classes_gets_guarded(user_archives, tmp_path, photo_bytes):
    """TorchServe's stock ImageClassifier fails a whole batch on one bad image; behind Guarded the batch is
    answered again one request at a time, so only the bad image fails, with a JSON 415."""
    built = manifest(user_archives["stock_style"])
    assert built["user_handler"]["kind"] == "torchserve"
    assert [case["output"] for case in built["golden"]["cases"]] == ["bobsled", "Egyptian cat"]
    handler = load_archive_handler(user_archives["stock_style"], tmp_path / "unpacked", batch_size=4)
    assert type(handler).__name__ == "StockStyleClassifier" and handler.tskit_manifest is not None
    results = run_batch(handler, [{"body": photo_bytes["coffee.png"]}, {"body": b"\x00 not an image"},
                                  {"data": photo_bytes["chelsea.png"]}])
    assert [status for status, _ in results] == [200, 415, 200]
    assert results[0][1] == "espresso" and results[2][1] in ("tabby", "tiger cat", "Egyptian cat")
    assert results[1][1]["type"] == "UnsupportedMediaType"


def test_user_code_that_raises_fails_alone(user_archives, tmp_path):
    handler = load_archive_handler(user_archives["strict"], tmp_path / "unpacked")
    good = json.loads(golden_rows(1)[0].payload)
    negative = [-1.0] + good[1:]
    results = run_batch(handler, [{"body": good}, {"body": negative}, {"body": good}])
    assert [status for status, _ in results] == [200, 500, 200]
    assert "decode raised ValueError: a radius cannot be negative" in results[1][1]["message"]
    # 102 rows in one batch: postprocess drops an answer; answered one request at a time, only the long one fails
    results = run_batch(handler, [{"body": good}, {"body": [good] * 101}])
    assert [status for status, _ in results] == [200, 500]
    assert "postprocess returned 0 answers for the 1 requests that reached inference" in results[1][1]["message"]


def test_plain_torch_model_archiver_with_tskit_bundle(user_archives, tmp_path, photo_bytes):
    names = members(user_archives["plain"])
    assert {"handlers/base.py", "top1_handler.py", "index_to_name.json"} <= names and "tskit-manifest.json" not in names
    handler = load_archive_handler(user_archives["plain"], tmp_path / "unpacked")
    [(status, answer)] = run_batch(handler, [{"body": photo_bytes["coffee.png"]}])
    assert status == 200 and answer["label"] == "espresso"


def test_a_handler_on_torchserves_base_handler_alone(tabular_files, tmp_path):
    """BaseHandler's batch preprocess fails for the whole batch on one bad row; behind Guarded, answered one
    request at a time, only the bad row fails (a JSON 500 naming the exception) and the others get their outputs."""
    rows = tmp_path / "rows"
    rows.mkdir()
    (rows / "row.json").write_bytes(golden_rows(1)[0].payload)
    result = tskit_build("rows", USER / "base_rows_handler.py", tabular_files, tmp_path, "--golden", str(rows))
    assert result.returncode == 0, result.stderr
    assert manifest(tmp_path / "rows.mar")["user_handler"]["kind"] == "torchserve"
    handler = load_archive_handler(tmp_path / "rows.mar", tmp_path / "unpacked")
    good = json.loads(golden_rows(1)[0].payload)
    results = run_batch(handler, [{"body": good}, {"body": ["not", "numbers"]}, {"body": good}])
    assert [status for status, _ in results] == [200, 500, 200]
    assert len(results[0][1]) == 2  # two logits
    assert_same_answer(results[0][1], results[2][1])
    assert results[1][1]["type"] == "HandlerError" and "preprocess raised" in results[1][1]["message"]


def test_requirements_are_recorded_and_refused_where_missing(user_archives, tabular_files, tmp_path):
    """needs_dep was built where tskit-fixture-dep is installed; imported in a Python without it, the entry module
    refuses before the handler's own `import tskit_fixture_dep` can fail with a bare ModuleNotFoundError. Built
    in such a Python, it is refused at once."""
    missing = tskit_build("needs_dep", USER / "needs_dep_handler.py", tabular_files, tmp_path,
                          "--requirements", str(USER / "needs_dep_requirements.txt"))
    assert missing.returncode == 1 and "tskit-fixture-dep==1.0 (not installed)" in missing.stderr

    mar = user_archives["needs_dep"]
    assert manifest(mar)["requirements"] == ["tskit-fixture-dep==1.0"]
    with zipfile.ZipFile(mar) as zf:  # what TorchServe's install_py_dep_per_model installs from
        assert json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"]["requirementsFile"] in zf.namelist()
        zf.extractall(tmp_path / "unpacked")
    probe = subprocess.run([sys.executable, "-c", "import tskit_entry"], capture_output=True, text=True,
                           cwd=tmp_path / "unpacked")
    assert probe.returncode == 1
    assert "RequirementError" in probe.stderr and "tskit-fixture-dep==1.0 (not installed)" in probe.stderr
    assert "install_py_dep_per_model=true" in probe.stderr


def test_a_users_own_handlers_package_is_refused_with_what_to_do(lite0_args, tmp_path):
    package = tmp_path / "project" / "handlers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "utils.py").write_text("SCALE = 2\n")
    result = tskit_build("clash", USER / "top1_handler.py", lite0_args, tmp_path, "--extra-files", str(package))
    assert result.returncode == 1 and "same name as this library's `handlers` package" in result.stderr
    assert "rename your package" in result.stderr

    uses_it = tmp_path / "project" / "scaled_handler.py"
    uses_it.write_text("from handlers.utils import SCALE\nfrom handlers.image_classifier import ImageClassifier\n\n\n"
                       "class Scaled(ImageClassifier):\n    pass\n")
    result = tskit_build("clash", uses_it, lite0_args, tmp_path)
    assert result.returncode == 1 and "is not part of this library's `handlers` package" in result.stderr


@pytest.mark.parametrize("source, message", [
    ("import torch\n\n\nclass NotAHandler(torch.nn.Module):\n    pass\n", "must subclass a handler of this library"),
    ("from handlers.tensor import TensorHandler\n\n\nclass A(TensorHandler):\n    pass\n\n\nclass B(A):\n    pass\n",
     "must define exactly one class"),
    ("from handlers.tensor import TensorHandler\nimport my_private_helpers\n", "pass its file or folder with --extra-files"),
])
def test_handler_files_that_cannot_work_are_refused(tabular_files, tmp_path, source, message):
    handler = tmp_path / "user_module.py"
    handler.write_text(source)
    result = tskit_build("refused", handler, tabular_files, tmp_path)
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_a_drift_reference_needs_a_handler_of_this_library(tmp_path):
    spec = ArchiveSpec(name="x", serialized_file=str(tmp_path / "missing.pt"), handler=str(USER / "stock_style_handler.py"),
                       export_path=str(tmp_path), reference_inputs=[GoldenInput("a.png", b"", "image/png")])
    (tmp_path / "missing.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="needs a handler of this library"):
        build_archive(spec)
