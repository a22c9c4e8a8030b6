"""A TorchServe worker's view of an archive, in this process: unpack it, build the `ts.context.Context` the worker
builds, import the class it would instantiate, and call `handle` as it does. The build (golden answers, drift
references), `tskit verify` and the tests all run handlers through it; `tskit.testing` is its public face.
"""
import importlib
import inspect
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

METRICS_YAML = Path(__file__).resolve().parents[1] / "config" / "metrics.yaml"  # the shipped metrics config


def unpack_archive(mar: str | Path, dest: str | Path | None = None) -> Path:
    dest = Path(dest or tempfile.mkdtemp(prefix="tskit-mar-"))
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(dest)
    return dest


def make_context(model_dir: str | Path, batch_size: int = 8, yaml_overrides: dict | None = None) -> Context:
    """A worker-like Context for an unpacked archive; `yaml_overrides` patch its model-config.yaml."""
    model_dir = Path(model_dir)
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    config_name = manifest["model"].get("configFile")
    model_yaml = yaml.safe_load((model_dir / config_name).read_text()) if config_name else {}
    for key, value in (yaml_overrides or {}).items():
        if isinstance(value, dict) and isinstance(model_yaml.get(key), dict):
            model_yaml[key] = {**model_yaml[key], **value}
        else:
            model_yaml[key] = value
    name = manifest["model"]["modelName"]
    metrics = MetricsCacheYamlImpl(config_file_path=str(METRICS_YAML))  # the worker's metrics cache
    metrics.initialize_cache()
    metrics.model_name = name
    return Context(name, str(model_dir), manifest, batch_size, None, "0.12.0",
                   metrics=metrics, model_yaml_config=model_yaml)


def load_handler(handler_class, model_dir: str | Path, **context_kwargs):
    handler = handler_class()
    context = make_context(model_dir, **context_kwargs)
    handler.initialize(context)
    if getattr(handler, "context", None) is None:  # TorchServe's BaseHandler keeps it only from `handle` on
        handler.context = context
    return handler


def handler_class(model_dir: Path):
    """The class TorchServe would instantiate: the one class defined in the manifest's handler module."""
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    module = importlib.import_module(Path(manifest["model"]["handler"].split(":")[0]).stem)
    [cls] = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    return cls


def load_archive_handler(mar: str | Path, dest: str | Path | None = None, **context_kwargs):
    """The archive's own handler (the class its MAR-INF/MANIFEST.json names, from the code inside it), initialised
    on the unpacked archive as a worker would. The archive's folder goes first on `sys.path`, as in a worker;
    modules of an archive loaded earlier in this process are forgotten, so each archive gets its own."""
    root = unpack_archive(mar, dest).resolve()
    for path in root.iterdir():
        name = path.stem if path.suffix == ".py" else path.name if (path / "__init__.py").exists() else None
        if name and name != "handlers":  # the library itself stays as imported
            for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[module]
    sys.path.insert(0, str(root))
    return load_handler(handler_class(root), root, **context_kwargs)


def _start_requests(context, headers: list[dict]) -> None:
    """One request per entry of `headers`: its headers and its id on the context, as ts/service.py sets them."""
    context.request_processor = [RequestProcessor(h) for h in headers]
    context.request_ids = {i: f"tskit-test-{i}" for i in range(len(headers))}
    if context.metrics is not None:
        context.metrics.request_ids = context.request_ids


def run_batch(handler, requests: list[dict], headers: list[dict] | None = None) -> list[tuple[int, object]]:
    """One `handle` call as the worker makes it; returns [(http status, body)] per request."""
    context = handler.context
    _start_requests(context, headers or [{} for _ in requests])
    bodies = handler.handle(requests, context)
    assert len(bodies) == len(requests), "a handler must answer every request of the batch"
    return [(context.get_response_status(i)[0] or 200, body) for i, body in enumerate(bodies)]


def run_envelope(handler, envelope: str, body, headers: dict | None = None) -> tuple[int, object]:
    """One HTTP request through TorchServe's own request envelope (`kserve` or `kservev2`), as a worker started
    with that `service_envelope` runs it: returns the request's (http status, body)."""
    from ts.model_loader import TsModelLoader

    envelope_class = TsModelLoader()._load_default_envelope(envelope)
    context = handler.context
    _start_requests(context, [headers or {}])
    answers = envelope_class(handler.handle).handle([{"body": json.loads(json.dumps(body))}], context)
    assert len(answers) == 1, "an envelope answers the one request it unpacked"
    return context.get_response_status(0)[0] or 200, answers[0]
