"""Read a state_dict out of a checkpoint without running code from it.

Plain `torch.save(state_dict)` files go through `torch.load(weights_only=True)`. PyTorch Lightning `.ckpt`
files also pickle Lightning's own objects (hyper-parameters, loop state), which `weights_only` refuses
and which need Lightning to unpickle. `read_state_dict` then reads the archive with an unpickler that
rebuilds tensors and plain containers and replaces every other object by an inert placeholder, so the
`state_dict` comes out without Lightning installed and without executing anything from the file.
"""
import collections
import pickle
import zipfile

import torch

# Globals a checkpoint may use to rebuild tensors and containers; nothing here runs user code.
SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}
STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class Opaque:
    """Stands in for any object the checkpoint pickled that is not a tensor or a container."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __call__(self, *args, **kwargs):  # a pickled callable reduced with arguments
        return Opaque(*args)

    def __setitem__(self, key, value):  # dict subclasses (Lightning's AttributeDict) set items
        pass


class _StubUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix

    def find_class(self, module, name):
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        return Opaque

    def persistent_load(self, pid):
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype):
            dtype = getattr(dtype, "dtype", torch.float32)
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        storage = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else torch.UntypedStorage(0)
        return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)


def _stub_load(path: str) -> object:
    with zipfile.ZipFile(path) as archive:
        pkl = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        prefix = pkl[: -len("/data.pkl")]
        with archive.open(pkl) as f:
            return _StubUnpickler(f, archive, prefix).load()


def read_state_dict(path: str, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: a bare state_dict, or the `state_dict` entry of a training
    checkpoint (Lightning's included). `prefix` (e.g. "model.") is stripped from the keys that have it,
    since a LightningModule stores its network under an attribute name."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(path):
            raise
        obj = _stub_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"{path} holds no tensors: not a state_dict or training checkpoint")
    if prefix:
        state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    return state
