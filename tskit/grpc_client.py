"""gRPC client for a running TorchServe 0.12: the inference API (port 7070) and the management API (7071).

TorchServe ships its service definitions inside the frontend jar (`ts/frontend/model-server.jar`, under
`proto/`). `load_protos()` extracts `inference.proto` and `management.proto` from the jar of the installed
`torchserve`, compiles them with grpcio-tools (googleapis-common-protos supplies `google/rpc/status.proto`) into
a cache folder keyed by the protos' contents and the compiler's version, so they are compiled once, and imports
the generated modules.

Token auth: every call carries `authorization: Bearer <key>` metadata, the inference key for the inference API
and the management key for the management API (read from `key_file.json` as `tskit.client` does). A call
without a valid key is refused with gRPC status PERMISSION_DENIED.

TorchServe 0.12 answers `Predictions` with gRPC status OK whatever status the handler set: a request the
handler rejects (this project's handlers answer `{"code": 4xx, "type": ..., "message": ...}`) is visible only in
the body. `handler_error(body)` reads that error back. The 0.12 protos have no Explanations rpc.
"""
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

from tskit.client import read_keys
from tskit.properties import read_properties

PROTOS = ("inference.proto", "management.proto")
PACKAGE = "tskit_torchserve_grpc"  # the generated modules live in this package inside the cache folder
DEFAULT_PORTS = {"grpc_inference_port": "7070", "grpc_management_port": "7071"}
MAX_MESSAGE = 256 * 1024 * 1024  # the client's own cap; TorchServe's max_request_size/max_response_size apply


def frontend_jar() -> Path:
    """model-server.jar of the installed torchserve (found through the `ts` package folder, not imported)."""
    spec = importlib.util.find_spec("ts")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("torchserve is not installed: no `ts` package to find model-server.jar in")
    for folder in spec.submodule_search_locations:
        jar = Path(folder) / "frontend" / "model-server.jar"
        if jar.is_file():
            return jar
    raise RuntimeError(f"no frontend/model-server.jar under {list(spec.submodule_search_locations)}")


def jar_protos(jar: str | Path) -> dict[str, bytes]:
    """{name: text} of inference.proto and management.proto from the jar's `proto/` folder."""
    with zipfile.ZipFile(jar) as z:
        names = set(z.namelist())
        out = {}
        for proto in PROTOS:
            for member in (f"proto/{proto}", proto):
                if member in names:
                    out[proto] = z.read(member)
                    break
            else:
                raise RuntimeError(f"{jar} holds no {proto}")
    return out


def cache_root() -> Path:
    """$TSKIT_CACHE_DIR, else $XDG_CACHE_HOME/tskit (~/.cache/tskit); the temp folder if that is not writable."""
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    base = os.environ.get("TSKIT_CACHE_DIR") or Path(xdg) / "tskit"
    root = Path(base) / "grpc"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    # a shared temp folder: ours alone, or else a private one for this process (its modules are imported)
    root = Path(tempfile.gettempdir()) / f"tskit-grpc-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        info = root.lstat()
        if root.is_dir() and not root.is_symlink() and info.st_uid == os.getuid() and not info.st_mode & 0o022:
            return root
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="tskit-grpc-"))


def _googleapis_include() -> str:
    """The folder that holds google/rpc/status.proto (googleapis-common-protos)."""
    spec = importlib.util.find_spec("google.rpc.status_pb2")
    if spec is None or spec.origin is None:
        raise RuntimeError("googleapis-common-protos is not installed (google/rpc/status.proto is needed)")
    include = Path(spec.origin).parents[2]
    if not (include / "google" / "rpc" / "status.proto").is_file():
        raise RuntimeError(f"no google/rpc/status.proto under {include}")
    return str(include)


