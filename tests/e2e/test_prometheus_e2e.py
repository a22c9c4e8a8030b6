"""config/alerts.yml on a real Prometheus scraping a real TorchServe: shifted inputs and errors pushed through
the server fire `TskitInputDrift`, `TskitManyBadInputs` and `TorchServeHighErrorRate`, read from Prometheus's
own HTTP API.

Prometheus (Debian's `prometheus` package, which `make test` installs) scrapes TorchServe's metrics address as
job "torchserve" every second and evaluates the rules every second. It loads a copy of the shipped rules in
which only the `for:` durations are rewritten to 0s: the shipped ones are minutes (tests/config/test_alerts.py
proves them with promtool), while the expressions, thresholds and labels here are byte for byte the shipped
ones (`fast_rules` checks). TorchServe 0.12's metrics API needs no token (token auth covers the inference and
management APIs only): Prometheus scrapes it without one.
"""
import concurrent.futures
import io
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from PIL import Image, ImageEnhance

from export.zoo import DEFAULT_NAME, guard_images
from tskit.alerts import ALERTS_FILE, alert_rules
from tskit.server import free_port

MODEL = DEFAULT_NAME
LIVENESS_S = 120  # a generous bound on each wait for Prometheus; the measured times are printed
BAD_BODY = b"this is text, not an image"
FOR_LINE = re.compile(r"(?m)^(\s+for: )\d+[smhd]$")


def fast_rules(dest: Path) -> Path:
    """The shipped alerts.yml with every `for:` duration replaced by 0s and nothing else changed."""
    shipped = ALERTS_FILE.read_text()
    fast, count = FOR_LINE.subn(r"\g<1>0s", shipped)
    assert count == sum("for" in rule for rule in alert_rules())
    assert FOR_LINE.sub("", fast) == FOR_LINE.sub("", shipped)  # every other line byte-identical
    dest.write_text(fast)
    return dest


