"""`TskitHandler`: the batch-aware base every handler here subclasses.

TorchServe calls `initialize(context)` once per worker and `handle(requests, context)` per batch. This
class owns what every task shares: config validation, device, precision policy, thread count, model
loading and warm-up, and per-request isolation (a bad request fails alone; the rest of the batch is
answered). A task subclass fills in five hooks:

    setup(model_dir)          read task files from the archive (labels, vocabulary, ...)
    decode(request) -> item   one request to one model input; raise BadInput for a client error
    collate(items) -> batch   the decoded items to one tensor on `self.device` in `self.dtype`
    respond(outputs) -> list  the model's batch output to one JSON-able response per item
    example_items(n) -> list  n synthetic decoded items, for warm-up

and declares its config keys and defaults in `config_defaults` (merged with `BASE_CONFIG`). Two optional
hooks feed drift monitoring (handlers/drift.py): `drift_features(batch)` and `drift_output_features(outputs)`.
"""
import logging
import os
import sys
import time

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler

from handlers.drift import DRIFT_CONFIG, REFERENCE_NAME, DriftMonitor, read_reference
from handlers.errors import BadInput, ConfigError
from handlers.explain import check_config as check_explain_config, is_explain, load_explainer
from handlers.integrity import MANIFEST_NAME, check_integrity
from handlers.loading import load_model
from handlers.metrics import record_batch, record_drift
from handlers.protocol import answer_envelope, calling_envelope
from handlers.runtime import (
    DTYPES,
    pick_device,
    resolve_precision,
    configured_threads,
    set_torch_threads,
)

logger = logging.getLogger(__name__)

BASE_CONFIG = {
    "precision": "auto",  # auto | fp32 | fp16 | bf16
    "threads": 0,  # torch threads per worker; 0 = cores // maxWorkers
    "model_class": "",  # nn.Module to build from the model file, when it defines several
    "channels_last": False,  # NHWC memory format for 4-D inputs
    "warmup": True,  # one forward pass per batch shape before the worker reports READY
    **DRIFT_CONFIG,  # drift_window, drift_min_count, drift_every, drift_threshold (handlers/drift.py)
}


def validate_config(section: dict | None, defaults: dict) -> dict:
    """Merge the archive's `handler:` section over `defaults`, rejecting unknown keys and wrong types
    with a message that says what is allowed."""
    section = dict(section or {})
    unknown = sorted(set(section) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown handler config keys {unknown}; allowed: {sorted(defaults)}")
    config = dict(defaults)
    for key, value in section.items():
        expected = type(defaults[key])
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is list and isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"handler config {key!r} must be {expected.__name__}, got {value!r}")
        config[key] = value
    return config


