"""The Prometheus alerting rules shipped in `config/alerts.yml`, and the metric names their expressions read."""
import re
from pathlib import Path

import yaml

ALERTS_FILE = Path(__file__).resolve().parent.parent / "config" / "alerts.yml"
PROMETHEUS_OWN = {"up"}  # series Prometheus itself adds to every scrape, not TorchServe's
KEYWORDS = {"and", "or", "unless", "bool", "offset"}


def alert_rules(path: str | Path = ALERTS_FILE) -> list[dict]:
    return [rule for group in yaml.safe_load(Path(path).read_text())["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads: identifiers that are not functions, keywords, label names or
    durations."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    words = re.findall(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\()?", expr)
    return {word for word, call in words if not call and word not in KEYWORDS}


def alert_metric_names(path: str | Path = ALERTS_FILE) -> set[str]:
    """Every metric the rules read, Prometheus's own series (`up`) left out."""
    return set().union(*(metric_names(rule["expr"]) for rule in alert_rules(path))) - PROMETHEUS_OWN
