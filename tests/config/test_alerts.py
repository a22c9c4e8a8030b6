"""config/alerts.yml: well-formed Prometheus alerting rules over metrics that exist, and (promtool, which
`make test` installs; without it these tests fail) rules that fire when they should and stay quiet otherwise.
tests/e2e/test_serve.py checks the names against a live scrape; tests/e2e/test_prometheus_e2e.py fires them on a
real Prometheus."""
import re
import shutil
import subprocess

import pytest
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


def test_a_missing_promtool_fails_rather_than_skips(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AssertionError, match="make test"):
        promtool()


H = 'Level="Host",Hostname="h"'


def m(model: str) -> str:
    """The labels TorchServe gives a handler metric of `model`."""
    return f'ModelName="{model}",Level="Model",Hostname="h"'


def ts(model: str) -> str:
    """The labels of the frontend's ts_* counters for `model`."""
    return f'model_name="{model}",model_version="default",hostname="h"'


# One promtool unit test group per alert: input series at 1-minute steps, and which alerts are firing at which
# evaluation time. Each group has a time at which the alert fires and one or more at which it must not: below
# the threshold, at it, above it for less than its `for:`, or after the condition has passed.
PROMTOOL_TESTS = {
    "TorchServeDown": {
        "input_series": [
            {"series": 'up{job="torchserve",instance="a:8082"}', "values": "1x5 0x10"},  # down from 6m on
            {"series": 'up{job="torchserve",instance="b:8082"}', "values": "1x5 0 1x9"},  # one failed scrape
            {"series": 'up{job="other",instance="c:9100"}', "values": "0x15"},  # another job's target
        ],
        "alert_rule_test": [
            {"eval_time": "5m", "exp_alerts": []},
            {"eval_time": "7m", "exp_alerts": []},  # down for 1 minute of the 2 its `for:` asks
            {"eval_time": "10m", "exp_alerts": [{"exp_labels": {"severity": "critical", "job": "torchserve",
                                                                "instance": "a:8082"}}]},
        ],
    },
    "TskitInputDrift": {
        "input_series": [
            {"series": f'TskitDriftPSI{{Feature="red_mean",{m("m")}}}', "values": "0.05x10 0.9x30"},
            {"series": f'TskitDriftPSI{{Feature="blue_mean",{m("m")}}}', "values": "0.05x40"},  # below
            {"series": f'TskitDriftPSI{{Feature="green_mean",{m("m")}}}', "values": "0.2x40"},  # at the threshold
            # above from 11m, one reading back under at 21m: its 15 minutes start again at 22m
            {"series": f'TskitDriftPSI{{Feature="texture",{m("m")}}}', "values": "0.05x10 0.9x9 0.05 0.9x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "20m", "exp_alerts": []},  # red_mean above 0.2 for 9 minutes only
            {"eval_time": "30m", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "Feature": "red_mean", "ModelName": "m", "Level": "Model",
                                "Hostname": "h"}}]},
            {"eval_time": "40m", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "Feature": feature, "ModelName": "m", "Level": "Model",
                                "Hostname": "h"}} for feature in ("red_mean", "texture")]},
        ],
    },
    "TorchServeHighErrorRate": {
        "input_series": [
            # 0.5% until 10m, 10% from 11m to 30m, none after
            {"series": f"Requests5XX{{{H}}}", "values": "0+0.3x10 9+6x19 123x10"},
            {"series": f'ts_inference_requests_total{{{ts("m")}}}', "values": "0+60x40"},
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "exp_alerts": []},  # below 1% for 10 minutes
            {"eval_time": "14m", "exp_alerts": []},  # 10% for 3 minutes of the 5 its `for:` asks
            {"eval_time": "20m", "exp_alerts": [{"exp_labels": {"severity": "critical"}}]},
            {"eval_time": "40m", "exp_alerts": []},  # the errors stopped 10 minutes ago
        ],
    },
    "TskitManyBadInputs": {
        "input_series": [
            {"series": f'TskitRequests{{{m("a")}}}', "values": "0+60x40"},
            {"series": f'TskitBadInput{{Kind="UnsupportedMediaType",{m("a")}}}', "values": "0+6x40"},
            {"series": f'TskitBadInput{{Kind="PayloadTooLarge",{m("a")}}}', "values": "0+6x40"},  # 20% in all
            {"series": f'TskitRequests{{{m("b")}}}', "values": "0+60x40"},
            {"series": f'TskitBadInput{{Kind="UnsupportedMediaType",{m("b")}}}', "values": "0+3x40"},  # 5%
        ],
        "alert_rule_test": [
            {"eval_time": "8m", "exp_alerts": []},  # model a above 10% for 7 minutes of 10
            {"eval_time": "20m", "exp_alerts": [{"exp_labels": {"severity": "warning", "ModelName": "a"}}]},
        ],
    },
    "TorchServeHighLatency": {
        "input_series": [
            {"series": f'ts_inference_requests_total{{{ts("fast")}}}', "values": "0+60x40"},
            {"series": f'ts_inference_latency_microseconds{{{ts("fast")}}}', "values": "0+30000000x40"},  # 500 ms
            {"series": f'ts_inference_requests_total{{{ts("slow")}}}', "values": "0+60x40"},
            {"series": f'ts_inference_latency_microseconds{{{ts("slow")}}}', "values": "0+120000000x40"},  # 2 s
        ],
        "alert_rule_test": [
            {"eval_time": "8m", "exp_alerts": []},  # slow for 7 minutes of 10
            {"eval_time": "20m", "exp_alerts": [{"exp_labels": {"severity": "warning", "model_name": "slow"}}]},
        ],
    },
    "TskitSlowForwardPass": {
        "input_series": [
            {"series": f'TskitBatches{{{m("fast")}}}', "values": "0+60x40"},
            {"series": f'TskitInferenceMs{{{m("fast")}}}', "values": "0+6000x40"},  # 100 ms per batch
            {"series": f'TskitBatches{{{m("slow")}}}', "values": "0+60x40"},
            {"series": f'TskitInferenceMs{{{m("slow")}}}', "values": "0+60000x40"},  # 1 s per batch
        ],
        "alert_rule_test": [
            {"eval_time": "8m", "exp_alerts": []},
            {"eval_time": "20m", "exp_alerts": [{"exp_labels": {"severity": "warning", "ModelName": "slow"}}]},
        ],
    },
    "TorchServeWorkerRestarted": {
        "input_series": [
            {"series": f'WorkerLoadTime{{WorkerName="W-9000-m_1.0",{H}}}', "values": "8000x20 18000x25"},
            {"series": f'WorkerLoadTime{{WorkerName="W-9001-m_1.0",{H}}}', "values": "8000x45"},
        ],
        "alert_rule_test": [
            {"eval_time": "10m", "exp_alerts": []},
            {"eval_time": "25m", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "WorkerName": "W-9000-m_1.0", "Level": "Host",
                                "Hostname": "h"}}]},
            {"eval_time": "40m", "exp_alerts": []},  # the reload at 21m is out of the 15-minute window
        ],
    },
    "TorchServeWorkerCrashLoop": {
        "input_series": [
            {"series": f'WorkerLoadTime{{WorkerName="W-9000-m_1.0",{H}}}', "values": "8000x20 18000x25"},  # once
            # reloads at 6m, 12m and 18m
            {"series": f'WorkerLoadTime{{WorkerName="W-9002-m_1.0",{H}}}', "values": "8000x5 9000x5 10000x5 11000x27"},
        ],
        "alert_rule_test": [
            {"eval_time": "15m", "exp_alerts": []},  # two reloads so far
            {"eval_time": "20m", "exp_alerts": [
                {"exp_labels": {"severity": "critical", "WorkerName": "W-9002-m_1.0", "Level": "Host",
                                "Hostname": "h"}}]},
            {"eval_time": "45m", "exp_alerts": []},  # one of the three left in the 30-minute window
        ],
    },
}


