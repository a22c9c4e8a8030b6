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
