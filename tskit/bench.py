"""`tskit bench`: throughput and latency of real TorchServe deployments, with the server-side split.

Each configuration (archive x workers x batch size x max batch delay) gets its own TorchServe on free
ports, a warm-up, then the requested loads: closed loop at fixed concurrency and/or open loop at a fixed
rate. The server-side split (queue wait, preprocess, inference, postprocess, actual batch size) comes
from differencing TorchServe's Prometheus counters before and after each load. Results go to JSON, a
Markdown table and a latency-vs-throughput PNG.
"""
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from export.variants import derive_archive
from handlers.runtime import cpu_info
from tskit.client import parse_prometheus
from tskit.loadgen import closed_loop, open_loop, wrk_closed_loop
from tskit.properties import serve_overrides
from tskit.server import TorchServeProcess


@dataclass(frozen=True)
class ServerConfig:
    workers: int
    batch_size: int
    max_delay_ms: int
    precision: str | None = None  # None: whatever the archive's handler config says

    def frontend(self) -> dict:
        return {"minWorkers": self.workers, "maxWorkers": self.workers, "batchSize": self.batch_size,
                "maxBatchDelay": self.max_delay_ms, "responseTimeout": 120}

    def label(self) -> str:
        return f"w{self.workers} b{self.batch_size} d{self.max_delay_ms}ms" + (f" {self.precision}" if self.precision else "")


def model_counters(text: str, model: str) -> dict[str, float]:
    """Sum each metric's series that belong to `model` (TorchServe labels them model_name or ModelName)."""
    totals: dict[str, float] = {}
    for name, samples in parse_prometheus(text).items():
        for labels, value in samples:
            if model in (labels.get("model_name"), labels.get("ModelName")):
                totals[name] = totals.get(name, 0.0) + value
    return totals


def server_split(before: dict, after: dict) -> dict:
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    requests = delta.get("ts_inference_requests_total", 0.0)
    split = {"queue_ms": round(delta.get("ts_queue_latency_microseconds", 0.0) / 1000 / requests, 2) if requests else None}
    batches = delta.get("TskitBatches", 0.0)
    if batches:
        for stage in ("Preprocess", "Inference", "Postprocess"):
            split[f"{stage.lower()}_ms_per_batch"] = round(delta.get(f"Tskit{stage}Ms", 0.0) / batches, 2)
        split["avg_batch_size"] = round(delta.get("TskitRequests", 0.0) / batches, 2)
    return split


def parse_loads(closed: list[int], open_rates: list[float]) -> list[tuple[str, float]]:
    return [("closed", c) for c in closed] + [("open", r) for r in open_rates]


def bench_archive(archive: Path, config: ServerConfig, payloads: list[bytes], loads: list[tuple[str, float]],
                  duration_s: float, warmup_s: float, workdir: Path, server_config: Path, threads: int | None,
                  progress=print, generator: str = "python") -> list[dict]:
    """Start one TorchServe for `archive` under `config`, run each load, return one row per load. The closed
    loop is driven by `generator` ("python" threads, or "wrk"); the open loop always by Python."""
    model = archive.stem
    env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    run_dir = workdir / f"{model}-{config.label().replace(' ', '-')}"
    # the archive's own model-config.yaml wins over config.properties: derive one with this config
    variant = derive_archive(archive, run_dir / "store" / archive.name, frontend=config.frontend(),
                             handler={"precision": config.precision} if config.precision else None)
    ts = TorchServeProcess(run_dir, server_config, variant.parent,
                           overrides={**serve_overrides({model: config.frontend()}), "job_queue_size": "1000"},
                           env=env)
    rows = []
    progress(f"[{model} {config.label()}] starting TorchServe")
    with ts:
        url = f"{ts.client.inference_url}/predictions/{model}"
        headers = ts.client._headers("inference")
        if warmup_s:
            closed_loop(url, headers, payloads, max(2, config.batch_size), warmup_s)
        closed = wrk_closed_loop if generator == "wrk" else closed_loop
        for mode, level in loads:
            before = model_counters(ts.client.metrics(), model)
            result = (closed(url, headers, payloads, int(level), duration_s) if mode == "closed"
                      else open_loop(url, headers, payloads, level, duration_s))
            row = {"archive": model, **config.__dict__, "threads_per_worker": threads, **result.summary(),
                   "server": server_split(before, model_counters(ts.client.metrics(), model))}
            rows.append(row)
            progress(f"[{model} {config.label()}] {mode} {level:g} ({row['generator']}, client CPU "
                     f"{row['client_cpu']} cores): {row['throughput_rps']} req/s, p50 {row['p50_ms']} ms, "
                     f"p99 {row['p99_ms']} ms, errors {row['errors']}, server {row['server']}")
    return rows