def compile_protos(protos: dict[str, bytes], out: Path) -> None:
    """The protos compiled into `out/PACKAGE/` (NAME_pb2.py, NAME_pb2_grpc.py), built aside and moved in."""
    from grpc_tools import protoc

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=out.parent))
    try:
        pkg = work / PACKAGE
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        for name, text in protos.items():
            (pkg / name).write_bytes(text)
        well_known = Path(protoc.__file__).parent / "_proto"
        args = ["grpc_tools.protoc", f"-I{work}", f"-I{_googleapis_include()}", f"-I{well_known}",
                f"--python_out={work}", f"--grpc_python_out={work}", *(f"{PACKAGE}/{name}" for name in protos)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {', '.join(protos)}")
        try:
            work.rename(out)
        except OSError:  # another process got there first
            if not (out / PACKAGE / "management_pb2_grpc.py").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


_LOADED: dict = {}


def load_protos(jar: str | Path | None = None) -> SimpleNamespace:
    """The generated modules for the jar's protos: `inference_pb2`, `inference_pb2_grpc`, `management_pb2`,
    `management_pb2_grpc`, compiled on first use into the cache folder."""
    jar = Path(jar) if jar else frontend_jar()
    protos = jar_protos(jar)

    digest = hashlib.sha256()
    for name in sorted(protos):
        digest.update(name.encode() + b"\0" + protos[name] + b"\0")
    digest.update(version("grpcio-tools").encode() + version("protobuf").encode())
    key = digest.hexdigest()[:16]
    if key in _LOADED:
        return _LOADED[key]
    if _LOADED:
        raise RuntimeError("the TorchServe gRPC modules of another jar are already imported in this process")
    folder = cache_root() / key
    if not (folder / PACKAGE / "management_pb2_grpc.py").is_file():
        compile_protos(protos, folder)
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    names = ("inference_pb2", "inference_pb2_grpc", "management_pb2", "management_pb2_grpc")
    _LOADED[key] = SimpleNamespace(folder=folder, **{n: importlib.import_module(f"{PACKAGE}.{n}") for n in names})
    return _LOADED[key]


def handler_error(body: bytes) -> dict | None:
    """The handler's error when `body` is a JSON object with an integer `code` >= 400 (how this project's handlers
    answer a rejected request: {"code": 4xx, "type": ..., "message": ...}); None for any other body."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(parsed, dict) and isinstance(parsed.get("code"), int) and not isinstance(parsed["code"], bool) \
            and parsed["code"] >= 400:
        return parsed
    return None


def status_code(body: bytes) -> int:
    """The HTTP status the same request would have had: the `code` of a handler error in the body, else 200."""
    error = handler_error(body)
    return error["code"] if error else 200


class GrpcClient:
    """Blocking client for TorchServe's gRPC inference and management APIs, with token auth."""

    def __init__(self, host: str = "127.0.0.1", inference_port: int = 7070, management_port: int = 7071,
                 key_file: str | Path | None = None, timeout: float = 60.0, jar: str | Path | None = None):
        import grpc

        self.grpc = grpc
        self.pb = load_protos(jar)
        self.key_file = Path(key_file) if key_file else None
        self.timeout = timeout
        options = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
        self.inference_channel = grpc.insecure_channel(f"{host}:{inference_port}", options=options)
        self.management_channel = grpc.insecure_channel(f"{host}:{management_port}", options=options)
        self.inference_stub = self.pb.inference_pb2_grpc.InferenceAPIsServiceStub(self.inference_channel)
        self.management_stub = self.pb.management_pb2_grpc.ManagementAPIsServiceStub(self.management_channel)

    @classmethod
    def from_config(cls, config_file: str | Path, workdir: str | Path = ".", host: str = "127.0.0.1",
                    **kwargs) -> "GrpcClient":
        """Ports from config.properties (grpc_inference_port / grpc_management_port, defaults 7070/7071); the key
        file from the directory TorchServe started in."""
        props = {**DEFAULT_PORTS, **read_properties(config_file)}
        return cls(host, int(props["grpc_inference_port"]), int(props["grpc_management_port"]),
                   key_file=Path(workdir) / "key_file.json", **kwargs)

    def metadata(self, api: str) -> list[tuple[str, str]]:
        """`authorization: Bearer <key>` with the key of `api` ('inference' or 'management'); none without a
        key file (token auth disabled)."""
        if self.key_file is None or not self.key_file.exists():
            return []
        key = read_keys(self.key_file).get(api)
        return [("authorization", f"Bearer {key}")] if key else []

    def _call(self, method, request, api: str, timeout: float | None, metadata=None):
        return method(request, timeout=timeout or self.timeout,
                      metadata=self.metadata(api) if metadata is None else metadata)

    # ---- inference API --------------------------------------------------------------------------
    def ping(self, timeout: float = 5) -> str:
        """TorchServe's health: "Healthy" or "Unhealthy" (Ping answers the JSON of /ping, {"status": ...});
        needs the inference key like every other call."""
        empty = importlib.import_module("google.protobuf.empty_pb2").Empty()
        return json.loads(self._call(self.inference_stub.Ping, empty, "inference", timeout).health)["status"]

    def predict(self, model: str, data: bytes, version: str | None = None, input_name: str = "data",
                inputs: dict[str, bytes] | None = None, timeout: float | None = None, metadata=None) -> bytes:
        """The prediction body for `data` sent as input `input_name` (the handler sees it as that field, like a
        multipart field; `inputs` adds more). gRPC status OK even when the handler rejected the request: see
        `handler_error`. `metadata` replaces the token metadata (e.g. [] to send none)."""
        request = self.pb.inference_pb2.PredictionsRequest(
            model_name=model, model_version=version or "", input={input_name: data, **(inputs or {})})
        return self._call(self.inference_stub.Predictions, request, "inference", timeout, metadata).prediction

    # ---- management API -------------------------------------------------------------------------
    def _management(self, rpc: str, request, timeout: float | None = None, metadata=None) -> str:
        return self._call(getattr(self.management_stub, rpc), request, "management", timeout, metadata).msg

    def models(self, limit: int = 100, next_page_token: int = 0) -> dict:
        """ListModels, parsed: {"models": [{"modelName", "modelUrl"}, ...], "nextPageToken" when there are more}.
        `limit` is always sent: a request without it (proto3's 0) gets an empty list from 0.12, not 100 models."""
        request = self.pb.management_pb2.ListModelsRequest(limit=limit, next_page_token=next_page_token)
        return json.loads(self._management("ListModels", request))

    def describe(self, model: str, version: str | None = None, metadata=None) -> list[dict]:
        """DescribeModel, parsed: the same list of versions (with `workers`) as GET /models/{model}."""
        request = self.pb.management_pb2.DescribeModelRequest(model_name=model, model_version=version or "")
        return json.loads(self._management("DescribeModel", request, metadata=metadata))

    def ready_workers(self, model: str, version: str | None = None) -> int:
        return sum(w.get("status") == "READY" for v in self.describe(model, version) for w in v.get("workers", []))

    def scale(self, model: str, min_worker: int, max_worker: int | None = None, version: str | None = None,
              synchronous: bool = True, timeout: float = 300) -> str:
        """ScaleWorker; synchronous by default (returns once the workers have started or stopped)."""
        request = self.pb.management_pb2.ScaleWorkerRequest(
            model_name=model, model_version=version or "", min_worker=min_worker,
            max_worker=max_worker if max_worker is not None else min_worker, synchronous=synchronous)
        return self._management("ScaleWorker", request, timeout=timeout)

    def close(self) -> None:
        self.inference_channel.close()
        self.management_channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
