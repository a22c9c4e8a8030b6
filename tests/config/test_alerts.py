"""config/alerts.yml: well-formed Prometheus alerting rules over metrics that exist, and (promtool, which
`make test` installs) rules that fire when they should. tests/e2e/test_serve.py checks the names against a live scrape."""
import re
import shutil
import subprocess

import yaml

from tskit.alerts import ALERTS_FILE, alert_metric_names, alert_rules, metric_names

CONFIG = ALERTS_FILE.parent
SEVERITIES = {"warning", "critical"}
DURATION = re.compile(r"^\d+[smhd]$")


def declared_metrics() -> set[str]:
    """Every metric name config/metrics.yaml declares (TorchServe's and the handlers')."""
    config = yaml.safe_load((CONFIG / "metrics.yaml").read_text())
    return {m["name"] for section in ("ts_metrics", "model_metrics") for kind in config[section].values() for m in kind}


def test_rules_are_well_formed():
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    assert groups and all(group["name"] and group["rules"] for group in groups)
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert DURATION.match(rule.get("for", "0s")), rule
        assert rule["labels"]["severity"] in SEVERITIES, rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule


def test_the_alerts_cover_drift_errors_latency_and_worker_restarts():
    used = alert_metric_names()
    assert {"TskitDriftPSI", "Requests5XX", "ts_inference_latency_microseconds", "TskitInferenceMs",
            "WorkerLoadTime"} <= used


def test_every_metric_an_alert_reads_is_declared():
    assert metric_names('sum by (ModelName) (rate(TskitBadInput{Kind="x"}[10m])) / on (a) b_total > 0.1') == {
        "TskitBadInput", "b_total"}
    assert alert_metric_names() <= declared_metrics(), alert_metric_names() - declared_metrics()


def promtool() -> str:
    """The promtool binary; its absence fails the test (`make test` installs Debian's prometheus package)."""
    path = shutil.which("promtool")
    assert path, "promtool not found: run `make test` (it installs it) or apt-get install prometheus"
    return path


H = 'Level="Host",Hostname="h"'
M = 'ModelName="m",Level="Model",Hostname="h"'
# promtool unit tests: input series at 1-minute steps, and which alerts fire at which time
PROMTOOL_TESTS = {
    "interval": "1m",
    "input_series": [
        {"series": f'TskitDriftPSI{{Feature="red_mean",{M}}}', "values": "0.05x10 0.9x30"},
        {"series": f'TskitDriftPSI{{Feature="blue_mean",{M}}}', "values": "0.05x40"},
        {"series": f"Requests5XX{{{H}}}", "values": "0+6x40"},
        {"series": 'ts_inference_requests_total{model_name="m",model_version="default",hostname="h"}',
         "values": "0+60x40"},
        {"series": 'ts_inference_latency_microseconds{model_name="m",model_version="default",hostname="h"}',
         "values": "0+6000000x40"},  # 100 ms per request
        {"series": f'WorkerLoadTime{{WorkerName="W-9000-m_1.0",{H}}}', "values": "8000x20 18000x20"},
        {"series": f'WorkerLoadTime{{WorkerName="W-9001-m_1.0",{H}}}', "values": "8000x40"},
    ],
    "alert_rule_test": [
        {"eval_time": "20m", "alertname": "TskitInputDrift", "exp_alerts": []},  # above 0.2 for 9 minutes only
        {"eval_time": "30m", "alertname": "TskitInputDrift", "exp_alerts": [
            {"exp_labels": {"severity": "warning", "Feature": "red_mean", "ModelName": "m", "Level": "Model",
                            "Hostname": "h"}}]},
        {"eval_time": "30m", "alertname": "TorchServeHighErrorRate", "exp_alerts": [{"exp_labels": {"severity": "critical"}}]},
        {"eval_time": "30m", "alertname": "TorchServeHighLatency", "exp_alerts": []},
        {"eval_time": "10m", "alertname": "TorchServeWorkerRestarted", "exp_alerts": []},
        {"eval_time": "25m", "alertname": "TorchServeWorkerRestarted", "exp_alerts": [
            {"exp_labels": {"severity": "warning", "WorkerName": "W-9000-m_1.0", "Level": "Host", "Hostname": "h"}}]},
        {"eval_time": "25m", "alertname": "TorchServeWorkerCrashLoop", "exp_alerts": []},
    ],
}


def test_promtool_accepts_the_alert_rules():
    result = subprocess.run([promtool(), "check", "rules", str(ALERTS_FILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_when_they_should(tmp_path):
    """promtool evaluates the rules over synthetic series. Annotations are left out of the copy it runs on
    (promtool compares them verbatim; the previous test checks their templates)."""
    config = yaml.safe_load(ALERTS_FILE.read_text())
    for group in config["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m",
                                                        "tests": [PROMTOOL_TESTS]}))
    result = subprocess.run([promtool(), "test", "rules", "tests.yml"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
