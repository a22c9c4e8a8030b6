"""TorchServe's `BaseHandler`, imported without the four seconds it does not need.

`ts.torch_handler.base_handler` runs `import openvino.torch` whenever OpenVINO is installed, only so that
`torch.compile(backend="openvino")` finds OpenVINO's backend. OpenVINO already registers that backend through its
`torch_dynamo_backends` entry point, which torch reads on first use, while the eager import pulls in torch._dynamo:
measured on the dev machine (AMD EPYC, 2 cores, the other core busy), `import ts.torch_handler.base_handler`
took 6.1-6.6 s with it and 2.1-2.4 s without, in every worker start and every build-time replay.
`import_base_handler` imports that module once with `openvino.torch` stood in for, then drops the stand-in, so
a later `import openvino.torch` gets the real one.
Every handler module of this library, and the entry of a user's handler, imports it before anything else of
TorchServe's handlers.
"""
import importlib.util
import sys
import types


def import_base_handler():
    if "ts.torch_handler.base_handler" not in sys.modules and "openvino.torch" not in sys.modules \
            and importlib.util.find_spec("openvino") is not None:
        stand_in = types.ModuleType("openvino.torch")
        sys.modules["openvino.torch"] = stand_in
        try:
            import ts.torch_handler.base_handler  # noqa: F401
        finally:
            if sys.modules.get("openvino.torch") is stand_in:
                del sys.modules["openvino.torch"]
    from ts.torch_handler.base_handler import BaseHandler

    return BaseHandler


BaseHandler = import_base_handler()