def test_every_alert_has_a_firing_and_a_quiet_case():
    assert set(PROMTOOL_TESTS) == {rule["alert"] for rule in alert_rules()}
    for group in PROMTOOL_TESTS.values():
        assert any(case["exp_alerts"] for case in group["alert_rule_test"])
        assert any(not case["exp_alerts"] for case in group["alert_rule_test"])


def test_promtool_accepts_the_alert_rules():
    result = subprocess.run([promtool(), "check", "rules", str(ALERTS_FILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alert", sorted(PROMTOOL_TESTS))
def test_alert_fires_when_it_should_and_only_then(tmp_path, alert):
    """promtool evaluates the shipped rules over synthetic series (`PROMTOOL_TESTS[alert]`). Annotations are
    left out of the copy it runs on (promtool compares them verbatim; the previous test checks their
    templates); expressions, `for:` and labels are as shipped."""
    config = yaml.safe_load(ALERTS_FILE.read_text())
    for group in config["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
    group = {"interval": "1m", **PROMTOOL_TESTS[alert],
             "alert_rule_test": [{**case, "alertname": alert} for case in PROMTOOL_TESTS[alert]["alert_rule_test"]]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(config))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m",
                                                        "tests": [group]}))
    result = subprocess.run([promtool(), "test", "rules", "tests.yml"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
