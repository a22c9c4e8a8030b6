"""Every export format of the default model, served through the same handler, gives the same top-1."""
import pytest
import torch

from export.formats import FORMATS, export_model
from export.zoo import SAMPLE_TOP1
from handlers.image_classifier import ImageClassifier
from tskit.testing import load_handler, run_batch, unpack_archive


@pytest.fixture(scope="module")
def handlers_by_format(format_archives, tmp_path_factory):
    return {fmt: load_handler(ImageClassifier, unpack_archive(mar, tmp_path_factory.mktemp(fmt)))
            for fmt, mar in format_archives.items()}


def test_the_loader_detects_each_format(handlers_by_format):
    assert {fmt: h.model_format for fmt, h in handlers_by_format.items()} == {f: f for f in FORMATS}


def test_compiled_formats_run_in_their_exported_dtype(handlers_by_format):
    assert handlers_by_format["onnx"].precision == "fp32"
    assert handlers_by_format["aoti"].precision == "fp32"


def test_same_top1_in_every_format_on_real_photos(handlers_by_format, photo_bytes):
    names = sorted(SAMPLE_TOP1)
    answers = {fmt: run_batch(h, [{"body": photo_bytes[n]} for n in names]) for fmt, h in handlers_by_format.items()}
    for i, name in enumerate(names):
        tops = {fmt: next(iter(results[i][1])) for fmt, results in answers.items()}
        assert len(set(tops.values())) == 1, (name, tops)
        assert tops["eager"] in SAMPLE_TOP1[name]
        probs = [results[i][1][tops["eager"]] for results in answers.values()]
        assert max(probs) - min(probs) < 1e-3, (name, probs)


def test_dynamic_batch_axis(handlers_by_format, photo_bytes):
    """ONNX and AOTInductor were exported at batch 2: batches of 1 and 5 must work."""
    for fmt in ("onnx", "aoti"):
        handler = handlers_by_format[fmt]
        assert len(run_batch(handler, [{"body": photo_bytes["coffee.png"]}])) == 1
        five = run_batch(handler, [{"body": photo_bytes["coffee.png"]}] * 5)
        assert [next(iter(body)) for _, body in five] == ["espresso"] * 5


def test_torchscript_script_method_and_bad_format(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    exported = export_model(model, torch.randn(2, 4), "torchscript", tmp_path, "m", torchscript_method="script")
    assert exported.serialized_file.exists()
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(model, torch.randn(2, 4), "tflite", tmp_path, "m")
    with pytest.raises(ValueError, match="needs the model file"):
        export_model(model, torch.randn(2, 4), "eager", tmp_path, "m")


def test_explanations_need_gradients(handlers_by_format, photo_bytes):
    """TorchScript explains like eager; the ONNX archive explains on the eager weights it ships (loaded on
    the first explanation, not before); the AOTInductor one ships none and answers 501 saying how to fix it."""
    request = [{"body": photo_bytes["coffee.png"]}]
    for fmt in ("torchscript", "onnx"):
        [(status, body)] = run_batch(handlers_by_format[fmt], request, headers=[{"explain": "True"}])
        assert status == 200 and body["target"] == "espresso", (fmt, body.get("message"))
    [(status, body)] = run_batch(handlers_by_format["aoti"], request, headers=[{"explain": "True"}])
    assert status == 501 and body["type"] == "ExplanationsUnavailable"
    assert "compiled (aoti)" in body["message"] and "--explain-weights" in body["message"]


def test_explanation_model_ships_hashed_and_loads_lazily(format_archives, tmp_path):
    from handlers.explain import EXPLAIN_MODEL_FILE, EXPLAIN_WEIGHTS
    from handlers.integrity import read_manifest

    model_dir = unpack_archive(format_archives["onnx"], tmp_path / "onnx")
    files = read_manifest(model_dir)["files"]
    assert EXPLAIN_WEIGHTS in files and EXPLAIN_MODEL_FILE in files
    handler = load_handler(ImageClassifier, model_dir)
    run_batch(handler, [{"body": b"not an image"}])
    assert handler._explainer is None  # prediction workers never load it
