"""TorchServe's `BaseHandler`, imported without the engines it does not need.

`ts.torch_handler.base_handler` imports, at module level, `openvino.torch` (so that `torch.compile(backend=
"openvino")` finds OpenVINO's backend, which OpenVINO registers anyway through its `torch_dynamo_backends` entry
point) and `onnxruntime` and `psutil` (for its own ONNX loader). In a worker those imports cost time and memory
whichever engine the archive uses: measured on the dev machine (AMD EPYC, 2 cores), `import openvino.torch` pulled
in torch._dynamo and took the module's import from 2.1-2.4 s to 6.1-6.6 s; on an Intel Xeon (Sapphire Rapids,
2 cores) `openvino` and `onnxruntime` each added 7-8 MiB of private memory per worker (/proc/self/smaps_rollup).

`import_base_handler` imports that module with lazy stand-ins for the ones not imported yet: each is a module whose
attributes import the real one on first use (TorchServe's own ONNX loader still works), and none stays in
`sys.modules`, so a later `import openvino` or `import onnxruntime` (an archive of that engine) gets the real one.
Every handler module of this library, and the entry of a user's handler, imports it before anything else of
TorchServe's handlers.
"""
import importlib
import importlib.util
import sys
import types

DEFERRED = ("openvino", "openvino.torch", "onnxruntime", "psutil")


class LazyModule(types.ModuleType):
    """Stands in for the module `name`: the first attribute read imports the real one and reads it there."""

    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return getattr(importlib.import_module(self.__name__), attribute)


def import_base_handler():
    if "ts.torch_handler.base_handler" not in sys.modules:
        stand_ins = {name: LazyModule(name) for name in DEFERRED
                     if name not in sys.modules and importlib.util.find_spec(name.split(".")[0]) is not None}
        sys.modules.update(stand_ins)
        try:
            import ts.torch_handler.base_handler  # noqa: F401
        finally:
            for name, stand_in in stand_ins.items():
                if sys.modules.get(name) is stand_in:
                    del sys.modules[name]
    from ts.torch_handler.base_handler import BaseHandler

    return BaseHandler


BaseHandler = import_base_handler()
