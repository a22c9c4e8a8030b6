"""Load generators for a live TorchServe: closed loop (fixed concurrency) and open loop (fixed rate).

Open-loop latency counts from each request's scheduled send time, not from when a thread got to it, so
a server that falls behind shows its real queueing delay (no coordinated omission). `wrk_closed_loop` drives
the closed loop with `wrk` (C, one thread) instead of Python threads: on a 2-core machine the Python client's
own CPU is a real share of what the server could have used, and every result says how much (`client_cpu`).
"""
import itertools
import json
import resource
import shutil
import subprocess
import tempfile
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
    generator: str = "python"
    client_cpu: float | None = None  # cores the load generator itself kept busy, on average
    percentiles_ms: dict[float, float] | None = None  # wrk reports percentiles, not every latency

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
        if self.percentiles_ms is not None:
            return self.percentiles_ms.get(q)
        return percentile(self.latencies_ms, q)

    def summary(self) -> dict:
        return {
            "mode": self.mode, "level": self.level, "duration_s": round(self.duration_s, 2),
            "sent": self.sent, "ok": self.ok, "errors": self.errors,
            "error_rate": round(self.errors / self.sent, 4) if self.sent else None,
            "throughput_rps": round(self.ok / self.duration_s, 2) if self.duration_s else 0.0,
            "p50_ms": _round(self.percentile(0.5)), "p90_ms": _round(self.percentile(0.9)),
            "p99_ms": _round(self.percentile(0.99)), "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "generator": self.generator, "client_cpu": _round(self.client_cpu),
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

    start, cpu = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return LoadResult("closed", concurrency, elapsed, recorder.latencies, recorder.statuses,
                      client_cpu=(time.process_time() - cpu) / elapsed)


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

    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(max_workers=max_in_flight) as pool:
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, scheduled, payloads[i % len(payloads)])
    elapsed = max(time.perf_counter() - start, duration_s)
    return LoadResult("open", rate, elapsed, recorder.latencies, recorder.statuses,
                      client_cpu=(time.process_time() - cpu) / elapsed)


WRK_SCRIPT = r"""
-- POST the payload files in turn with the given headers; print a JSON summary at the end
local bodies, next_body = {}, 1
function init(args)
  for i = 1, #args do
    local f = assert(io.open(args[i], "rb")); bodies[#bodies + 1] = f:read("*a"); f:close()
  end
end
function request()
  local body = bodies[next_body]; next_body = next_body % #bodies + 1
  return wrk.format("POST", nil, nil, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('TSKIT {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50": %d, "p90": %d, "p99": %d}\n', summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99)))
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def wrk_closed_loop(url: str, headers: dict, payloads: list[bytes], concurrency: int, duration_s: float,
                    timeout: float = 30.0) -> LoadResult:
    """The closed loop driven by `wrk` (Debian's package): one thread, `concurrency` keep-alive connections.
    A non-2xx answer or a socket error counts as an error (status 0: wrk does not say which code it was)."""
    if not wrk_available():
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk); use the python generator")
    with tempfile.TemporaryDirectory(prefix="tskit-wrk-") as tmp:
        script = f"{tmp}/post.lua"
        with open(script, "w") as f:
            f.write(WRK_SCRIPT)
        files = []
        for i, body in enumerate(payloads):
            files.append(f"{tmp}/body-{i}")
            with open(files[-1], "wb") as f:
                f.write(body)
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s", f"--timeout={timeout:g}s",
               "-s", script]
        for key, value in {"Content-Type": "application/octet-stream", **headers}.items():
            cmd += ["-H", f"{key}: {value}"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run(cmd + [url, "--", *files], capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((l for l in result.stdout.splitlines() if l.startswith("TSKIT ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr.strip() or result.stdout[-500:]}")
    summary = json.loads(line[len("TSKIT "):])
    elapsed = summary["duration_us"] / 1e6
    failed = summary["status"] + summary["connect"] + summary["read"] + summary["write"] + summary["timeout"]
    statuses = {200: summary["requests"] - summary["status"]}
    if failed:
        statuses[0] = failed
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return LoadResult("closed", concurrency, elapsed, [], statuses, generator="wrk", client_cpu=cpu / elapsed,
                      percentiles_ms={q: summary[k] / 1000 for q, k in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))})


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
