"""A file that is missing or is not an archive gets one line that says so, not a traceback."""
import subprocess
import sys
import zipfile

import pytest

from export.zoo import CONFIG_DIR
from tskit.cli import main

REPO = CONFIG_DIR.parent


@pytest.mark.parametrize("args, expected", [
    (["verify", "README.md"], "tskit verify: README.md is not a .mar archive"),
    (["verify", "no-such.mar"], "tskit verify: archive not found: no-such.mar"),
    (["optimize", "README.md", "--calibration", "docs"], "tskit optimize: README.md is not a .mar archive"),
])
def test_a_wrong_file_is_one_line(args, expected):
    result = subprocess.run([sys.executable, "-m", "tskit.cli", *args], capture_output=True, text=True, cwd=REPO,
                            timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.startswith("tskit ")]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr


# The same through the real entry point for the commands below: none of these imports torch before it refuses.
@pytest.mark.parametrize("args, expected", [
    (["build-default", "--export-path", "README.md"], "tskit build-default: --export-path README.md is a file"),
    (["samples", "--out", "README.md"], "tskit samples: --out README.md is a file, not a folder"),
    (["export", "m", "--model-file", "README.md", "--weights", "README.md"],
     "tskit export: --model-file README.md is not a Python file"),
    (["forward", "README.md"], "tskit forward: README.md is not a .mar archive"),
    (["accuracy", "no-such.mar", "--reference", "README.md"], "tskit accuracy: archive not found: no-such.mar"),
])
def test_a_wrong_file_is_one_line_from_the_installed_command(args, expected):
    test_a_wrong_file_is_one_line(args, expected)


