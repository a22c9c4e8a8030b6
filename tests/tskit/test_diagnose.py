"""`tskit status`'s reason for a version with no READY worker, read from model_log.log lines as TorchServe
0.12 writes them (these lines are from a real run of tests/e2e/test_faults_e2e.py)."""
from tskit.diagnose import last_error, no_ready_worker_report

LOG = """\
2026-11-23T01:37:13,194 [INFO ] W-9002-slow_1.0-stdout MODEL_LOG - Failed to load model slow, exception archive refused: its files do not match tskit-manifest.json (tampered or corrupted):
2026-11-23T01:37:13,194 [INFO ] W-9001-slow_2.0-stdout MODEL_LOG - loaded eager model on cpu, precision fp32, 2 torch threads, batch size 4
2026-11-23T01:37:13,194 [INFO ] W-9002-slow_1.0-stdout MODEL_LOG -   handlers/payload.py: sha256 ab6919386dd4… differs from the manifest's 4f35d5a62493…
2026-11-23T01:37:13,194 [INFO ] W-9002-slow_1.0-stdout MODEL_LOG - Traceback (most recent call last):
2026-11-23T01:37:13,194 [INFO ] W-9002-slow_1.0-stdout MODEL_LOG -   File "/site-packages/ts/model_service_worker.py", line 133, in load_model
2026-11-23T01:37:13,194 [INFO ] W-9002-slow_1.0-stdout MODEL_LOG - handlers.integrity.IntegrityError: archive refused: its files do not match tskit-manifest.json (tampered or corrupted):
2026-11-23T01:37:13,195 [INFO ] W-9002-slow_1.0-stdout MODEL_LOG - Backend worker process died.
2026-11-23T01:37:13,195 [INFO ] W-9002-slow_1.0-stdout MODEL_LOG - RuntimeError: 500 - Unknown exception
2026-11-23T01:38:02,001 [WARN ] W-9004-slow_fast_1.0-stderr MODEL_LOG - ModuleNotFoundError: No module named 'scipy'
"""


def test_the_failed_load_message_with_its_indented_lines_other_workers_interleaved():
    when, message = last_error(LOG, "slow", "1.0")
    assert when == "2026-11-23T01:37:13,194"
    assert message == ["archive refused: its files do not match tskit-manifest.json (tampered or corrupted):",
                       "handlers/payload.py: sha256 ab6919386dd4… differs from the manifest's 4f35d5a62493…"]


def test_other_versions_and_models_with_a_common_prefix_are_not_mixed_in():
    assert last_error(LOG, "slow", "2.0") is None
    assert last_error(LOG, "slow_fast", "1.0") == ("2026-11-23T01:38:02,001",
                                                   ["ModuleNotFoundError: No module named 'scipy'"])


def test_report_under_the_status_line(tmp_path):
    assert no_ready_worker_report(tmp_path, "slow", "1.0") == [
        f"  no READY worker; no error from it in {tmp_path / 'logs' / 'model_log.log'}"]
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "model_log.log").write_text(LOG)
    report = no_ready_worker_report(tmp_path, "slow", "1.0")
    assert report[0].startswith("  no READY worker; last error in ") and report[0].endswith("at 2026-11-23T01:37:13,194:")
    assert report[1] == "    archive refused: its files do not match tskit-manifest.json (tampered or corrupted):"
