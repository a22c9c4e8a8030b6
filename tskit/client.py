"""HTTP client for a running TorchServe: inference, management and metrics APIs, with token auth.

TorchServe 0.12 writes `key_file.json` in the directory it starts in; every call here sends the matching
key as `Authorization: Bearer ...`.
"""
import json
import re
import time
from pathlib import Path

import requests

from tskit.properties import read_properties

DEFAULT_ADDRESSES = {
    "inference_address": "http://127.0.0.1:8080",
    "management_address": "http://127.0.0.1:8081",
    "metrics_address": "http://127.0.0.1:8082",
}


class ServerError(RuntimeError):
    pass


SAMPLE = re.compile(r'^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text exposition to {metric name: [(labels, value)]}; a metric TorchServe declares but has no
    sample of yet (its `# TYPE` line only) maps to []."""
    out: dict[str, list] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            out.setdefault(line.split()[2], [])
            continue
        match = SAMPLE.match(line.strip())
        if match and not line.startswith("#"):
            name, labels, value = match.groups()
            out.setdefault(name, []).append((dict(LABEL.findall(labels or "")), float(value)))
    return out


def read_keys(key_file: str | Path) -> dict[str, str]:
    """{'inference': ..., 'management': ..., 'API': ...} from TorchServe's key_file.json."""
    with open(key_file) as f:
        raw = json.load(f)
    return {name: entry["key"] for name, entry in raw.items() if isinstance(entry, dict) and "key" in entry}


class TorchServeClient:
    def __init__(self, inference_url: str, management_url: str, metrics_url: str,
                 key_file: str | Path | None = None, timeout: float = 60.0):
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.metrics_url = metrics_url.rstrip("/")
        self.key_file = Path(key_file) if key_file else None
        self.timeout = timeout
        self.session = requests.Session()

    @classmethod
    def from_config(cls, config_file: str | Path, workdir: str | Path = ".", **kwargs) -> "TorchServeClient":
        """Addresses from config.properties; the key file from the directory TorchServe started in."""
        props = {**DEFAULT_ADDRESSES, **read_properties(config_file)}
        return cls(props["inference_address"], props["management_address"], props["metrics_address"],
                   key_file=Path(workdir) / "key_file.json", **kwargs)

    def _headers(self, api: str) -> dict:
        if self.key_file is None or not self.key_file.exists():
            return {}
        key = read_keys(self.key_file).get(api)
        return {"Authorization": f"Bearer {key}"} if key else {}

    # ---- inference API --------------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            r = self.session.get(f"{self.inference_url}/ping", headers=self._headers("inference"), timeout=5)
            return r.status_code == 200 and r.json().get("status") == "Healthy"
        except (requests.ConnectionError, requests.Timeout, ValueError):
            return False

    def inference(self, method: str, path: str, headers: dict | None = None, **kwargs) -> requests.Response:
        """A request to the inference API with the inference key; `headers` add to it."""
        return self.session.request(method, f"{self.inference_url}{path}",
                                    headers={**self._headers("inference"), **(headers or {})},
                                    timeout=kwargs.pop("timeout", self.timeout), **kwargs)

    def predict(self, model: str, data: bytes, version: str | None = None, **kwargs) -> requests.Response:
        return self.inference("POST", f"/predictions/{model}" + (f"/{version}" if version else ""), data=data, **kwargs)

    # ---- management API -------------------------------------------------------------------------
    def management(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.session.request(method, f"{self.management_url}{path}", headers=self._headers("management"),
                                    timeout=kwargs.pop("timeout", self.timeout), **kwargs)

    def models(self) -> list[dict]:
        r = self.management("GET", "/models")
        r.raise_for_status()
        return r.json()["models"]

    def describe(self, model: str) -> list[dict]:
        r = self.management("GET", f"/models/{model}")
        r.raise_for_status()
        return r.json()

    def describe_all(self, model: str) -> list[dict]:
        """Every registered version of `model` (`describe` gives the default one only); [] if none."""
        r = self.management("GET", f"/models/{model}/all")
        if r.status_code == 404:
            return []
        r.raise_for_status()
        return r.json()

    def registered(self, model: str) -> dict | None:
        """The default version's describe answer (minWorkers, batchSize, workers...); None while `model` is not
        registered."""
        r = self.management("GET", f"/models/{model}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()[0]

    def wait_registered(self, model: str, timeout: float = 300, proc=None) -> dict:
        """Block until TorchServe has registered `model`; its describe answer. Raise early if `proc` exits."""
        def check():
            answer = self.registered(model)
            return answer, "not registered"

        return self._poll(model, check, "not registered", timeout, proc)

    def wait_served(self, model: str, timeout: float = 300, proc=None) -> dict:
        """Block until `model` is registered and has as many READY workers as TorchServe registered it with (its
        describe answer's minWorkers, whatever a config file says); returns that answer."""
        start = time.monotonic()
        answer = self.wait_registered(model, timeout, proc)
        self.wait_ready(model, int(answer.get("minWorkers", 1)), timeout - (time.monotonic() - start), proc)
        return answer

    def ready_workers(self, model: str) -> int:
        return sum(w.get("status") == "READY" for v in self.describe(model) for w in v.get("workers", []))

    def scale(self, model: str, min_worker: int, max_worker: int | None = None) -> requests.Response:
        params = {"min_worker": min_worker, "max_worker": max_worker or min_worker, "synchronous": "true"}
        r = self.management("PUT", f"/models/{model}", params=params, timeout=300)
        if r.status_code >= 300:
            raise ServerError(f"scale {model} failed: {r.status_code} {r.text}")
        return r

    # ---- metrics API ----------------------------------------------------------------------------
    def metrics(self) -> str:
        r = self.session.get(f"{self.metrics_url}/metrics", timeout=self.timeout)
        r.raise_for_status()
        return r.text

    def metric_samples(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        return parse_prometheus(self.metrics())

    def metric_by(self, name: str, by: str, **labels: str) -> dict[str, float]:
        """{value of label `by`: sample} for the samples of metric `name` that carry `labels`."""
        return {sample[by]: value for sample, value in self.metric_samples().get(name, [])
                if by in sample and all(sample.get(k) == v for k, v in labels.items())}

    def wait_metric(self, name: str, by: str, until, timeout: float = 120, **labels: str) -> dict[str, float]:
        """`metric_by` once `until(values)` holds (workers report metrics through their log, so a scrape can
        trail the answer by a moment); the last reading when `timeout` runs out."""
        deadline = time.monotonic() + timeout
        while True:
            values = self.metric_by(name, by, **labels)
            if until(values) or time.monotonic() > deadline:
                return values
            time.sleep(0.25)

    def wait_ready(self, model: str, workers: int = 1, timeout: float = 300, proc=None) -> None:
        """Block until `model` has `workers` READY workers; raise early if `proc` (the server) exits."""
        def check():
            ready = self.ready_workers(model)
            return ready >= workers or None, f"{ready}/{workers} workers READY"

        self._poll(model, check, "not ready", timeout, proc)

    def _poll(self, model: str, check, failure: str, timeout: float, proc):
        """Call `check()` -> (result or None, how it stands) every half second until a result comes; raise
        ServerError saying `failure` and the last standing after `timeout`, or as soon as `proc` exits."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise ServerError(f"TorchServe exited with code {proc.returncode} while waiting for {model}")
            try:
                result, last = check()
                if result is not None:
                    return result
            except (requests.RequestException, ValueError) as err:
                last = str(err)
            time.sleep(0.5)
        raise ServerError(f"{model} {failure} after {timeout:.0f}s: {last}")
