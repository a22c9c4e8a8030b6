"""Per-batch handler metrics, exported by TorchServe on the metrics port (Prometheus).

Counters, so any scraper can difference two readings: total milliseconds in each stage, requests and
batches seen (their ratio is the actual batch size), and rejected requests by kind. TorchServe drops
metrics it was not told about: `config/metrics.yaml` declares these (config.properties `metrics_config`).
"""
import logging

from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes

logger = logging.getLogger(__name__)

STAGE_COUNTERS = {"preprocess": "TskitPreprocessMs", "inference": "TskitInferenceMs",
                  "postprocess": "TskitPostprocessMs"}
REQUESTS, BATCHES, BAD_INPUT = "TskitRequests", "TskitBatches", "TskitBadInput"


def record_batch(context, stage_ms: dict[str, float], requests: int, rejected_kinds: list[str]) -> None:
    metrics = getattr(context, "metrics", None)
    if metrics is None:
        return
    try:
        for stage, name in STAGE_COUNTERS.items():
            metrics.add_time(name, round(stage_ms.get(stage, 0.0), 3), None, "ms", [], MetricTypes.COUNTER)
        # fresh dimension lists: TorchServe appends its default dimensions to the list it is given
        metrics.add_counter(REQUESTS, requests, None, [])
        metrics.add_counter(BATCHES, 1, None, [])
        for kind in rejected_kinds:
            metrics.add_counter(BAD_INPUT, 1, None, [Dimension("Kind", kind)])
        metrics.add_time("HandlerTime", round(sum(stage_ms.values()), 2), None, "ms", [])
    except Exception:  # metrics must never fail a batch
        logger.exception("could not record handler metrics")
