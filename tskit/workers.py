"""TorchServe's processes: the workers' PIDs (from the management API, checked against /proc), the frontend's, and
their memory.

The Java frontend starts one `model_service_worker.py` Python process per worker; `describe` reports each
worker's id, status and PID. Linux only (/proc).
"""
from dataclasses import dataclass
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


@dataclass
class Memory:
    """A process's memory in MiB, from /proc/PID/smaps_rollup: resident (RSS), its proportional share of pages it
    shares with other processes (PSS: summed over processes, the machine's real use), the pages no other process
    maps (USS: private clean + dirty, what the process costs on top of the others) and its anonymous pages."""
    rss: float
    pss: float
    uss: float
    anonymous: float
    swap: float

    def as_dict(self) -> dict:
        return {k: round(v, 1) for k, v in vars(self).items()}


def memory(pid: int) -> Memory | None:
    """`pid`'s memory (Memory); None if it has exited or its smaps are not readable."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kb = {}
    for line in text.splitlines()[1:]:
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            kb[key] = int(value.split()[0])
    return Memory(kb.get("Rss", 0) / 1024, kb.get("Pss", 0) / 1024,
                  (kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)) / 1024, kb.get("Anonymous", 0) / 1024,
                  kb.get("Swap", 0) / 1024)


def descendants(pid: int) -> list[int]:
    """Every live process under `pid` (children, theirs...), from /proc/*/stat."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def frontend_pid(launcher_pid: int) -> int | None:
    """The Java frontend (`org.pytorch.serve.ModelServer`) started by the `torchserve` launcher `launcher_pid`."""
    for pid in descendants(launcher_pid):
        try:
            if b"org.pytorch.serve.ModelServer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None
