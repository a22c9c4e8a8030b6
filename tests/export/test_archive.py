import json
import zipfile

import pytest
import yaml

from export.archive import ArchiveSpec, build_archive, model_config


def test_default_archive_is_self_contained(default_mar):
    with zipfile.ZipFile(default_mar) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(zf.read("model-config.yaml"))
        labels = json.loads(zf.read("index_to_name.json"))
    for module in ("__init__", "base", "errors", "image_classifier", "loading", "payload", "runtime"):
        assert f"handlers/{module}.py" in names
    assert manifest["model"]["handler"] == "image_classifier.py"
    assert manifest["model"]["modelFile"] == "efficientnet_lite0.py"
    assert manifest["model"]["serializedFile"] in names
    assert config["batchSize"] == 8 and config["handler"]["topk"] == 5
    assert len(labels) == 1000 and labels["967"] == "espresso"


def test_entry_module_defines_exactly_one_class(default_mar):
    """TorchServe refuses a handler module that defines more than one class."""
    import ast

    with zipfile.ZipFile(default_mar) as zf:
        tree = ast.parse(zf.read("image_classifier.py"))
    assert len([n for n in tree.body if isinstance(n, ast.ClassDef)]) == 1


def test_user_config_overrides_defaults_and_keeps_handler_section():
    config = model_config({"batchSize": 4, "handler": {"topk": 3}})
    assert config["batchSize"] == 4 and config["maxBatchDelay"] == 10
    assert config["handler"] == {"topk": 3}
    assert model_config({})["handler"] == {}


def test_missing_files_and_unknown_handler_are_explained(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        build_archive(ArchiveSpec("m", str(weights), model_file=str(tmp_path / "nope.py"),
                                  export_path=str(tmp_path)))
    with pytest.raises(ValueError, match="unknown handler 'segmenter'"):
        build_archive(ArchiveSpec("m", str(weights), handler="segmenter", export_path=str(tmp_path)))


@pytest.mark.slow  # an ONNX export and a Captum run
def test_build_explain_weights_make_an_onnx_archive_explain(tmp_path):
    """`tskit build --explain-weights`: an ONNX tabular archive ships the eager weights (hashed in the
    manifest), explains on them, and loads them only for an explanation; without them it answers 501."""
    import subprocess
    import sys

    import torch

    from export.formats import export_model
    from export.zoo.tabular import ZOO_DIR, export_files, load_split
    from export.zoo.tabular_mlp import TabularMLP
    from handlers.explain import EXPLAIN_MODEL_FILE, EXPLAIN_WEIGHTS
    from handlers.integrity import read_manifest
    from handlers.tensor import TensorHandler
    from tskit.testing import load_handler, run_batch, unpack_archive

    weights, schema = export_files(tmp_path / "train")
    model = TabularMLP()
    model.load_state_dict(torch.load(weights, weights_only=True))
    onnx = export_model(model, torch.randn(2, 30), "onnx", tmp_path / "onnx", "mlp").serialized_file
    row = {"body": load_split()[1][0].tolist()}
    for name, extra in (("with", ["--explain-weights", str(weights), "--explain-model-file",
                                  str(ZOO_DIR / "tabular_mlp.py")]), ("without", [])):
        cmd = [sys.executable, "-m", "tskit.cli", "build", name, "--serialized-file", str(onnx), "--handler", "tensor",
               "--extra-files", str(schema), "--export-path", str(tmp_path / "store"), *extra]
        built = subprocess.run(cmd, capture_output=True, text=True)
        assert built.returncode == 0, built.stderr
        model_dir = unpack_archive(tmp_path / "store" / f"{name}.mar", tmp_path / name)
        handler = load_handler(TensorHandler, model_dir)
        assert handler.model_format == "onnx"
        [(status, prediction)] = run_batch(handler, [row])
        assert status == 200 and handler._explainer is None
        [(status, body)] = run_batch(handler, [row], headers=[{"explain": "True"}])
        if name == "with":
            assert {EXPLAIN_WEIGHTS, EXPLAIN_MODEL_FILE} <= set(read_manifest(model_dir)["files"])
            assert status == 200 and body["target"] == next(iter(prediction)), body
        else:
            assert status == 501 and "compiled (onnx)" in body["message"]


@pytest.mark.parametrize("config, refused", [
    ({"handler": {"resize": 28, "crop": 24}}, "a batch of 1 is [1, 3, 24, 24] float32; the onnx model takes "
                                             "[1, 3, 32, 32]"),
    ({"batchSize": 4, "handler": {"resize": 36, "crop": 32}}, "a batch of 4 is [4, 3, 32, 32] float32; the onnx "
                                                              "model takes [1, 3, 32, 32]"),
])
def test_a_model_that_cannot_take_what_its_config_produces_is_refused_at_build(config, refused, tmp_path):
    """A fixed-shape ONNX export (32 x 32, batch 1) behind a config that crops 24, or batches 4: the build runs it
    once as a worker would and refuses it in one line naming both shapes, leaving no archive behind."""
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    model(torch.zeros(1, 3, 32, 32))
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(tmp_path / "fixed.onnx"), dynamo=False)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"0": "a", "1": "b", "2": "c"}))
    spec = ArchiveSpec(name="fixed", serialized_file=str(tmp_path / "fixed.onnx"), labels=str(labels),
                       config={**config, "handler": {**config["handler"], "topk": 3}},
                       export_path=str(tmp_path / "store"))
    with pytest.raises(ValueError, match="the model cannot take the input its config produces") as refusal:
        build_archive(spec)
    assert refused in str(refusal.value) and "\n" not in str(refusal.value)
    assert not (tmp_path / "store" / "fixed.mar").exists()
