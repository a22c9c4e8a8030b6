"""`TskitHandler`: the batch-aware base every handler here subclasses, and the one users subclass.

TorchServe calls `initialize(context)` once per worker and `handle(requests, context)` per batch. This
class owns what every task shares: config validation, device, precision policy, thread count, integrity
check, model loading and warm-up, metrics, drift, explanations and KServe envelopes. `handle` runs
TorchServe's own contract, each step overridable on its own with `super()` composing:

    preprocess(data) -> batch       every request decoded on its own, explanation requests set aside
    inference(batch) -> outputs     the model (`forward`)
    postprocess(outputs) -> list    one answer per request that reached inference, in order

and a request fails alone wherever its code fails: a client error (BadInput) is its JSON 4xx, any other
exception in per-request code its JSON 500; when batch code raises, each request of the batch is answered
again on its own, so the one that breaks it fails alone (handlers/contract.py). The worker stays up.

A new task fills in five finer hooks, which the contract's defaults call:

    setup(model_dir)          read task files from the archive (labels, vocabulary, ...)
    decode(request) -> item   one request to one model input; raise BadInput for a client error
    collate(items) -> batch   the decoded items to one tensor on `self.device` in `self.dtype`
    respond(outputs) -> list  the model's batch output to one JSON-able response per item
    example_items(n) -> list  n synthetic decoded items, for warm-up

and declares its config keys and defaults in `config_defaults` (merged with `BASE_CONFIG`). Optional hooks:
`drift_features(batch)` / `drift_output_features(outputs)` (drift monitoring, handlers/drift.py) and
`explain_items(items, requests)` (explanations, handlers/explain.py).
"""
import logging
import os
import sys

import numpy as np
import torch

