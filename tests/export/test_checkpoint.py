import sys
import types

import pytest
import torch

from export.checkpoint import read_state_dict


def test_plain_state_dict(tmp_path):
    lin = torch.nn.Linear(3, 2)
    torch.save(lin.state_dict(), tmp_path / "w.pt")
    state = read_state_dict(str(tmp_path / "w.pt"))
    assert torch.equal(state["weight"], lin.weight)


def test_lightning_checkpoint_reads_without_lightning(tmp_path, monkeypatch):
    """A .ckpt that pickles Lightning's AttributeDict: Lightning is not importable when it is read."""
    data = types.ModuleType("lightning.fabric.utilities.data")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__ = data.__name__
    AttributeDict.__qualname__ = "AttributeDict"
    data.AttributeDict = AttributeDict
    for name in ("lightning", "lightning.fabric", "lightning.fabric.utilities"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, data.__name__, data)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    ckpt = {
        "epoch": 7, "global_step": 70, "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
        "hyper_parameters": AttributeDict(lr=0.01, hidden=4),
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(4, 3)}}, "param_groups": [{"lr": 0.01}]}],
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    for name in ("lightning", "lightning.fabric", "lightning.fabric.utilities", data.__name__):
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(Exception):  # torch's own safe loader refuses it
        torch.load(tmp_path / "last.ckpt", weights_only=True)

    state = read_state_dict(str(tmp_path / "last.ckpt"), prefix="model.")
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    fresh.load_state_dict(state)
    x = torch.randn(5, 3)
    torch.testing.assert_close(fresh(x), net(x))


def test_file_without_tensors_is_explained(tmp_path):
    torch.save({"epoch": 1}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="holds no tensors"):
        read_state_dict(str(tmp_path / "empty.pt"))
