"""Speed, measured the way a server runs: `workers` processes at once, each on `threads` threads.

One process alone hides interference (OpenVINO pins every process's thread to the same core by default, which
halved two workers' throughput here), so each measurement starts as many processes as the split has workers and
sums their rates. Two kinds of job:

    forward   a candidate's model on one batch of prepared inputs: how engines and precisions compare
    served    a built archive's own handler on batches of JPEG requests (decode, resize, batch, forward, answer):
              what decides how many workers share the cores, since decoding runs on one core per worker

    python -m export.optimize.speed SPEC.json    one such process: `load I` loads job I (dropping the one before)
                                                 and answers "loaded"; `run` measures it and answers its rate
"""
import json
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch


def worker_splits(cores: int) -> list[tuple[int, int]]:
    """(workers, threads each) with workers x threads = the cores: every way a server can use them."""
    return [(w, cores // w) for w in range(cores, 0, -1) if cores % w == 0]


def split_name(workers: int, threads: int) -> str:
    return f"{workers}x{threads}"


def measure(jobs: list[dict], workers: int, threads: int, seconds: float, work: Path, rounds: int = 1) -> list[list[float]]:
    """Images/s of each job run by `workers` processes at once (summed), `rounds` times each: [job][round]. The
    processes load one job at a time (two compiled engines in one process slow each other), then measure it,
    in step."""
    spec = work / f"speed-{workers}x{threads}.json"
    spec.write_text(json.dumps({"jobs": jobs, "threads": threads, "seconds": seconds}))
    procs = [subprocess.Popen([sys.executable, "-m", "export.optimize.speed", str(spec)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(workers)]

    def ask(command: str) -> list[str]:
        for proc in procs:
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        answers = [proc.stdout.readline().strip() for proc in procs]
        if not all(answers):
            for proc in procs:
                proc.kill()
            raise RuntimeError(f"measuring speed failed:\n{procs[0].stderr.read()[-2000:]}")
        return answers

    rates = []
    try:
        for index in range(len(jobs)):
            ask(f"load {index}")  # every process has it loaded before any measures
            rates.append([sum(float(answer) for answer in ask("run")) for _ in range(rounds)])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait()
    return rates


def forward_job(candidate, root: Path, batch_size: int, batch: Path) -> dict:
    from dataclasses import asdict

    return {"kind": "forward", "candidate": asdict(candidate), "root": str(root), "batch_size": batch_size,
            "batch": str(batch)}


def served_job(archive: Path, payloads: list[bytes], batch_size: int, work: Path) -> dict:
    requests = work / "served-requests.pkl"
    requests.write_bytes(pickle.dumps(payloads))
    return {"kind": "served", "archive": str(archive), "payloads": str(requests), "batch_size": batch_size,
            "work": str(work)}


@dataclass
class SplitChoice:
    split: str
    rates: dict[str, float]  # split -> served images/s (mean of the rounds)
    noise: float  # the larger relative spread between rounds of one split, at least MIN_NOISE
    reason: str


MIN_NOISE = 0.05  # two runs of the same split on a shared 2-core machine differ by up to this much


def choose_split(rounds: dict[str, list[float]]) -> SplitChoice:
    """The split with the highest served rate; one within noise of it that runs more workers wins instead (more
    requests in flight, and one slow request holds up fewer others). `rounds`: split -> its rates."""
    rates = {k: sum(v) / len(v) for k, v in rounds.items()}
    noise = max([MIN_NOISE] + [(max(v) - min(v)) / max(v) for v in rounds.values() if len(v) > 1 and max(v) > 0])
    best = max(rates, key=rates.get)
    workers = lambda split: int(split.split("x")[0])  # noqa: E731
    ties = [k for k in rates if rates[k] >= rates[best] * (1 - noise)]
    chosen = max(ties, key=lambda k: (workers(k), rates[k]))
    figures = ", ".join(f"{k} {v:.0f}/s" for k, v in rates.items())
    if chosen == best:
        reason = f"highest served rate ({figures}; noise {noise:.0%})"
    else:
        reason = (f"within noise of {best} ({figures}; noise {noise:.0%}): the tie goes to more workers, "
                  "which keep more requests in flight")
    return SplitChoice(chosen, rates, noise, reason)


# ---- one measuring process ------------------------------------------------------------------------------
def _forward_runner(job: dict, threads: int):
    from export.optimize.candidates import Candidate
    from export.optimize.engines import load

    keep = ("name", "engine", "precision", "quantize", "bf16_hint", "as_built", "files")
    candidate = Candidate(**{k: v for k, v in job["candidate"].items() if k in keep})
    model = load(candidate, threads, Path(job["root"]), job["batch_size"])
    batch = torch.load(job["batch"])

    def step() -> int:
        with torch.inference_mode():
            model(batch)
        return len(batch)
    return step


def _served_runner(job: dict, threads: int):
    import os
    import tempfile

    from export.inprocess import load_archive_handler, run_batch

    payloads = pickle.loads(Path(job["payloads"]).read_bytes())
    unpacked = tempfile.mkdtemp(prefix=f"served-{os.getpid()}-", dir=job["work"])
    handler = load_archive_handler(job["archive"], unpacked, batch_size=job["batch_size"],
                                   yaml_overrides={"handler": {"threads": threads}})
    position = 0

    def step() -> int:
        nonlocal position
        batch = [{"body": payloads[(position + i) % len(payloads)]} for i in range(job["batch_size"])]
        position += len(batch)
        answers = run_batch(handler, batch)
        if any(status != 200 for status, _ in answers):
            raise RuntimeError(f"a request was refused while measuring: {answers}")
        return len(batch)
    return step


def _main(spec_file: str) -> None:
    import logging

    logging.disable(logging.WARNING)
    spec = json.loads(Path(spec_file).read_text())
    runners = {"forward": _forward_runner, "served": _served_runner}
    step = None
    for line in sys.stdin:
        if line.startswith("load "):
            step = None
            job = spec["jobs"][int(line.split()[1])]
            step = runners[job["kind"]](job, spec["threads"])
            step()  # warm-up
            print("loaded", flush=True)
        else:
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < spec["seconds"]:
                done += step()
            print(done / (time.perf_counter() - start), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1])