from handlers.torchserve import BaseHandler
from handlers.drift import DRIFT_CONFIG, REFERENCE_NAME, DriftMonitor, read_reference
from handlers.contract import BatchState, StageClock, as_answers, is_describe, one_at_a_time, request_error, subset
from handlers.errors import ConfigError, RequestError, Unavailable
from handlers.explain import check_config as check_explain_config, is_explain, load_explainer, unavailable
from handlers.integrity import check_integrity
from handlers.loading import CompiledModel, load_model
from handlers.metrics import record_batch, record_drift
from handlers.protocol import answer_envelope, calling_envelope
from handlers.requirements import check_requirements
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
    # The state one pass of the contract carries from `preprocess` to `postprocess` (handlers.contract.BatchState):
    # `reached` is which requests the batch `preprocess` returned holds, in order (the ones `postprocess` answers);
    # `answers`/`answered` the requests already answered (rejected while decoding, explained). None between batches.
    batch_state: BatchState | None = None
    labels: dict | None = None  # {class index: name}, for the tasks whose answers name classes
    # the hooks the contract's defaults call, each with the default it belongs to: a subclass that keeps the default
    # must implement the hook, and is told so when the worker loads it
    REQUIRED_HOOKS = {"decode": "preprocess", "collate": "preprocess", "respond": "postprocess"}

    def initialize(self, context):
        self.check_hooks()
        self.context = context
        self.manifest = context.manifest  # what TorchServe's BaseHandler sets, for code written against it
        props = context.system_properties
        model_dir = props["model_dir"]
        yaml_config = self.model_yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.tskit_manifest = check_integrity(model_dir, yaml_config)
        if self.tskit_manifest is not None:
            check_requirements(self.tskit_manifest.get("requirements", []))
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
            serialized, model_file, self.device, self.config["model_class"] or None, self.threads, self.precision
        )
        self.model_paths = (model_dir, serialized, model_file)
        self._explainer = None  # loaded on the first explanation request
        compiled = isinstance(self.model, CompiledModel)
        fixed_dtype = self.model.fixed_dtype if compiled else None
        if compiled:  # a compiled engine: it takes that dtype and computes in its own precision
            if self.model.precision != self.precision:
                logger.info("%s model computes in %s (as exported), not %s", self.model_format,
                            self.model.precision, self.precision)
            self.dtype, self.precision = (fixed_dtype if fixed_dtype.is_floating_point else torch.float32,
                                          self.model.precision)
        self.channels_last = self.config["channels_last"] and fixed_dtype is None
        self.model = self.model.to(self.dtype)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

        self.setup(model_dir)
        self.drift = self.drift_monitor(model_dir)
        if self.config["warmup"]:
            self.warmup()
        self.initialized = True
        hint = self.model.hint if compiled else None
        logger.info(
            "loaded %s model on %s, precision %s%s, %d threads, batch size %d",
            self.model_format, self.device, self.precision, f" ({hint} hint)" if hint else "", self.threads,
            self.batch_size,
        )

    @classmethod
    def check_hooks(cls) -> None:
        """A hook the contract's defaults call but the class leaves unimplemented is named here, at load, not in a
        500 on the first request (`example_items` only where warm-up runs it: `warmup` in the config)."""
        missing = [f"{hook} (called by the default {caller})" for hook, caller in cls.REQUIRED_HOOKS.items()
                   if getattr(cls, hook) is getattr(TskitHandler, hook)
                   and getattr(cls, caller) is getattr(TskitHandler, caller)]
        if missing:
            raise ConfigError(f"{cls.__name__} does not implement {', '.join(missing)}: implement it, or override "
                              "the method that calls it")

    # ---- hooks -------------------------------------------------------------------------------
    def setup(self, model_dir: str) -> None:
        pass

    def decode(self, request: dict):
        raise NotImplementedError(f"{type(self).__name__}.decode")

    def collate(self, items: list) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__}.collate")

    def respond(self, outputs) -> list:
        raise NotImplementedError(f"{type(self).__name__}.respond")

    def example_items(self, n: int) -> list:
        raise NotImplementedError(f"{type(self).__name__}.example_items")

    def drift_features(self, batch) -> tuple[list[str], torch.Tensor] | None:
        """(names, [N, F] values) describing the collated batch, for drift monitoring; None = no drift."""
        return None

    def drift_output_features(self, outputs) -> tuple[list[str], torch.Tensor] | None:
        """(names, [N, G]) describing the model's outputs: by default the top-1 probability of a handler
        with `labels` whose model returns [N, classes] logits."""
        if self.labels and isinstance(outputs, torch.Tensor) and outputs.dim() == 2:
            return ["top1_probability"], torch.softmax(outputs.float(), dim=1).amax(dim=1, keepdim=True)
        return None

    def explain_items(self, items: list, requests: list[dict]) -> list:
        """Attributions for decoded items sent to /explanations: one answer (or RequestError) per item."""
        raise Unavailable(f"{type(self).__name__} has no explanations", kind="ExplanationsUnavailable")

    def prepare_explainer(self, model: torch.nn.Module) -> torch.nn.Module:
        """Apply to the explanation model what `setup` applied to the serving model."""
        return model

    # ---- shared machinery ----------------------------------------------------------------------
    def forward(self, batch, *args, **kwargs):
        """The model on a collated batch, without autograd."""
        with torch.inference_mode():
            return self.model(batch, *args, **kwargs)

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
        if type(self).example_items is TskitHandler.example_items:
            raise ConfigError(f"{type(self).__name__} does not implement example_items(n), which warm-up runs: "
                              "implement it, or set `warmup: false` in the handler config")
        for n in sorted({1, self.batch_size}):
            self.forward(self.collate(self.example_items(n)))

    # ---- TorchServe's contract ---------------------------------------------------------------------
    def handle(self, data, context):
        """TorchServe's entry point: a batch of its requests, or the instances (inputs) of one KServe v1 (v2)
        request when `service_envelope` unpacked it (handlers/protocol.py)."""
        envelope = calling_envelope(sys._getframe(1))
        if envelope is not None:
            return answer_envelope(self, envelope, data, context)
        return self.handle_requests(data, context)

    def handle_requests(self, data, context):
        """One answer per request, in order: describe calls get `describe_handle()`, the rest go through
        `preprocess` -> `inference` -> `postprocess` (`answer_batch`)."""
        self.context = context
        clock = StageClock()
        responses: list = [None] * len(data)
        pending = []
        for i in range(len(data)):
            if is_describe(context, i):
                responses[i] = self.describe_handle()
            else:
                pending.append(i)
        rejected: list[str] = []
        if pending:
            with subset(context, pending):
                answers = self.answer_batch([data[i] for i in pending], clock, rejected)
            for i, answer in zip(pending, answers):
                responses[i] = answer
        record_batch(context, clock.ms, len(data), rejected)
        logger.info("batch of %d [%s]: preprocess %.1f ms, inference %.1f ms, postprocess %.1f ms, %d rejected",
                    len(data), ",".join(self.request_id(i) for i in range(len(data))), clock.ms["preprocess"],
                    clock.ms["inference"], clock.ms["postprocess"], len(rejected))
        return responses

    def answer_batch(self, data: list, clock: StageClock, rejected: list, isolate: bool = True) -> list:
        """Run the contract over `data` (the context addresses exactly these requests). A request rejected
        while decoding never reaches `inference`; `postprocess` answers the ones that did, in order. If a
        stage raises for a batch of several requests, each is answered again on its own (`isolate`), so a
        request that breaks the user's batch code fails alone; a lone request gets the JSON error."""
        state = self.begin_batch(len(data))
        stage = "preprocess"
        try:
            with clock.stage("preprocess"):
                inputs = self.preprocess(data)
            self.answer_explanations(state, data)
            reached = state.reaching_inference()
            if reached:
                stage = "inference"
                with clock.stage("inference"):
                    outputs = self.inference(inputs)
                stage = "postprocess"
                with clock.stage("postprocess"):
                    answers = as_answers(self.postprocess(outputs), len(reached))
                    for k, answer in zip(reached, answers):
                        state.answer(k, self.unexplained(k, answer))
                    self.watch_drift(inputs, outputs)
        except Exception as err:  # the user's code included: the worker must answer, and stay up
            missing = state.unanswered()
            if isolate and len(missing) > 1:
                answers = one_at_a_time(self.context, missing, stage, err,
                                        lambda k: self.answer_batch([data[k]], clock, rejected, isolate=False)[0])
                for k, answer in zip(missing, answers):
                    state.answer(k, answer)
            else:
                error = request_error(err, stage, decoding=stage == "preprocess")
                if error.status >= 500:
                    logger.error("%s failed for request(s) %s", stage,
                                 ", ".join(self.request_id(k) for k in missing), exc_info=err)
                for k in missing:
                    state.answer(k, self.reject(k, error))
        finally:
            self.batch_state = None
        rejected += state.rejected
        return state.answers

    def begin_batch(self, n: int) -> BatchState:
        """Start the bookkeeping for `n` requests: what `preprocess` fills in (`self.batch_state`)."""
        self.batch_state = BatchState(n)
        return self.batch_state

    def preprocess(self, data: list):
        """TorchServe's hook: the requests of a batch to the model's input. Here: `decode` each request on
        its own (a failure answers that request alone), set explanation requests aside, and `collate` the
        rest; `self.batch_state.reached` says which requests the returned batch holds. Returns None when no
        request is left to predict."""
        state = self.batch_state
        if state is None or state.n != len(data) or state.reached is not None:  # called outside `handle`
            state = self.begin_batch(len(data))
        items, reached = [], []
        for k, request in enumerate(data):
            try:
                item = self.decode(request)
            except Exception as err:
                error = request_error(err, "decode", decoding=True)
                if error.status >= 500:
                    logger.error("decode failed for request %s", self.request_id(k), exc_info=err)
                state.answer(k, self.reject(k, error))
                continue
            if is_explain(self.context, k):
                state.explain.append((k, item))
            else:
                items.append(item)
                reached.append(k)
        state.reached = reached
        return self.collate(items) if items else None

    def inference(self, data, *args, **kwargs):
        """TorchServe's hook: the model's output for what `preprocess` returned."""
        return self.forward(data, *args, **kwargs)

    def postprocess(self, data) -> list:
        """TorchServe's hook: the model's batch output to one answer per request that reached inference."""
        return self.respond(data)

    def describe_handle(self):
        """TorchServe's describe call (`GET /models/NAME?customized=true`, in `customizedMetadata`): what this
        worker serves and how."""
        labels = self.labels or {}
        manifest = self.tskit_manifest or {}
        golden = manifest.get("golden") or {}
        return {
            "handler": type(self).__name__,
            "format": self.model_format,
            "precision": self.precision,
            "device": str(self.device),
            "threads": self.threads,
            "batch_size": self.batch_size,
            "labels": list(labels.values()) if isinstance(labels, dict) else list(labels),
            "config": self.config,
            "manifest": {
                "model": manifest.get("model"),
                "files": len(manifest.get("files", {})),
                "golden_cases": len(golden.get("cases", [])),
                "golden_precision": golden.get("precision"),
                "reference_features": (manifest.get("reference") or {}).get("features"),
                "requirements": manifest.get("requirements", []),
                "environment": manifest.get("environment"),
            } if manifest else None,
        }

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

    def answer_explanations(self, state: BatchState, data: list) -> None:
        """Requests sent to /explanations, set aside by `preprocess`, are answered by `explain_items`
        (BaseHandler already uses the name `explain` for a flag)."""
        if not state.explain:
            return
        indices = [k for k, _ in state.explain]
        try:
            answers = self.explain_items([item for _, item in state.explain], [data[k] for k in indices])
        except Exception as err:
            error = request_error(err, "explain_items")
            if error.status >= 500:
                logger.error("explain_items failed", exc_info=err)
            answers = [error] * len(indices)
        for k, answer in zip(indices, answers):
            if isinstance(answer, RequestError):
                state.answer(k, self.reject(k, answer))
            else:
                state.answer(k, answer)

    def unexplained(self, index: int, answer):
        """A request sent to /explanations that reached inference: the handler's `preprocess` set nothing
        aside, so there is nothing to explain it with (the prediction is not what was asked for)."""
        if not is_explain(self.context, index):
            return answer
        return self.reject(index, unavailable(f"{type(self).__name__}.preprocess does not call "
                                              "super().preprocess(data), which sets explanation requests aside"))

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

    def reject(self, index: int, err: RequestError) -> dict:
        """Answer one request with its error (a 4xx, or a 500 for a handler that failed); the rest of the batch
        is unaffected. 4xx kinds are counted in `TskitBadInput`."""
        logger.warning("request %s rejected (%d %s): %s", self.request_id(index), err.status, err.kind, err.message)
        if err.status < 500 and self.batch_state is not None:
            self.batch_state.rejected.append(err.kind)
        if self.context is not None:
            self.context.set_response_status(err.status, err.message, idx=index)
        return err.to_response()
