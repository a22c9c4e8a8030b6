"""Soak: sustained closed-loop load on the shipped configuration (2 workers x batch 8, the default
archive) with the workers' resident memory sampled from /proc; memory must level off, not climb.

Short enough for `make test` (SOAK_S); `pytest -rP` prints the samples' summary.
"""
import statistics
import time

from export.zoo import DEFAULT_NAME
from tskit.loadgen import BackgroundLoad, percentile
from tskit.workers import rss_mb, worker_pids

SOAK_S = 40
CLIENTS = 4  # below the shipped job_queue_size: no request is refused
SAMPLE_EVERY_S = 2
MAX_GROWTH_MB = 50  # total over the workers, over the second half of the soak


def test_worker_memory_levels_off_under_sustained_load(server, photo_bytes):
    c = server.client
    pids = worker_pids(c, DEFAULT_NAME)
    assert len(pids) == 2, pids
    samples: list[tuple[float, float]] = []  # (seconds since start, total RSS in MiB)
    with BackgroundLoad.against(c, DEFAULT_NAME, list(photo_bytes.values()), clients=CLIENTS) as load:
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < SOAK_S:
            samples.append((elapsed, sum(rss_mb(pid) or 0.0 for pid in pids.values())))
            time.sleep(SAMPLE_EVERY_S)
    outcomes = load.outcomes
    latencies = [(o.done_at - o.sent_at) * 1000 for o in outcomes if o.status == 200]
    second_half = [rss for t, rss in samples if t >= SOAK_S / 2]
    # medians of the first and last three samples of the second half: one GC or allocator step is not a trend
    mid, end = statistics.median(second_half[:3]), statistics.median(second_half[-3:])
    growth = end - mid
    print(f"soak {SOAK_S}s, {CLIENTS} clients: {len(outcomes)} requests ({len(outcomes) / SOAK_S:.1f}/s), "
          f"{len(outcomes) - len(latencies)} failed, p50 {percentile(latencies, 0.5):.0f} ms, p99 "
          f"{percentile(latencies, 0.99):.0f} ms; worker RSS total {samples[0][1]:.0f} MiB at start, {mid:.0f} at "
          f"half-time, {end:.0f} at the end: {growth:+.1f} MiB ({growth / mid:+.1%}) over the second half "
          f"(bound {MAX_GROWTH_MB} MiB)")
    assert len(latencies) == len(outcomes), {o.status for o in outcomes}
    assert worker_pids(c, DEFAULT_NAME) == pids, "a worker restarted during the soak"
    assert growth < MAX_GROWTH_MB
