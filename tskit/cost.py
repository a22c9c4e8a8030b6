"""`tskit cost`: what serving an archive costs on this machine, measured on a real TorchServe.

For each archive, one TorchServe on free ports loads it at start with the first worker count, then scales it up
through the management API (`PUT /models/NAME?min_worker=N`, allowed with the register API off):

- time: launcher start to the frontend answering, the model's registration at start to its worker READY, and each
  scale-up to its new workers READY;
- latency: the first request after READY against the median of the next ones (the steady state);
- memory, after every worker has answered requests: each worker's RSS, PSS and private memory (USS) and the Java
  frontend's, from /proc/PID/smaps_rollup (tskit/workers.py); the total PSS (workers and frontend: what the
  server takes from the machine) and what one more worker added to it.

The request is the archive's first golden input (any archive `tskit build` wrote has them) unless `--payload`
gives one.
"""
import concurrent.futures
import json
import statistics
import time
import zipfile
from pathlib import Path

from export.variants import derive_archive
from handlers.integrity import MANIFEST_NAME
from handlers.runtime import cpu_info
from tskit.properties import serve_overrides
from tskit.server import TorchServeProcess
from tskit.workers import frontend_pid, memory, worker_pids


def golden_requests(archive: Path) -> list[tuple[bytes, str]]:
    """The archive's golden inputs with their content types."""
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        cases = json.loads(zf.read(MANIFEST_NAME))["golden"]["cases"] if MANIFEST_NAME in names else []
        if not cases:
            raise ValueError(f"{archive.name} stores no golden input: give a request body with --payload")
        return [(zf.read(case["input"]), case["content_type"]) for case in cases]


def golden_request(archive: Path) -> tuple[bytes, str]:
    """The archive's first golden input and its content type."""
    return golden_requests(archive)[0]


def timed_request(client, model: str, payload: bytes, content_type: str) -> float:
    """One request's latency in ms; a failure raises, naming the status and the answer."""
    start = time.perf_counter()
    response = client.predict(model, payload, headers={"Content-Type": content_type})
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{model} answered {response.status_code}: {response.text[:300]}")
    return elapsed


def wait_frontend(ts: TorchServeProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ts.client.ping():
        if ts.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"TorchServe did not answer within {timeout:.0f} s: see {ts.workdir}/torchserve.out")
        time.sleep(0.1)


def measure_memory(ts: TorchServeProcess, model: str) -> dict:
    pids = worker_pids(ts.client, model)
    workers = {wid: memory(pid) for wid, pid in pids.items()}
    front = frontend_pid(ts.proc.pid)
    front_memory = memory(front) if front else None
    workers = {wid: m for wid, m in workers.items() if m is not None}
    return {"worker_memory": {wid: m.as_dict() for wid, m in sorted(workers.items())},
            "frontend": front_memory.as_dict() if front_memory else None,
            "total_pss": round(sum(m.pss for m in workers.values()) + (front_memory.pss if front_memory else 0), 1)}


def cost_archive(archive: Path, worker_counts: list[int], payload: bytes, content_type: str, requests: int,
                 workdir: Path, server_config: Path, progress=print) -> dict:
    """The cost report of one archive (module docstring), one row per worker count."""
    model = archive.stem
    counts = sorted(set(worker_counts))
    frontend = {"minWorkers": counts[0], "maxWorkers": counts[-1], "responseTimeout": 120}
    variant = derive_archive(archive, workdir / model / "store" / archive.name, frontend=frontend)
    ts = TorchServeProcess(workdir / model, server_config, variant.parent, overrides=serve_overrides({model: frontend}))
    started = time.monotonic()
    ts.start(wait=False)
    try:
        wait_frontend(ts)
        frontend_s = time.monotonic() - started
        ts.client.wait_served(model, proc=ts.proc)
        ready_s = time.monotonic() - started
        first_ms = timed_request(ts.client, model, payload, content_type)
        steady_ms = statistics.median(timed_request(ts.client, model, payload, content_type) for _ in range(requests))
        progress(f"[{model}] frontend up in {frontend_s:.1f} s, {counts[0]} worker(s) READY {ready_s - frontend_s:.1f} s "
                 f"later; first request {first_ms:.0f} ms, then {steady_ms:.1f} ms (median of {requests})")
        rows, previous = [], None
        for count in counts:
            scale_s = None
            if count != counts[0]:
                start = time.monotonic()
                ts.client.scale(model, count, counts[-1])
                ts.client.wait_ready(model, count, proc=ts.proc)
                scale_s = round(time.monotonic() - start, 2)
            with concurrent.futures.ThreadPoolExecutor(count) as pool:  # every worker answers some
                list(pool.map(lambda _: timed_request(ts.client, model, payload, content_type),
                              range(requests * count)))
            measured = measure_memory(ts, model)
            row = {"workers": count, "scale_s": scale_s, **measured}
            if previous is not None:
                row["pss_per_added_worker"] = round((row["total_pss"] - previous["total_pss"])
                                                    / (count - previous["workers"]), 1)
            rows.append(row)
            previous = row
            uss = [m["uss"] for m in row["worker_memory"].values()]
            progress(f"[{model}] {count} worker(s){f', scaled in {scale_s} s' if scale_s else ''}: USS per worker "
                     f"{min(uss):.0f}-{max(uss):.0f} MiB, total PSS {row['total_pss']:.0f} MiB")
    finally:
        ts.stop()
    return {"archive": model, "archive_mb": round(archive.stat().st_size / 2**20, 1),
            "frontend_up_s": round(frontend_s, 2), "load_s": round(ready_s - frontend_s, 2),
            "first_request_ms": round(first_ms, 1), "steady_request_ms": round(steady_ms, 1), "rows": rows}


def span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:.0f}" if round(low) == round(high) else f"{low:.0f}-{high:.0f}"


def markdown(reports: list[dict]) -> str:
    cpu = cpu_info()
    lines = [f"Measured on {cpu['model']} ({cpu['cores']} cores); MiB from /proc/PID/smaps_rollup", "",
             "| archive | workers | per worker RSS | PSS | private (USS) | frontend RSS | total PSS | added per worker "
             "| load / scale to READY | first request / steady |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for report in reports:
        for row in report["rows"]:
            workers = list(row["worker_memory"].values())
            timing = f"{report['load_s']} s (load)" if row["scale_s"] is None else f"{row['scale_s']} s (scale)"
            latency = (f"{report['first_request_ms']:.0f} / {report['steady_request_ms']:.1f} ms"
                       if row["scale_s"] is None else "")
            front = f"{row['frontend']['rss']:.0f}" if row["frontend"] else "?"
            lines.append(f"| {report['archive']} | {row['workers']} | {span([w['rss'] for w in workers])} | "
                         f"{span([w['pss'] for w in workers])} | {span([w['uss'] for w in workers])} | {front} | "
                         f"{row['total_pss']:.0f} | {row.get('pss_per_added_worker', '')} | {timing} | {latency} |")
    return "\n".join(lines) + "\n"


def write_reports(reports: list[dict], out: Path, extra: dict) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "cost.json", "markdown": out / "cost.md"}
    paths["json"].write_text(json.dumps({"cpu": cpu_info(), "archives": reports, **extra}, indent=1))
    paths["markdown"].write_text(markdown(reports))
    return paths
