"""tskit/soak.py's pieces that need no server: the request mix and the start/end reading of a worker's memory."""
from tskit.soak import BAD_BODIES, growth, request_mix
from tskit.workers import Memory


def test_the_mix_spreads_the_bad_share_among_the_good_requests():
    bodies = request_mix([b"good"], 0.2, length=20)
    bad = [i for i, body in enumerate(bodies) if body != b"good"]
    assert len(bodies) == 20 and len(bad) == 4 and all(b - a >= 4 for a, b in zip(bad, bad[1:]))
    assert {bodies[i] for i in bad} == set(BAD_BODIES)
    assert request_mix([b"a", b"b"], 0.0, length=4) == [b"a", b"b", b"a", b"b"]


def test_growth_reads_after_the_warm_up_with_medians_of_three():
    def sample(t: float, mb: float):
        return t, Memory(rss=mb + 100, pss=mb, uss=mb - 50, anonymous=mb - 50, swap=0)

    samples = [sample(0, 100)] + [sample(t, 300 + t / 100) for t in range(10, 110, 10)]  # warm-up, then slow growth
    g = growth(samples, duration_s=100)
    assert g["samples"] == 11 and g["pss"]["start"] == 300.2 and g["pss"]["end"] == 300.9
    assert g["pss"]["growth"] == 0.7 and g["pss"]["noise"] == 0.2 and g["uss"]["growth"] == 0.7
    assert g["private_by_tenth"] == [50, 250.1, 250.2, 250.3, 250.4, 250.5, 250.6, 250.7, 250.8, 250.9]
