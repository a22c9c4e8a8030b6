"""`tskit soak`: a fixed-length run at a steady rate, good and bad requests mixed, with every worker's memory sampled
from /proc: memory that keeps growing after the warm-up is a leak.

One TorchServe on free ports serves the archive (its own settings, `--workers` overriding its worker count). An
open loop sends `rate` requests per second for the whole run, cycling through all the archive's golden inputs with
bad bodies among them (`bad_share`: empty, not UTF-8, cut-off JSON, random bytes: each must get its 4xx and leave
the worker up). Every `sample_s` seconds each worker's RSS, PSS and private memory (tskit/workers.py) are read.
The report gives, per worker, its memory at the start (median of the first three samples after the first tenth
of the run, the warm-up) and at the end (median of the last three), the growth, and the noise (the spread of
the start samples); the status counts and latency percentiles; and whether a worker restarted (a PID changed).
"""
import json
import random
import statistics
import threading
import time
from pathlib import Path

from export.variants import derive_archive
from handlers.runtime import cpu_info
from tskit.cost import golden_requests
from tskit.loadgen import open_loop
from tskit.properties import serve_overrides
from tskit.server import TorchServeProcess
from tskit.workers import memory, worker_pids

BAD_BODIES = [b"", b"\xff\xfe\x00 not UTF-8 \xc3\x28", b'{"data": [1, 2', bytes(random.Random(0).randbytes(2048))]


def request_mix(good: list[bytes], bad_share: float, length: int = 20) -> list[bytes]:
    """`length` bodies in the order they are sent: `bad_share` of them bad, spread evenly among the good ones."""
    bad = round(length * bad_share)
    every = length / bad if bad else length + 1
    bad_at = {int(i * every) for i in range(bad)}
    bodies, g, b = [], 0, 0
    for i in range(length):
        if i in bad_at:
            bodies.append(BAD_BODIES[b % len(BAD_BODIES)])
            b += 1
        else:
            bodies.append(good[g % len(good)])
            g += 1
    return bodies


class Sampler(threading.Thread):
    """Reads every worker's memory each `every_s` seconds until stopped: {worker id: [(seconds, Memory)]}, and
    the PIDs seen per worker id (a second PID: the worker restarted)."""

    def __init__(self, client, model: str, every_s: float):
        super().__init__(daemon=True)
        self.client, self.model, self.every_s = client, model, every_s
        self.samples: dict[str, list] = {}
        self.pids: dict[str, set[int]] = {}
        self.stopped = threading.Event()
        self.start_time = time.monotonic()

    def run(self) -> None:
        while not self.stopped.is_set():
            elapsed = time.monotonic() - self.start_time
            for wid, pid in worker_pids(self.client, self.model).items():
                used = memory(pid)
                if used is not None:
                    self.samples.setdefault(wid, []).append((round(elapsed, 1), used))
                    self.pids.setdefault(wid, set()).add(pid)
            self.stopped.wait(self.every_s)

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def growth(samples: list, duration_s: float) -> dict:
    """Start and end memory of one worker (module docstring) and the growth between them, for PSS and USS."""
    settled = [m for t, m in samples if t >= duration_s / 10] or [m for _, m in samples]
    head, tail = settled[:3], settled[-3:]
    out = {"samples": len(samples), "private_by_tenth": by_tenth(samples, duration_s)}
    for kind in ("pss", "uss", "rss"):
        start = statistics.median(getattr(m, kind) for m in head)
        end = statistics.median(getattr(m, kind) for m in tail)
        spread = max(getattr(m, kind) for m in head) - min(getattr(m, kind) for m in head)
        out[kind] = {"start": round(start, 1), "end": round(end, 1), "growth": round(end - start, 1),
                     "noise": round(spread, 1)}
    return out


def by_tenth(samples: list, duration_s: float) -> list[float]:
    """Private memory (USS, MiB) at each tenth of the run, the median of that tenth's samples: whether memory
    levels off or keeps climbing."""
    tenths = [[m.uss for t, m in samples if k * duration_s / 10 <= t < (k + 1) * duration_s / 10] for k in range(10)]
    return [round(statistics.median(values), 1) for values in tenths if values]


def soak(archive: Path, duration_s: float, rate: float, bad_share: float, sample_s: float, workers: int | None,
         workdir: Path, server_config: Path, progress=print) -> dict:
    model = archive.stem
    golden = golden_requests(archive)
    content_type = golden[0][1]
    frontend = {"minWorkers": workers, "maxWorkers": workers} if workers else {}
    variant = derive_archive(archive, workdir / "store" / archive.name, frontend={**frontend, "responseTimeout": 120})
    overrides = {**serve_overrides({model: frontend}), "job_queue_size": "1000"}
    bodies = request_mix([payload for payload, _ in golden], bad_share)
    with TorchServeProcess(workdir / "ts", server_config, variant.parent, overrides=overrides) as ts:
        url = f"{ts.client.inference_url}/predictions/{model}"
        headers = {**ts.client._headers("inference"), "Content-Type": content_type}
        sampler = Sampler(ts.client, model, sample_s)
        sampler.start()
        progress(f"[{model}] soak: {duration_s:.0f} s at {rate:g} req/s, {bad_share:.0%} bad requests, "
                 f"{len(worker_pids(ts.client, model))} worker(s), memory every {sample_s:g} s")
        try:
            result = open_loop(url, headers, bodies, rate, duration_s)
        finally:
            sampler.stop()
    summary = result.summary()  # latency percentiles of the answered (200) requests
    report = {"archive": model, "duration_s": duration_s, "rate": rate, "bad_share": bad_share,
              "statuses": summary["statuses"], "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"],
              "restarted": sorted(wid for wid, pids in sampler.pids.items() if len(pids) > 1),
              "workers": {wid: growth(samples, duration_s) for wid, samples in sorted(sampler.samples.items())}}
    for wid, g in report["workers"].items():
        progress(f"[{model}] worker {wid}: PSS {g['pss']['start']} -> {g['pss']['end']} MiB "
                 f"({g['pss']['growth']:+.1f}, noise {g['pss']['noise']}), private {g['uss']['start']} -> "
                 f"{g['uss']['end']} MiB ({g['uss']['growth']:+.1f})")
    return report


def markdown(report: dict) -> str:
    cpu = cpu_info()
    lines = [f"Measured on {cpu['model']} ({cpu['cores']} cores): {report['archive']}, {report['duration_s']:.0f} s at "
             f"{report['rate']:g} req/s, {report['bad_share']:.0%} bad requests; statuses "
             + ", ".join(f"{k}: {v}" for k, v in sorted(report["statuses"].items()))
             + f"; p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms; restarted workers: "
             + (", ".join(report["restarted"]) or "none"), "",
             "| worker | samples | PSS start | PSS end | growth | noise | private start | private end | growth | "
             "private at each tenth of the run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for wid, g in report["workers"].items():
        p, u = g["pss"], g["uss"]
        lines.append(f"| {wid} | {g['samples']} | {p['start']} | {p['end']} | {p['growth']:+.1f} | {p['noise']} | "
                     f"{u['start']} | {u['end']} | {u['growth']:+.1f} | "
                     f"{' '.join(f'{v:.0f}' for v in g['private_by_tenth'])} |")
    return "\n".join(lines) + "\n"


def write_reports(report: dict, out: Path, extra: dict) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "soak.json", "markdown": out / "soak.md"}
    paths["json"].write_text(json.dumps({"cpu": cpu_info(), **report, **extra}, indent=1))
    paths["markdown"].write_text(markdown(report))
    return paths
