"""Load generators for a live TorchServe: closed loop (fixed concurrency) and open loop (fixed rate).

Open-loop latency counts from each request's scheduled send time, not from when a thread got to it, so
a server that falls behind shows its real queueing delay (no coordinated omission).
"""
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests


@dataclass
class LoadResult:
    mode: str  # "closed" or "open"
    level: float  # concurrency, or offered requests/s
    duration_s: float
    latencies_ms: list[float] = field(default_factory=list)  # successful requests
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def errors(self) -> int:
        return self.sent - self.ok

    def percentile(self, q: float) -> float | None:
        return percentile(self.latencies_ms, q)

    def summary(self) -> dict:
        return {
            "mode": self.mode, "level": self.level, "duration_s": round(self.duration_s, 2),
            "sent": self.sent, "ok": self.ok, "errors": self.errors,
            "error_rate": round(self.errors / self.sent, 4) if self.sent else None,
            "throughput_rps": round(self.ok / self.duration_s, 2) if self.duration_s else 0.0,
            "p50_ms": _round(self.percentile(0.5)), "p90_ms": _round(self.percentile(0.9)),
            "p99_ms": _round(self.percentile(0.99)), "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of `values`, linearly interpolated; None for no values."""
    if not values:
        return None
    data = sorted(values)
    k = (len(data) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def _round(x):
    return None if x is None else round(x, 2)


class _Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}

    def add(self, status: int, latency_ms: float) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.latencies.append(latency_ms)


def _post(session: requests.Session, url: str, headers: dict, body: bytes, timeout: float) -> int:
    try:
        return session.post(url, data=body, headers=headers, timeout=timeout).status_code
    except requests.RequestException:
        return 0  # connection error or timeout: counted as an error


def closed_loop(url: str, headers: dict, payloads: list[bytes], concurrency: int, duration_s: float,
                timeout: float = 30.0) -> LoadResult:
    """`concurrency` clients, each sending its next request as soon as the previous one is answered."""
    recorder, stop_at = _Recorder(), time.perf_counter() + duration_s
    bodies = itertools.cycle(payloads)
    body_lock = threading.Lock()

    def client():
        session = requests.Session()
        while time.perf_counter() < stop_at:
            with body_lock:
                body = next(bodies)
            t0 = time.perf_counter()
            status = _post(session, url, headers, body, timeout)
            recorder.add(status, (time.perf_counter() - t0) * 1000)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return LoadResult("closed", concurrency, elapsed, recorder.latencies, recorder.statuses)


def open_loop(url: str, headers: dict, payloads: list[bytes], rate: float, duration_s: float,
              timeout: float = 30.0, max_in_flight: int = 256) -> LoadResult:
    """Requests sent at a fixed `rate` whatever the server does; latency from the scheduled send time."""
    recorder, local = _Recorder(), threading.local()
    total = int(rate * duration_s)

    def send(scheduled: float, body: bytes):
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        status = _post(session, url, headers, body, timeout)
        recorder.add(status, (time.perf_counter() - scheduled) * 1000)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max_in_flight) as pool:
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, scheduled, payloads[i % len(payloads)])
    elapsed = max(time.perf_counter() - start, duration_s)
    return LoadResult("open", rate, elapsed, recorder.latencies, recorder.statuses)


@dataclass
class Outcome:
    sent_at: float  # time.monotonic()
    done_at: float
    status: int  # 0: connection error or timeout
    body: str = ""  # kept for failures only


class BackgroundLoad:
    """Closed-loop clients in threads until `stop()`, keeping every request's outcome with its send and answer
    times, so a test can line failures up with something it did to the server meanwhile (kill a worker, say).

        with BackgroundLoad(url, headers, payloads, clients=6) as load:
            ...
        load.outcomes
    """

    def __init__(self, url: str, headers: dict, payloads: list[bytes], clients: int = 4, timeout: float = 60.0):
        self.url, self.headers, self.timeout = url, headers, timeout
        self.bodies = itertools.cycle(payloads)
        self.lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self.running = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    @classmethod
    def against(cls, client, model: str, payloads: list[bytes], clients: int = 4) -> "BackgroundLoad":
        """Load on `model`'s predictions endpoint of the server behind `client`, with its inference key."""
        return cls(f"{client.inference_url}/predictions/{model}", client._headers("inference"), payloads, clients)

    def _client(self) -> None:
        session = requests.Session()
        while self.running.is_set():
            with self.lock:
                body = next(self.bodies)
            sent = time.monotonic()
            try:
                r = session.post(self.url, data=body, headers=self.headers, timeout=self.timeout)
                status, text = r.status_code, ("" if r.status_code == 200 else r.text)
            except requests.RequestException as err:
                status, text = 0, str(err)
            with self.lock:
                self.outcomes.append(Outcome(sent, time.monotonic(), status, text))

    def start(self) -> "BackgroundLoad":
        self.running.set()
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.running.clear()
        for t in self.threads:
            t.join()

    def since(self, t: float) -> list[Outcome]:
        """Outcomes of the requests sent at or after monotonic time `t`."""
        with self.lock:
            return [o for o in self.outcomes if o.sent_at >= t]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
