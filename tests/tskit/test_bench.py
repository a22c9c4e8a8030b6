"""tskit bench's pure parts: Prometheus parsing, the server-side split, reports."""
import json

from tskit.bench import ServerConfig, compare_summary, markdown_table, model_counters, server_split, write_reports
from tskit.loadgen import LoadResult

METRICS = """# HELP ts_inference_requests_total Total number of inference requests.
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{model_name="m",model_version="default",hostname="vm",} 10.0
ts_inference_requests_total{model_name="other",model_version="default",hostname="vm",} 99.0
ts_queue_latency_microseconds{model_name="m",model_version="default",hostname="vm",} 50000.0
TskitBatches{ModelName="m",Level="Model",Hostname="vm",} 4.0
TskitRequests{ModelName="m",Level="Model",Hostname="vm",} 10.0
TskitInferenceMs{ModelName="m",Level="Model",Hostname="vm",} 400.0
TskitPreprocessMs{ModelName="m",Level="Model",Hostname="vm",} 80.0
TskitPostprocessMs{ModelName="m",Level="Model",Hostname="vm",} 4.0
"""


def test_counters_are_read_per_model():
    counters = model_counters(METRICS, "m")
    assert counters["ts_inference_requests_total"] == 10.0
    assert counters["TskitBatches"] == 4.0
    assert model_counters(METRICS, "other") == {"ts_inference_requests_total": 99.0}


def test_split_differences_two_readings():
    before = {"ts_inference_requests_total": 2.0, "ts_queue_latency_microseconds": 10000.0, "TskitBatches": 1.0,
              "TskitRequests": 2.0, "TskitInferenceMs": 100.0, "TskitPreprocessMs": 20.0, "TskitPostprocessMs": 1.0}
    split = server_split(before, model_counters(METRICS, "m"))
    assert split == {"queue_ms": 5.0, "preprocess_ms_per_batch": 20.0, "inference_ms_per_batch": 100.0,
                     "postprocess_ms_per_batch": 1.0, "avg_batch_size": 2.67}


def test_stock_handler_split_has_queue_only():
    counters = {"ts_inference_requests_total": 4.0, "ts_queue_latency_microseconds": 8000.0}
    assert server_split({}, counters) == {"queue_ms": 2.0}


def test_percentiles_and_summary():
    result = LoadResult("closed", 4, 2.0, latencies_ms=[float(i) for i in range(1, 101)], statuses={200: 100, 503: 2})
    summary = result.summary()
    assert summary["throughput_rps"] == 50.0 and summary["errors"] == 2 and summary["error_rate"] == 0.0196
    assert summary["p50_ms"] == 50.5 and summary["p99_ms"] == 99.01


def rows():
    base = {"mode": "closed", "level": 16, "duration_s": 10, "sent": 100, "ok": 100, "errors": 0, "error_rate": 0.0,
            "p50_ms": 10.0, "p90_ms": 12.0, "p99_ms": 15.0, "statuses": {"200": 100}, "server": {"queue_ms": 1.0}}
    return [
        {**base, "archive": "stock", **ServerConfig(1, 1, 0).__dict__, "throughput_rps": 20.0},
        {**base, "archive": "stock", **ServerConfig(2, 8, 20).__dict__, "throughput_rps": 30.0},
        {**base, "archive": "ours", **ServerConfig(1, 8, 10).__dict__, "throughput_rps": 120.0},
        {**base, "archive": "ours", **ServerConfig(2, 8, 10).__dict__, "throughput_rps": 200.0, "errors": 3},
    ]


def test_compare_takes_each_archives_best_error_free_run():
    summary = compare_summary(rows(), "stock", "ours")
    assert summary["ratio"] == 4.0 and summary["baseline_config"] == "w2 b8 d20ms"
    assert summary["candidate_rps"] == 120.0


def test_a_level_that_completed_nothing_measures_nothing(tmp_path):
    """A baseline too slow for the level's duration (0 req/s, no errors) gives no ratio, not a division by zero."""
    slow = [{**row, "throughput_rps": 0.0, "ok": 0} if row["archive"] == "stock" else row for row in rows()]
    summary = compare_summary(slow, "stock", "ours")
    assert summary["ratio"] is None and summary["note"].startswith("stock: no error-free closed-loop run")
    table = write_reports(slow, tmp_path, {"compare": summary})["markdown"].read_text()
    assert "ours / stock: no ratio: stock: no error-free" in table


def test_reports_are_written(tmp_path):
    paths = write_reports(rows(), tmp_path, {"compare": compare_summary(rows(), "stock", "ours")})
    report = json.loads(paths["json"].read_text())
    assert report["compare"]["ratio"] == 4.0 and report["cpu"]["model"] and report["cpu"]["cores"] >= 1
    table = paths["markdown"].read_text()
    assert table.startswith(f"Measured on {report['cpu']['model']} (")  # every figure with its CPU
    assert table.count("\n| ") == 6 and "4.0x the throughput" in table
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert markdown_table(rows()).splitlines()[1].startswith("| --- |")


def test_recommended_config_is_the_archive_config_with_the_winner(default_mar):
    import yaml

    from tskit.bench import recommended_config

    best = {**rows()[2], "precision": "fp32", "threads_per_worker": 2}
    config = yaml.safe_load(recommended_config(default_mar, best))
    assert (config["minWorkers"], config["maxWorkers"], config["batchSize"], config["maxBatchDelay"]) == (1, 1, 8, 10)
    assert config["handler"]["precision"] == "fp32" and config["handler"]["crop"] == 224
