"""The commands a user runs to get started, on real inputs: `tskit samples`, `tskit export`, `tskit forward` and
`tskit accuracy` (their wrong files and bad values are in test_cli_errors.py). `tskit build-default` builds the
session's `default_mar` and `format_archives` (tests/conftest.py), so every test on those archives runs on its
output; the test here checks what it wrote.

In this process where the command leaves no state behind (samples, export); in a subprocess where it would
(forward sets OMP_NUM_THREADS and torch's thread count; accuracy loads two handlers), as a user runs them."""
import json
import re
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml
from PIL import Image

from export.manifest import archive_manifest
from export.zoo import CONFIG_DIR, DEFAULT_NAME, SAMPLE_TOP1, guard_photos, sample_photos
from tests.conftest import tskit_main

REPO = CONFIG_DIR.parent
TSKIT = [sys.executable, "-m", "tskit.cli"]


def test_build_default_writes_the_sealed_default_archive(default_mar):
    """`default_mar` is `tskit build-default --export-path DIR`'s output (tests/conftest.py)."""
    with zipfile.ZipFile(default_mar) as zf:
        model = json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"]
    assert (model["modelName"], model["modelVersion"]) == (DEFAULT_NAME, "1.0")
    manifest = archive_manifest(default_mar)
    assert len(manifest["golden"]["cases"]) == len(sample_photos()) and manifest["files"]


def test_samples_writes_real_photos_calibration_photos_and_the_default_models_files(tmp_path):
    photos, calibration, model = tmp_path / "samples", tmp_path / "calibration", tmp_path / "model"
    printed = tskit_main("samples", "--out", str(photos), "--calibration", str(calibration), "--model", str(model))
    written = set(printed.splitlines())
    assert {p.name for p in photos.iterdir()} == set(sample_photos()) >= set(SAMPLE_TOP1)
    assert {p.name for p in calibration.iterdir()} == set(guard_photos()) and len(guard_photos()) == 16
    for folder, sources in ((photos, sample_photos()), (calibration, guard_photos())):
        for name, source in sources.items():
            assert str(folder / name) in written and (folder / name).read_bytes() == source.read_bytes()
            with Image.open(folder / name) as image:  # a real photo, not a placeholder
                image.verify()
                assert min(image.size) >= 128, (name, image.size)
    files = {p.name for p in model.iterdir()}
    assert files == {f"{DEFAULT_NAME}.pth", f"{DEFAULT_NAME}.py", "model-config.yaml", "index_to_name.json"}
    assert len(json.loads((model / "index_to_name.json").read_text())) == 1000
    assert "handler" in yaml.safe_load((model / "model-config.yaml").read_text())
    assert torch.load(model / f"{DEFAULT_NAME}.pth", weights_only=True)  # the weights `tskit build` takes


SMALL_MODEL = '''import torch


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.softmax(self.fc(x), dim=1)
'''


def test_export_a_small_model_to_eager_torchscript_and_onnx(tmp_path):
    """A Lightning-style checkpoint (`state_dict` under `model.`) of a 4 -> 3 model: every format the command
    writes gives the model's own answers, on another batch size than the example's."""
    import onnxruntime

    from handlers.loading import load_module_class

    (tmp_path / "small.py").write_text(SMALL_MODEL)
    torch.manual_seed(0)
    model = load_module_class(str(tmp_path / "small.py"))().eval()
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 3},
               tmp_path / "small.ckpt")
    out = tmp_path / "exported"
    printed = tskit_main("export", "small", "--model-file", str(tmp_path / "small.py"), "--weights",
                         str(tmp_path / "small.ckpt"), "--strip-prefix", "model.", "--format", "eager",
                         "torchscript", "onnx", "--example-shape", "2,4", "--out", str(out))
    assert printed.splitlines() == [f"eager: {out / 'small.pt'} (+ {out / 'small.py'})",
                                    f"torchscript: {out / 'small.torchscript.pt'}", f"onnx: {out / 'small.onnx'}"]
    x = torch.randn(5, 4)
    with torch.no_grad():
        expected = model(x)
        eager = load_module_class(str(out / "small.py"))()
        eager.load_state_dict(torch.load(out / "small.pt", weights_only=True))
        torchscript = torch.jit.load(str(out / "small.torchscript.pt"))
        assert torch.allclose(eager.eval()(x), expected) and torch.allclose(torchscript(x), expected, atol=1e-6)
    session = onnxruntime.InferenceSession(str(out / "small.onnx"), providers=["CPUExecutionProvider"])
    [onnx] = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.allclose(torch.from_numpy(onnx), expected, atol=1e-5)


def test_forward_measures_the_archives_forward_pass(default_mar):
    result = subprocess.run(TSKIT + ["forward", str(default_mar), "--batch", "2", "--seconds", "0.5"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    print(result.stdout.strip())  # the measured figure, with -rP
    found = re.search(r"eager fp32, batch 2, 1 thread\(s\): ([\d.]+) items/s forward only", result.stdout)
    assert found and float(found.group(1)) > 0, result.stdout


@pytest.mark.slow  # the guard over 500 views
def test_accuracy_guards_top1_agreement_with_the_fp32_reference(default_mar):
    """The archive without its normalisation against itself as the reference: the guard says no (exit 1) and
    lists the disagreements (one run of the 96 guard views costs about 14 s here, so the passing case, the
    same code with a rate above the threshold, is not run as well)."""
    result = subprocess.run(TSKIT + ["accuracy", str(default_mar), "--reference", str(default_mar), "--set",
                                     "mean=[0.0,0.0,0.0]", "std=[1.0,1.0,1.0]"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr[-2000:]
    summary = result.stdout.splitlines()[0]
    print(summary)
    found = re.search(r"top-1 agreement with the fp32 reference (\d+)/(\d+) = ([\d.]+%) \(threshold 99%\)", summary)
    assert found and int(found.group(2)) == 96, summary
    assert int(found.group(1)) < 0.99 * 96 and len(result.stdout.splitlines()) > 1  # the disagreements, listed