def sweep(archives: list[Path], workers: list[int], batch_sizes: list[int], delays: list[int], payloads: list[bytes],
          loads: list[tuple[str, float]], duration_s: float, warmup_s: float, workdir: Path, server_config: Path,
          cores: int, precisions: list[str | None] = (None,), progress=print, generator: str = "python") -> list[dict]:
    rows = []
    for archive, w, b, d, p in itertools.product(archives, workers, batch_sizes, delays, precisions):
        threads = max(1, cores // w)
        rows += bench_archive(archive, ServerConfig(w, b, d, p), payloads, loads, duration_s, warmup_s, workdir,
                              server_config, threads, progress, generator)
    return rows


def recommended_config(archive: Path, row: dict) -> str:
    """The archive's model-config.yaml with the winning run's workers, batching and precision: ready for
    `tskit build --config`."""
    import zipfile

    import yaml

    with zipfile.ZipFile(archive) as zf:
        config = yaml.safe_load(zf.read("model-config.yaml")) if "model-config.yaml" in zf.namelist() else {}
    best = ServerConfig(row["workers"], row["batch_size"], row["max_delay_ms"], row.get("precision"))
    config.update(best.frontend())
    if best.precision:
        config.setdefault("handler", {})["precision"] = best.precision
    note = (f"# recommended by tskit bench: {row['throughput_rps']} req/s, p99 {row['p99_ms']} ms, "
            f"{row['mode']} {row['level']:g}, threads per worker {row['threads_per_worker']}\n")
    return note + yaml.safe_dump(config, sort_keys=False)


def best_per_archive(rows: list[dict], mode: str = "closed") -> dict[str, dict]:
    """The highest-throughput error-free row of each archive that completed a request (a server too slow for a
    level's duration completes none, which measures nothing)."""
    best: dict[str, dict] = {}
    for row in rows:
        if row["mode"] != mode or row["errors"] or not row["throughput_rps"] > 0:
            continue
        if row["archive"] not in best or row["throughput_rps"] > best[row["archive"]]["throughput_rps"]:
            best[row["archive"]] = row
    return best


def markdown_table(rows: list[dict]) -> str:
    head = ("| archive | workers | batch | delay ms | load | req/s | p50 ms | p90 ms | p99 ms | errors | "
            "queue ms | pre ms/batch | infer ms/batch | post ms/batch | avg batch | client (CPU cores) |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        s = r["server"]
        load = f"{r['mode']} {r['level']:g}" + (" conc" if r["mode"] == "closed" else " req/s")
        name = r["archive"] + (f" ({r['precision']})" if r.get("precision") else "")
        lines.append(f"| {name} | {r['workers']} | {r['batch_size']} | {r['max_delay_ms']} | {load} | "
                     f"{r['throughput_rps']} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['errors']} | "
                     f"{s.get('queue_ms')} | {s.get('preprocess_ms_per_batch', '-')} | "
                     f"{s.get('inference_ms_per_batch', '-')} | {s.get('postprocess_ms_per_batch', '-')} | "
                     f"{s.get('avg_batch_size', '-')} | {r.get('generator', 'python')} ({r.get('client_cpu')}) |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """p50 and p99 latency against throughput, one line per archive+config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        config = ServerConfig(r["workers"], r["batch_size"], r["max_delay_ms"], r.get("precision"))
        groups.setdefault(f"{r['archive']} {config.label()}", []).append(r)
    for label, group in groups.items():
        group = sorted((g for g in group if g["p99_ms"] is not None), key=lambda g: g["throughput_rps"])
        if not group:
            continue
        xs = [g["throughput_rps"] for g in group]
        line, = ax.plot(xs, [g["p99_ms"] for g in group], marker="o", label=f"{label} p99")
        ax.plot(xs, [g["p50_ms"] for g in group], marker="x", linestyle="--", color=line.get_color(),
                label=f"{label} p50")
    ax.set_xlabel("throughput (successful req/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("latency vs throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(rows: list[dict], out_dir: Path, extra: dict | None = None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md", "png": out_dir / "bench.png"}
    cpu = cpu_info()
    paths["json"].write_text(json.dumps({"cpu": cpu, "rows": rows, **(extra or {})}, indent=1))
    text = f"Measured on {cpu['model']} ({cpu['cores']} cores; {', '.join(cpu['flags']) or 'no AVX-512/AMX'})\n\n"
    text += markdown_table(rows)
    if extra and "compare" in extra:
        c = extra["compare"]
        text += (f"\n{c['candidate']} / {c['baseline']}: {c['ratio']}x the throughput "
                 f"({c['candidate_rps']} vs {c['baseline_rps']} req/s, best error-free closed-loop configs)\n"
                 if c["ratio"] is not None else f"\n{c['candidate']} / {c['baseline']}: no ratio: {c['note']}\n")
    paths["markdown"].write_text(text)
    plot(rows, paths["png"])
    return paths


def compare_summary(rows: list[dict], baseline: str, candidate: str) -> dict:
    best = best_per_archive(rows)
    if baseline not in best or candidate not in best:
        missing = " and ".join(name for name in (baseline, candidate) if name not in best)
        return {"baseline": baseline, "candidate": candidate, "ratio": None,
                "note": f"{missing}: no error-free closed-loop run that completed a request (a longer --duration "
                        "lets a slow server finish some)"}
    b, c = best[baseline], best[candidate]
    return {"baseline": baseline, "candidate": candidate, "baseline_rps": b["throughput_rps"],
            "candidate_rps": c["throughput_rps"], "ratio": round(c["throughput_rps"] / b["throughput_rps"], 2),
            "baseline_config": ServerConfig(b["workers"], b["batch_size"], b["max_delay_ms"], b.get("precision")).label(),
            "candidate_config": ServerConfig(c["workers"], c["batch_size"], c["max_delay_ms"], c.get("precision")).label()}


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