class TskitHandler(BaseHandler):
    config_defaults: dict = {}

    def initialize(self, context):
        self.context = context
        props = context.system_properties
        model_dir = props["model_dir"]
        self.tskit_manifest = check_integrity(model_dir)
        if self.tskit_manifest is None:
            logger.warning("no %s in the archive: its files cannot be checked", MANIFEST_NAME)
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.config = validate_config(yaml_config.get("handler"), {**BASE_CONFIG, **self.config_defaults})
        if "explain_method" in self.config:
            check_explain_config(self.config)

        self.device = pick_device(props.get("gpu_id"))
        self.precision = resolve_precision(self.config["precision"], self.device)
        self.dtype = DTYPES[self.precision]
        workers = int(yaml_config.get("maxWorkers") or yaml_config.get("minWorkers") or 1)
        self.threads = configured_threads(self.config["threads"], workers)
        if self.device.type == "cpu":
            set_torch_threads(self.threads)
        self.batch_size = int(props.get("batch_size") or 1)

        model_info = context.manifest["model"]
        serialized = os.path.join(model_dir, model_info["serializedFile"])
        model_file = model_info.get("modelFile")
        model_file = os.path.join(model_dir, model_file) if model_file else None
        self.model, self.model_format = load_model(
            serialized, model_file, self.device, self.config["model_class"] or None, self.threads
        )
        self.model_paths = (model_dir, serialized, model_file)
        self._explainer = None  # loaded on the first explanation request
        fixed_dtype = getattr(self.model, "fixed_dtype", None)
        if fixed_dtype is not None and fixed_dtype != self.dtype:
            logger.info("%s model runs in the dtype it was exported with (%s), not %s",
                        self.model_format, fixed_dtype, self.precision)
            self.dtype = fixed_dtype
            self.precision = next(name for name, dt in DTYPES.items() if dt == fixed_dtype)
        self.channels_last = self.config["channels_last"] and fixed_dtype is None
        self.model = self.model.to(self.dtype)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

        self.setup(model_dir)
        self.drift = self.drift_monitor(model_dir)
        if self.config["warmup"]:
            self.warmup()
        self.initialized = True
        logger.info(
            "loaded %s model on %s, precision %s, %d torch threads, batch size %d",
            self.model_format, self.device, self.precision, self.threads, self.batch_size,
        )

    # ---- hooks -------------------------------------------------------------------------------
    def setup(self, model_dir: str) -> None:
        pass

    def decode(self, request: dict):
        raise NotImplementedError

    def collate(self, items: list) -> torch.Tensor:
        raise NotImplementedError

    def respond(self, outputs) -> list:
        raise NotImplementedError

    def example_items(self, n: int) -> list:
        raise NotImplementedError

    def drift_features(self, batch) -> tuple[list[str], torch.Tensor] | None:
        """(names, [N, F] values) describing the collated batch, for drift monitoring; None = no drift."""
        return None

    def drift_output_features(self, outputs) -> tuple[list[str], torch.Tensor] | None:
        """(names, [N, G]) describing the model's outputs: by default the top-1 probability of a handler
        with `labels` whose model returns [N, classes] logits."""
        if getattr(self, "labels", None) and isinstance(outputs, torch.Tensor) and outputs.dim() == 2:
            return ["top1_probability"], torch.softmax(outputs.float(), dim=1).amax(dim=1, keepdim=True)
        return None

    def explain_items(self, items: list, requests: list[dict]) -> list:
        """Attributions for decoded items sent to /explanations: one answer (or BadInput) per item."""
        raise BadInput(f"{type(self).__name__} has no explanations", status=501, kind="ExplanationsUnavailable")

    def prepare_explainer(self, model: torch.nn.Module) -> torch.nn.Module:
        """Apply to the explanation model what `setup` applied to the serving model."""
        return model

    # ---- shared machinery ----------------------------------------------------------------------
    def forward(self, batch: torch.Tensor):
        with torch.inference_mode():
            return self.model(batch)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """Host to device. On CUDA a CPU tensor is pinned first, so the non-blocking copy really overlaps; a
        tensor already on the device (`collate` after `normalised`, say) goes through unchanged."""
        if self.device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def to_model_input(self, batch: torch.Tensor) -> torch.Tensor:
        """Move a batch to the model's device; floating tensors also take the model's dtype (integer
        ones, token ids say, keep theirs) and, if configured, the channels-last format."""
        batch = self.to_device(batch)
        if batch.is_floating_point():
            batch = batch.to(self.dtype)
        if self.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def warmup(self) -> None:
        for n in sorted({1, self.batch_size}):
            self.forward(self.collate(self.example_items(n)))

    def handle(self, data, context):
        """TorchServe's entry point: a batch of its requests, or the instances (inputs) of one KServe v1 (v2)
        request when `service_envelope` unpacked it (handlers/protocol.py)."""
        envelope = calling_envelope(sys._getframe(1))
        if envelope is not None:
            return answer_envelope(self, envelope, data, context)
        return self.handle_requests(data, context)

    def handle_requests(self, data, context):
        self.context = context
        t0 = time.perf_counter()
        responses: list = [None] * len(data)
        items, positions, rejected = [], [], []
        for i, request in enumerate(data):
            try:
                items.append(self.decode(request))
                positions.append(i)
            except BadInput as err:
                responses[i] = self.reject(i, err)
                rejected.append(err.kind)
        items, positions = self.answer_explanations(data, items, positions, responses, rejected)
        t1 = t2 = t3 = time.perf_counter()
        if items:
            batch = self.collate(items)
            t1 = time.perf_counter()
            outputs = self.forward(batch)
            t2 = time.perf_counter()
            for i, response in zip(positions, self.respond(outputs)):
                responses[i] = response
            self.watch_drift(batch, outputs)
            t3 = time.perf_counter()
        stage_ms = {"preprocess": (t1 - t0) * 1000, "inference": (t2 - t1) * 1000, "postprocess": (t3 - t2) * 1000}
        record_batch(context, stage_ms, len(data), rejected)
        logger.info("batch of %d [%s]: preprocess %.1f ms, inference %.1f ms, postprocess %.1f ms, %d rejected",
                    len(data), ",".join(self.request_id(i) for i in range(len(data))), stage_ms["preprocess"],
                    stage_ms["inference"], stage_ms["postprocess"], len(rejected))
        return responses

    def drift_rows(self, batch, outputs) -> tuple[list[str], np.ndarray] | None:
        """The drift features of one batch, inputs then outputs: what the reference and the window hold."""
        parts = [p for p in (self.drift_features(batch), self.drift_output_features(outputs)) if p is not None]
        if not parts:
            return None
        names = [name for part_names, _ in parts for name in part_names]
        values = torch.cat([v.detach().float().reshape(len(v), -1).cpu() for _, v in parts], dim=1)
        return names, values.numpy()

    def drift_monitor(self, model_dir: str) -> DriftMonitor | None:
        reference = read_reference(model_dir)
        if reference is None:
            logger.info("drift monitoring off: no %s in the archive (tskit build --reference)", REFERENCE_NAME)
            return None
        cfg = self.config
        if min(cfg["drift_window"], cfg["drift_min_count"], cfg["drift_every"]) < 1 or cfg["drift_threshold"] <= 0:
            raise ConfigError("handler config: drift_window, drift_min_count, drift_every >= 1, drift_threshold > 0")
        monitor = DriftMonitor(reference, cfg["drift_window"], cfg["drift_min_count"], cfg["drift_every"],
                               cfg["drift_threshold"])
        logger.info("drift monitoring on %d features (%s), window %d rows, threshold %.2f", len(monitor.names),
                    ", ".join(monitor.names[:8]) + (", ..." if len(monitor.names) > 8 else ""), monitor.window,
                    monitor.threshold)
        return monitor

    def watch_drift(self, batch, outputs) -> None:
        """Add the batch to the drift window and, when due, export the PSI gauges. Never fails a batch: on
        an error drift monitoring turns off for this worker, with the reason in the log."""
        if self.drift is None:
            return
        try:
            rows = self.drift_rows(batch, outputs)
            if rows is None or rows[0] != self.drift.names:
                raise ValueError(f"the handler's drift features {rows and rows[0]} are not the reference's "
                                 f"{self.drift.names}")
            if not self.drift.observe(rows[1]):
                return
            values = self.drift.score()
            record_drift(self.context, self.drift.names, values)
            if self.drift.should_warn():
                logger.warning("input drift: PSI above %.2f for %s over the last %d rows (worst: %s)",
                               self.drift.threshold, ", ".join(self.drift.drifted), self.drift.filled,
                               self.drift.report())
        except Exception:
            logger.exception("drift monitoring failed and is now off for this worker")
            self.drift = None

    def answer_explanations(self, data, items, positions, responses, rejected):
        """Requests sent to /explanations are answered by `explain_items` (BaseHandler already uses the name
        `explain` for a flag); returns the items left to predict."""
        wanted = [k for k, i in enumerate(positions) if is_explain(self.context, i)]
        if not wanted:
            return items, positions
        try:
            answers = self.explain_items([items[k] for k in wanted], [data[positions[k]] for k in wanted])
        except BadInput as err:
            answers = [err] * len(wanted)
        for k, answer in zip(wanted, answers):
            if isinstance(answer, BadInput):
                responses[positions[k]] = self.reject(positions[k], answer)
                rejected.append(answer.kind)
            else:
                responses[positions[k]] = answer
        answered = set(wanted)
        keep = [k for k in range(len(items)) if k not in answered]
        return [items[k] for k in keep], [positions[k] for k in keep]

    def explainer(self) -> torch.nn.Module:
        """The fp32 differentiable model explanations run on, loaded on first use (see handlers.explain)."""
        if self._explainer is None:
            model_dir, serialized, model_file = self.model_paths
            model = load_explainer(model_dir, serialized, model_file, self.model_format, self.device,
                                   self.config["model_class"] or None)
            self._explainer = self.prepare_explainer(model)
            logger.info("loaded the fp32 explanation model")
        return self._explainer

    def request_id(self, index: int) -> str:
        ids = getattr(self.context, "request_ids", None) or {}
        return str(ids.get(index, index))

    def reject(self, index: int, err: BadInput) -> dict:
        """Answer one request with its 4xx; the rest of the batch is unaffected."""
        logger.warning("request %s rejected (%d %s): %s", self.request_id(index), err.status, err.kind, err.message)
        if self.context is not None:
            self.context.set_response_status(err.status, err.message, idx=index)
        return err.to_response()
