"""TorchServe's worker processes: their PIDs (from the management API, checked against /proc) and memory.

The Java frontend starts one `model_service_worker.py` Python process per worker; `describe` reports each
worker's id, status and PID. Linux only (/proc).
"""
from pathlib import Path

from tskit.client import TorchServeClient

WORKER_SCRIPT = "model_service_worker"


def is_model_worker(pid: int) -> bool:
    """True if `pid` is alive and runs TorchServe's Python worker script."""
    try:
        return WORKER_SCRIPT in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def worker_pids(client: TorchServeClient, model: str) -> dict[str, int]:
    """{worker id: PID} of the live READY worker processes of `model`'s default version."""
    return {w["id"]: int(w["pid"]) for version in client.describe(model) for w in version.get("workers", [])
            if w.get("status") == "READY" and w.get("pid") and is_model_worker(int(w["pid"]))}


def rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` in MiB (VmRSS in /proc/PID/status); None if it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
