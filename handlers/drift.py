"""Input and output drift: PSI of recent requests against reference statistics stored in the archive.

`tskit build --reference` runs the archive's own handler on reference inputs and stores, per feature (a
handler's `drift_features` of the collated batch, plus `drift_output_features` of the model's output),
quantile bin edges and the reference share of each bin in `tskit-reference.json`. At serve time a
`DriftMonitor` keeps the bin of every feature for the last `drift_window` rows in a ring buffer with
running counts (O(features) per row, numpy-vectorised per batch, bounded memory) and, every
`drift_every` rows once `drift_min_count` rows are in, scores the population stability index

    PSI = sum over bins (p - q) * ln(p / q),   p = window share, q = reference share, both >= eps

and exports it as the gauges `TskitDriftPSI{Feature=...}` and `TskitDriftMax` (handlers/metrics.py). A PSI
above `drift_threshold` logs a WARNING. Each worker keeps its own window.
"""
import json
import logging
import math
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

REFERENCE_NAME = "tskit-reference.json"
REFERENCE_VERSION = 1
DEFAULT_BINS = 10
EPS = 1e-4  # the share an empty bin counts as, so ln(p / q) stays finite

DRIFT_CONFIG = {
    "drift_window": 512,  # rows the serve-time distribution is computed over (per worker)
    "drift_min_count": 256,  # rows before a PSI is reported: with n rows PSI is about (bins - 1) / n without drift
    "drift_every": 64,  # rows between two scorings (and gauge exports)
    "drift_threshold": 0.2,  # PSI above which a feature counts as drifted (WARNING in the model log)
}


def psi(current: np.ndarray, reference: np.ndarray, eps: float = EPS) -> np.ndarray:
    """PSI of each row of `current` shares against the same row of `reference` shares ([F, B] -> [F])."""
    p = np.clip(np.asarray(current, dtype=np.float64), eps, None)
    q = np.clip(np.asarray(reference, dtype=np.float64), eps, None)
    return ((p - q) * np.log(p / q)).sum(axis=-1)


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of every value: [N, F] values, [F, B-1] ascending edges (+inf padded) -> [N, F] in 0..B-1.

    Bin 0 is below the first edge, bin k is [edge k-1, edge k)."""
    return (values[:, :, None] >= edges[None, :, :]).sum(axis=-1)


def quantile_edges(column: np.ndarray, bins: int) -> np.ndarray:
    """Distinct interior quantiles: ties (a feature that is often 0, token counts) merge bins. A feature constant
    in the reference (no text was cut) gets an edge just above its value, so any other value is a bin of its own."""
    qs = np.quantile(column, np.linspace(0, 1, bins + 1)[1:-1])
    if column.min() == column.max():
        qs = np.append(qs, np.nextafter(column.max(), np.inf))
    return np.unique(qs)


def reference_stats(features: np.ndarray, names: list[str], bins: int = DEFAULT_BINS) -> dict:
    """The stored reference of [N, F] feature rows: per feature its edges and the share of each bin."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != len(names) or len(features) < bins:
        raise ValueError(f"need at least {bins} rows of {len(names)} features, got shape {list(features.shape)}")
    out = []
    for f, name in enumerate(names):
        column = features[:, f]
        edges = quantile_edges(column, bins)
        shares = np.bincount(bin_index(column[:, None], edges[None])[:, 0], minlength=len(edges) + 1) / len(column)
        out.append({"name": name, "edges": edges.tolist(), "shares": shares.tolist(),
                    "mean": float(column.mean()), "std": float(column.std())})
    return {"version": REFERENCE_VERSION, "rows": int(len(features)), "features": out}


def read_reference(model_dir: str | Path) -> dict | None:
    path = Path(model_dir) / REFERENCE_NAME
    return json.loads(path.read_text()) if path.exists() else None


class DriftMonitor:
    """Sliding-window bin counts of recent rows and their PSI against the reference."""

    def __init__(self, reference: dict, window: int, min_count: int, every: int, threshold: float):
        features = reference["features"]
        self.names = [f["name"] for f in features]
        width = max(len(f["shares"]) for f in features)
        self.bins = width
        self.edges = np.full((len(features), width - 1), np.inf)
        self.reference = np.zeros((len(features), width))
        for i, f in enumerate(features):
            self.edges[i, :len(f["edges"])] = f["edges"]
            self.reference[i, :len(f["shares"])] = f["shares"]
        self.window, self.min_count, self.every, self.threshold = window, min(min_count, window), every, threshold
        # the ring holds each row's bin per feature; `width` is the bin of an empty slot (counted, never scored)
        self.ring = np.full((window, len(features)), width, dtype=np.int32)
        self.counts = np.zeros((len(features), width + 1), dtype=np.int64)
        self.offsets = np.arange(len(features)) * (width + 1)
        self.pos = 0  # next ring slot
        self.seen = 0  # rows ever observed
        self.since_score = 0
        self.last: np.ndarray | None = None  # PSI per feature at the last scoring
        self.drifted: list[str] = []
        self.warned_at = -math.inf

    @property
    def filled(self) -> int:
        return min(self.seen, self.window)

    def observe(self, values: np.ndarray) -> bool:
        """Add [N, F] feature rows to the window; True when it is time to score."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.names):
            raise ValueError(f"drift features of shape {list(values.shape)}, expected [n, {len(self.names)}]")
        n = len(values)
        rows = bin_index(values[-self.window:], self.edges)
        slots = (self.pos + np.arange(len(rows))) % self.window
        size = self.counts.size
        self.counts -= np.bincount((self.ring[slots] + self.offsets).ravel(), minlength=size).reshape(self.counts.shape)
        self.counts += np.bincount((rows + self.offsets).ravel(), minlength=size).reshape(self.counts.shape)
        self.ring[slots] = rows
        self.pos = (self.pos + len(rows)) % self.window
        self.seen += n
        self.since_score += n
        return self.filled >= self.min_count and (self.last is None or self.since_score >= self.every)

    def shares(self) -> np.ndarray:
        return self.counts[:, :self.bins] / max(self.filled, 1)

    def score(self) -> np.ndarray:
        """PSI per feature over the current window; remembers which features are past the threshold."""
        self.since_score = 0
        self.last = psi(self.shares(), self.reference)
        self.drifted = [name for name, value in zip(self.names, self.last) if value > self.threshold]
        return self.last

    def should_warn(self) -> bool:
        """Drifted now, and not warned in the last window's worth of rows."""
        if not self.drifted or self.seen - self.warned_at < self.window:
            return False
        self.warned_at = self.seen
        return True

    def report(self) -> str:
        worst = sorted(zip(self.last, self.names), reverse=True)[:5]
        return ", ".join(f"{name} {value:.2f}" for value, name in worst)