# ---- every other wrong file and bad option value of build-default, samples, export, forward and accuracy:
# in this process (main() as the console script runs it; no torch import per case), so each costs milliseconds
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Files a user might hand these commands by mistake, and a tiny model file with weights that fit it."""
    import torch

    d = tmp_path_factory.mktemp("cli-files")
    (d / "tiny_cli_model.py").write_text(
        "import torch\n\n\nclass Tiny(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(4, 2)\n\n    def forward(self, x):\n        return self.fc(x)\n")
    torch.save({"fc.weight": torch.zeros(2, 4), "fc.bias": torch.zeros(2)}, d / "tiny.pt")
    torch.save({"fc.weight": torch.zeros(2, 3), "fc.bias": torch.zeros(2)}, d / "other.pt")  # another model's
    (d / "syntax_error.py").write_text("def broken(:\n")
    (d / "imports_missing.py").write_text("import no_such_module_of_tskit_tests\n")
    (d / "needs_args.py").write_text("import torch\n\n\nclass Wide(torch.nn.Module):\n"
                                     "    def __init__(self, width):\n        super().__init__()\n")
    with zipfile.ZipFile(d / "plain.zip", "w") as zf:
        zf.writestr("notes.txt", "a zip, but no MAR-INF/MANIFEST.json")
    with zipfile.ZipFile(d / "fake.mar", "w") as zf:  # passes for an archive until something loads it
        zf.writestr("MAR-INF/MANIFEST.json", "{}")
    return {"dir": d, "readme": REPO / "README.md", "folder": REPO / "docs", **{
        p.stem: p for p in d.iterdir()}}


EXPORT = ["export", "t", "--model-file", "{tiny_cli_model}", "--weights", "{tiny}", "--out", "{dir}/exported"]


@pytest.mark.parametrize("args, expected", [
    (["build-default", "--export-path", "{readme}/sub"], "--export-path {readme}/sub: {readme} is a file, not a folder"),
    (["build-default", "--stock", "--export-path", "{readme}"], "--export-path {readme} is a file, not a folder"),
    (["build-default", "--format", "tflite"], "error: argument --format: invalid choice: 'tflite'"),
    (["samples", "--out", "{dir}/s", "--calibration", "{readme}"], "--calibration {readme} is a file, not a folder"),
    (["samples", "--out", "{dir}/s", "--model", "{readme}"], "--model {readme} is a file, not a folder"),
    (["export", "t", "--model-file", "{dir}/missing.py", "--weights", "{tiny}"], "model file not found: {dir}/missing.py"),
    (["export", "t", "--model-file", "{syntax_error}", "--weights", "{tiny}"],
     "--model-file {syntax_error} does not import: SyntaxError"),
    (["export", "t", "--model-file", "{imports_missing}", "--weights", "{tiny}"],
     "does not import: ModuleNotFoundError: No module named 'no_such_module_of_tskit_tests'"),
    (["export", "t", "--model-file", "{needs_args}", "--weights", "{tiny}"], "Wide() cannot be built without arguments"),
    (["export", "t", "--model-file", "{tiny_cli_model}", "--weights", "{dir}/missing.pt"],
     "weights not found: {dir}/missing.pt"),
    (["export", "t", "--model-file", "{tiny_cli_model}", "--weights", "{folder}"], "weights not found: {folder} (that is a folder)"),
    (["export", "t", "--model-file", "{tiny_cli_model}", "--weights", "{readme}"],
     "--weights {readme} is not a state_dict or training checkpoint torch.load can read"),
    (["export", "t", "--model-file", "{tiny_cli_model}", "--weights", "{other}"],
     "--weights {other} do not fit Tiny: Error(s) in loading state_dict for Tiny: size mismatch for fc.weight"),
    (["export", "t", "--model-file", "{tiny_cli_model}", "--weights", "{tiny}", "--model-class", "Huge"],
     "tiny_cli_model.py defines no nn.Module named 'Huge'"),
    (["export", "t", "--model-file", "{tiny_cli_model}"], "error: the following arguments are required: --weights"),
    ([*EXPORT, "--format", "tflite"], "error: argument --format: invalid choice: 'tflite'"),
    ([*EXPORT, "--example-shape", "2,x"], "error: argument --example-shape: '2,x' is not a shape"),
    ([*EXPORT, "--example-shape", "0,4"], "error: argument --example-shape: '0,4' is not a shape"),
    ([*EXPORT, "--example-shape", "2,3,224,224", "--format", "torchscript"],
     "Tiny does not run on an input of shape (2, 3, 224, 224) (--example-shape): mat1 and mat2 shapes"),
    ([*EXPORT[:-1], "{readme}"], "--out {readme} is a file, not a folder"),
    (["forward", "{dir}/missing.mar"], "archive not found: {dir}/missing.mar"),
    (["forward", "{folder}"], "archive not found: {folder} (that is a folder)"),
    (["forward", "{plain}"], "{plain} is not a .mar archive (a zip without MAR-INF/MANIFEST.json)"),
    (["forward", "{fake}", "--batch", "0"], "error: argument --batch: must be above 0, got 0"),
    (["forward", "{fake}", "--batch", "eight"], "error: argument --batch: invalid int value: 'eight'"),
    (["forward", "{fake}", "--seconds", "-1"], "error: argument --seconds: must be above 0, got -1"),
    (["forward", "{fake}", "--threads", "0"], "error: argument --threads: must be above 0, got 0"),
    (["forward", "{fake}", "--set", "precision"], "error: argument --set: 'precision' is not KEY=VALUE"),
    (["accuracy", "{readme}", "--reference", "{fake}"], "{readme} is not a .mar archive"),
    (["accuracy", "{fake}", "--reference", "{plain}"], "{plain} is not a .mar archive (a zip without"),
    (["accuracy", "{fake}", "--reference", "{dir}/missing.mar"], "--reference archive not found: {dir}/missing.mar"),
    (["accuracy", "{fake}"], "error: the following arguments are required: --reference"),
    (["accuracy", "{fake}", "--reference", "{fake}", "--threshold", "99"],
     "error: argument --threshold: must be between 0 and 1 (0.99 for 99%), got 99"),
    (["accuracy", "{fake}", "--reference", "{fake}", "--set", "=bf16"], "error: argument --set: '=bf16' is not KEY=VALUE"),
    (["optimize", "{fake}", "--calibration", "{folder}", "--only", "openvino int8"],
     "error: argument --only: --only: unknown candidate 'openvino int8'; known: onnxruntime-fp32, openvino-fp32"),
    (["optimize", "{fake}", "--calibration", "{folder}", "--min-agreement", "99"],
     "error: argument --min-agreement: must be between 0 and 1 (0.99 for 99%), got 99"),
    (["optimize", "{fake}", "--calibration", "{folder}", "--budget", "0"], "error: argument --budget: must be above 0"),
    (["build", "m", "--handler", "transformer_classifier", "--model-dir", "{dir}/missing"],
     "--model-dir {dir}/missing: not found"),
    (["build", "m", "--handler", "transformer_classifier", "--model-dir", "{readme}"],
     "--model-dir {readme}: a file, not a folder"),
    (["build", "m", "--handler", "transformer_classifier", "--model-dir", "{folder}"],
     "--model-dir {folder} is not a Hugging Face model folder: it has no config.json"),
    (["build", "m", "--handler", "transformer_classifier", "--model-dir", "{dir}", "--format", "aoti"],
     "error: argument --format: invalid choice: 'aoti'"),
    (["build", "m", "--serialized-file", "{tiny}", "--format", "onnx"], "--format is for --model-dir"),
    (["build", "m", "--handler", "tensor"], "give the model: a serialized file (--serialized-file), or"),
])
def test_each_wrong_file_or_bad_value_is_one_line(files, capsys, args, expected):
    argv = [a.format(**files) for a in args]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: its usage, then one line naming the argument
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tskit ")]
    assert code != 0 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"tskit {argv[0]}: "), err
    assert expected.format(**files) in lines[0], lines[0]