class Prometheus:
    def __init__(self, url: str, log: Path):
        self.url, self.log = url, log

    def api(self, path: str, **params) -> dict | list:
        r = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        r.raise_for_status()
        return r.json()["data"]

    def firing(self) -> dict[str, list[dict]]:
        """{alert name: its firing alerts} as Prometheus's /api/v1/alerts has them now."""
        out: dict[str, list[dict]] = {}
        for alert in self.api("alerts")["alerts"]:
            if alert["state"] == "firing":
                out.setdefault(alert["labels"]["alertname"], []).append(alert)
        return out

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def prometheus(request, tmp_path_factory):
    """A real `prometheus` server (its own port and TSDB folder) scraping `server` and evaluating the rules. A
    missing binary fails before TorchServe is started."""
    exe = shutil.which("prometheus")
    assert exe, ("prometheus not found: `make test` installs it (Debian's prometheus package; "
                 "or apt-get install prometheus)")
    server = request.getfixturevalue("server")
    work = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(fast_rules(work / "alerts.yml"))],
        "scrape_configs": [{"job_name": "torchserve",
                            "static_configs": [{"targets": [urlsplit(server.client.metrics_url).netloc]}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = work / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, f"--config.file={work / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    prom = Prometheus(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + LIVENESS_S
        while True:
            assert proc.poll() is None, f"prometheus exited with {proc.returncode}:\n{prom.log_tail()}"
            try:
                if requests.get(f"{prom.url}/-/ready", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready after {LIVENESS_S}s:\n{prom.log_tail()}"
            time.sleep(0.2)
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def darkened_photos() -> list[bytes]:
    """The archive's reference photos (the guard set) at 40% brightness, as JPEG: every channel mean shifts."""
    out = []
    for data in guard_images().values():
        buf = io.BytesIO()
        ImageEnhance.Brightness(Image.open(io.BytesIO(data)).convert("RGB")).enhance(0.4).save(buf, "JPEG",
                                                                                                quality=85)
        out.append(buf.getvalue())
    return out


def wait_firing(prom: Prometheus, alerts: set[str], traffic, started: float) -> dict[str, float]:
    """Run `traffic()` (one round of requests) until every alert in `alerts` is firing on `prom`; {alert: seconds
    from `started` to the first reading that had it firing}. Traffic goes on between readings, so counters keep
    rising across scrapes (a rate needs two samples that differ)."""
    seen: dict[str, float] = {}
    deadline = started + LIVENESS_S
    while True:
        traffic()
        now = prom.firing()
        for name in alerts & set(now):
            seen.setdefault(name, time.monotonic() - started)
        if alerts <= set(seen):
            return seen
        assert time.monotonic() < deadline, (
            f"not firing after {LIVENESS_S}s: {sorted(alerts - set(seen))}; rules: "
            f"{json.dumps(prom.api('rules'))[:3000]}")


def test_drift_bad_input_and_5xx_alerts_fire_on_a_real_prometheus(prometheus, server):
    c, prom = server.client, prometheus
    shipped = {rule["alert"] for rule in alert_rules()}

    # Prometheus scrapes TorchServe's metrics address (no token) and has every shipped rule loaded
    started = time.monotonic()
    while True:
        targets = prom.api("targets")["activeTargets"]
        if targets and targets[0]["health"] == "up":
            [target] = targets
            break
        assert time.monotonic() < started + LIVENESS_S, f"scrape of TorchServe failing: {targets}"
        time.sleep(0.2)
    assert target["labels"]["job"] == "torchserve" and target["lastError"] == "", target
    assert requests.get(f"{c.metrics_url}/metrics", timeout=10).status_code == 200  # without a key
    loaded = {rule["name"] for group in prom.api("rules")["groups"] for rule in group["rules"]}
    assert loaded == shipped

    # 1. darkened photos (drift) and text sent as an image (a 415 per request, about 1 in 5), workers serving
    photos = darkened_photos()
    bodies = photos[:48] + [BAD_BODY] * 12  # 48 photos fill both workers' drift windows past drift_min_count

    def mixed_round() -> None:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda body: c.predict(MODEL, body).status_code, bodies))
        assert sorted(set(answers)) == [200, 415], answers

    t0 = time.monotonic()
    first = wait_firing(prom, {"TskitInputDrift", "TskitManyBadInputs"}, mixed_round, t0)

    # 2. no worker left (this module's own server; it stops after this test): every prediction is TorchServe's own 503 ("has no worker to serve inference request")
    c.scale(MODEL, 0, 0)
    assert c.ready_workers(MODEL) == 0

    def unserved_round() -> None:
        answers = [c.predict(MODEL, photos[0]).status_code for _ in range(5)]
        assert answers == [503] * 5, answers

    t1 = time.monotonic()
    second = wait_firing(prom, {"TorchServeHighErrorRate"}, unserved_round, t1)

    firing = prom.firing()
    drift = {a["labels"]["Feature"]: float(a["value"]) for a in firing["TskitInputDrift"]
             if a["labels"]["ModelName"] == MODEL}
    assert {"red_mean", "green_mean", "blue_mean"} <= set(drift) and min(drift.values()) > 0.2, drift
    [bad] = firing["TskitManyBadInputs"]
    assert bad["labels"]["ModelName"] == MODEL and float(bad["value"]) > 0.1, bad
    [errors] = firing["TorchServeHighErrorRate"]
    assert float(errors["value"]) > 0.01, errors
    rules = [rule for group in prom.api("rules")["groups"] for rule in group["rules"]]
    assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]

    print(f"time to firing (for: 0s, scrape and evaluation every 1 s): TskitInputDrift "
          f"{first['TskitInputDrift']:.1f} s and TskitManyBadInputs {first['TskitManyBadInputs']:.1f} s after "
          f"the first darkened photo / text body (rounds of 48 photos + 12 text bodies); TorchServeHighErrorRate "
          f"{second['TorchServeHighErrorRate']:.1f} s after scaling to 0 workers (503s)")
    print(f"drift PSI by feature: { {k: round(v, 2) for k, v in sorted(drift.items())} }; bad-input ratio "
          f"{float(bad['value']):.2f}; 5xx ratio {float(errors['value']):.3f}; also firing: "
          f"{sorted(set(firing) - {'TskitInputDrift', 'TskitManyBadInputs', 'TorchServeHighErrorRate'})}")
