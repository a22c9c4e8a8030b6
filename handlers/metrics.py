"""Per-batch handler metrics, exported by TorchServe on the metrics port (Prometheus).

Counters, so any scraper can difference two readings: total milliseconds in each stage, requests and
batches seen (their ratio is the actual batch size), and rejected requests by kind. TorchServe drops
metrics it was not told about: `config/metrics.yaml` declares these (config.properties `metrics_config`).
Drift monitoring (handlers/drift.py) adds its PSI gauges. Every call is given a fresh dimension list:
TorchServe appends its default dimensions to the list it is given.
"""
import logging

import numpy as np
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

logger = logging.getLogger(__name__)

STAGE_COUNTERS = {"preprocess": "TskitPreprocessMs", "inference": "TskitInferenceMs",
                  "postprocess": "TskitPostprocessMs"}
REQUESTS, BATCHES, BAD_INPUT = "TskitRequests", "TskitBatches", "TskitBadInput"
PSI_METRIC, MAX_METRIC = "TskitDriftPSI", "TskitDriftMax"
TRUNCATED = "TskitTextsTruncated"


def record_batch(context, stage_ms: dict[str, float], requests: int, rejected_kinds: list[str]) -> None:
    metrics = getattr(context, "metrics", None)
    if metrics is None:
        return
    try:
        for stage, name in STAGE_COUNTERS.items():
            metrics.add_time(name, round(stage_ms.get(stage, 0.0), 3), None, "ms", [], MetricTypes.COUNTER)
        metrics.add_counter(REQUESTS, requests, None, [])
        metrics.add_counter(BATCHES, 1, None, [])
        for kind in rejected_kinds:
            metrics.add_counter(BAD_INPUT, 1, None, [Dimension("Kind", kind)])
        metrics.add_time("HandlerTime", round(sum(stage_ms.values()), 2), None, "ms", [])
    except Exception:  # metrics must never fail a batch
        logger.exception("could not record handler metrics")


def record_truncated(context, texts: int) -> None:
    """Texts cut to the model's longest input (and answered)."""
    metrics = getattr(context, "metrics", None)
    if metrics is not None and texts:
        metrics.add_counter(TRUNCATED, texts, None, [])


def record_drift(context, names: list[str], values: np.ndarray) -> None:
    """`TskitDriftPSI{Feature}` per feature and `TskitDriftMax`; TorchServe adds ModelName and Level."""
    metrics = getattr(context, "metrics", None)
    if metrics is None:
        return
    for name, value in zip(names, values):
        metrics.add_metric(PSI_METRIC, round(float(value), 6), "psi", None, [Dimension("Feature", name)],
                           MetricTypes.GAUGE)
    metrics.add_metric(MAX_METRIC, round(float(np.max(values)), 6), "psi", None, [], MetricTypes.GAUGE)
