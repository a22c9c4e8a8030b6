import textwrap

import pytest
import torch

from handlers.errors import ConfigError
from handlers.loading import detect_format, load_model, load_module_class

CPU = torch.device("cpu")

MODEL_FILE = textwrap.dedent('''
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return torch.relu(self.lin(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Block()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.block(x))
''')


@pytest.fixture
def eager_files(tmp_path):
    model_file = tmp_path / "net.py"
    model_file.write_text(MODEL_FILE)
    model = load_module_class(str(model_file))()
    weights = tmp_path / "net.pt"
    torch.save(model.state_dict(), weights)
    return model_file, weights, model


def test_model_class_is_the_one_no_other_class_builds(eager_files):
    model_file, _, _ = eager_files
    assert load_module_class(str(model_file)).__name__ == "Net"
    assert load_module_class(str(model_file), "Block").__name__ == "Block"
    with pytest.raises(ConfigError, match="no nn.Module named 'Missing'"):
        load_module_class(str(model_file), "Missing")


def test_eager_and_torchscript_give_the_same_output(eager_files, tmp_path):
    model_file, weights, reference = eager_files
    x = torch.randn(3, 4)
    eager, fmt = load_model(str(weights), str(model_file), CPU)
    assert fmt == "eager"
    scripted_path = tmp_path / "net.ts"
    torch.jit.save(torch.jit.trace(reference.eval(), x), scripted_path)
    scripted, fmt = load_model(str(scripted_path), None, CPU)
    assert fmt == "torchscript"
    with torch.no_grad():
        torch.testing.assert_close(eager(x), reference(x))
        torch.testing.assert_close(scripted(x), reference(x))


def test_a_torch_export_program_loads_as_exported_and_answers_like_eager(eager_files, tmp_path):
    """A `.pt2` saved with torch.export.save (not an AOTInductor package): detected as `exported`, run as its
    module, any batch size."""
    _, _, reference = eager_files
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(reference.eval(), (torch.randn(2, 4),), dynamic_shapes=({0: batch},))
    path = tmp_path / "net.pt2"
    torch.export.save(program, str(path))
    assert detect_format(str(path), None) == "exported"
    model, fmt = load_model(str(path), None, CPU)
    assert fmt == "exported"
    x = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_state_dict_without_model_file_is_explained(eager_files):
    _, weights, _ = eager_files
    with pytest.raises(ConfigError, match="--model-file"):
        detect_format(str(weights), None)


def test_pickled_module_is_refused(eager_files, tmp_path):
    """weights_only=True: a file that needs unpickling of arbitrary objects never loads."""
    model_file, _, model = eager_files
    pickled = tmp_path / "whole_model.pt"
    torch.save(model, pickled)
    with pytest.raises(Exception, match="Weights only load failed"):
        load_model(str(pickled), str(model_file), CPU)


def test_openvino_runs_a_batch_at_the_next_power_of_two():
    """OpenVinoModel pads a batch of fixed-size inputs (images) to batch_bucket(n) rows (its CPU plugin keeps memory
    per input shape) and answers the n rows asked for; the format tests run odd batches through it."""
    from handlers.loading import batch_bucket

    assert [batch_bucket(n) for n in range(1, 10)] == [1, 2, 4, 4, 8, 8, 8, 8, 16]
