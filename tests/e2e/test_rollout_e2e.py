"""Model versions on a real TorchServe through `tskit`: a rollout that is refused, one that promotes, a
rollback under load with zero failed requests, and unregister. The server runs the shipped
config.properties with the register API turned on (`enable_model_api=true`), which rollouts need.

One server for the module, but no test leans on another: each starts from `serving_1_0` (1.0 alone, the
default, one worker, no rollout history) and registers or promotes what it needs itself, so each runs alone
(`pytest tests/e2e/test_rollout_e2e.py::test_x`) and in any order."""
import time

import pytest

from export.variants import derive_archive
from export.zoo import DEFAULT_NAME
from tskit.loadgen import BackgroundLoad
from tskit.properties import serve_overrides
from tskit.rollout import HISTORY, default_version, rollout, set_default, unregister, versions
from tskit.server import TorchServeProcess

from tests.e2e.conftest import REPO, tskit_cli

MODEL = DEFAULT_NAME
ONE_WORKER = {"minWorkers": 1, "maxWorkers": 1}
LIVENESS_S = 120  # generous: how long load may take to flow on a loaded 2-core machine, not a speed bound


@pytest.fixture(scope="module")
def candidates(e2e_store, tmp_path_factory):
    """1.0 in the store; a 2.0 with the same weights, and a 3.0 that forgot the input normalisation."""
    base = e2e_store / f"{MODEL}.mar"
    store = tmp_path_factory.mktemp("rollout-store")
    derive_archive(base, store / f"{MODEL}.mar", frontend=ONE_WORKER)
    elsewhere = tmp_path_factory.mktemp("candidates")
    good = derive_archive(base, elsewhere / f"{MODEL}-2.0.mar", frontend=ONE_WORKER, version="2.0")
    broken = derive_archive(base, elsewhere / f"{MODEL}-3.0.mar", frontend=ONE_WORKER, version="3.0",
                            handler={"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]})
    return store, good, broken


@pytest.fixture(scope="module")
def versioned_server(candidates, tmp_path_factory):
    store = candidates[0]
    models = serve_overrides({MODEL: {**ONE_WORKER, "batchSize": 8, "maxBatchDelay": 5, "responseTimeout": 120}})
    ts = TorchServeProcess(tmp_path_factory.mktemp("ts-rollout"), REPO / "config.properties", store,
                           overrides={"enable_model_api": "true", **models})
    with ts:
        yield ts


@pytest.fixture
def serving_1_0(versioned_server):
    """The server in the state every test starts from, whatever ran before: 1.0 registered alone and the
    default, one READY worker, no rollout history in its workdir."""
    ts = versioned_server
    c = ts.client
    if default_version(c, MODEL)["modelVersion"] != "1.0":
        set_default(c, MODEL, "1.0")
    for version in versions(c, MODEL):
        if version != "1.0":
            unregister(c, MODEL, version)
    if c.ready_workers(MODEL) != 1:
        c.scale(MODEL, 1)
    (ts.workdir / HISTORY).unlink(missing_ok=True)
    assert versions(c, MODEL) == ["1.0"] and c.ready_workers(MODEL) == 1
    return ts


def promote_2_0(ts, good) -> None:
    """2.0 promoted over 1.0 by a rollout (one replay round: this is set-up, not the rollout under test)."""
    result = rollout(ts.client, good, ts.model_store, ts.workdir, max_latency_ratio=100, rounds=1)
    assert result.promoted, result.reasons
    assert default_version(ts.client, MODEL)["modelVersion"] == "2.0"


def wait_until(condition, what: str, timeout: float = LIVENESS_S) -> float:
    """Poll `condition()` until true; the seconds it took (a liveness bound, printed rather than asserted)."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"{what} not within {timeout:.0f} s"
        time.sleep(0.1)
    return time.monotonic() - start


def test_status_and_scale_up_and_down(serving_1_0):
    ts = serving_1_0
    assert f"{MODEL} 1.0 (default)" in tskit_cli(ts, "status").stdout
    for workers in (2, 1):
        result = tskit_cli(ts, "scale", MODEL, "--min", str(workers))
        assert result.returncode == 0, result.stderr
        assert ts.client.ready_workers(MODEL) == workers == len(default_version(ts.client, MODEL)["workers"])


def test_a_rollout_that_disagrees_is_refused_and_unregistered(serving_1_0, candidates):
    ts, broken = serving_1_0, candidates[2]
    result = tskit_cli(ts, "rollout", str(broken), "--max-latency-ratio", "100")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "refused" in result.stdout and "top-1 agreement" in result.stdout
    assert versions(ts.client, MODEL) == ["1.0"]
    assert default_version(ts.client, MODEL)["modelVersion"] == "1.0"


def test_a_rollout_that_agrees_is_promoted(serving_1_0, candidates, photo_bytes):
    ts, good = serving_1_0, candidates[1]
    # generous latency bound: both versions share two busy cores; this test is about the decision
    result = tskit_cli(ts, "rollout", str(good), "--max-latency-ratio", "100")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "100.0%" in result.stdout and "promoted" in result.stdout
    assert sorted(versions(ts.client, MODEL)) == ["1.0", "2.0"]
    assert default_version(ts.client, MODEL)["modelVersion"] == "2.0"
    assert next(iter(ts.client.predict(MODEL, photo_bytes["coffee.png"]).json())) == "espresso"


def test_rollback_under_load_fails_no_request(serving_1_0, candidates, photo_bytes):
    ts = serving_1_0
    promote_2_0(ts, candidates[1])
    with BackgroundLoad.against(ts.client, MODEL, [photo_bytes["chelsea.png"]], clients=4) as load:
        flowing_s = wait_until(lambda: len(load.outcomes) >= 8, "8 answers before the rollback")
        result = tskit_cli(ts, "rollback", MODEL)
        after = len(load.outcomes)
        still_s = wait_until(lambda: len(load.outcomes) >= after + 8, "8 answers after the rollback")
    statuses = [o.status for o in load.outcomes]
    print(f"rollback 2.0 -> 1.0 under 4 clients: {len(statuses)} requests ({after} before the rollback "
          f"returned), load flowing after {flowing_s:.1f} s, 8 more answers {still_s:.1f} s after it")
    assert result.returncode == 0, result.stderr
    assert "2.0 -> 1.0" in result.stdout
    assert default_version(ts.client, MODEL)["modelVersion"] == "1.0"
    assert statuses.count(200) == len(statuses) >= after + 8, sorted(set(statuses))
    # 2.0 is still registered, but it was served after 1.0: nothing earlier is left to go back to
    again = tskit_cli(ts, "rollback", MODEL)
    assert again.returncode == 1 and "no earlier version" in again.stderr, again.stdout + again.stderr


def test_nothing_left_to_roll_back_to_says_so(serving_1_0):
    result = tskit_cli(serving_1_0, "rollback", MODEL)
    assert result.returncode == 1 and "no earlier version" in result.stderr
    assert default_version(serving_1_0.client, MODEL)["modelVersion"] == "1.0"


def test_register_lists_the_version_in_status_and_unregister_removes_it(serving_1_0, candidates):
    ts = serving_1_0
    registered = tskit_cli(ts, "register", str(candidates[1]))
    assert registered.returncode == 0, registered.stderr
    lines = tskit_cli(ts, "status").stdout.splitlines()
    assert any(line.startswith(f"{MODEL} 1.0 (default)") for line in lines)
    assert any(line.startswith(f"{MODEL} 2.0 batch=") for line in lines)
    result = tskit_cli(ts, "unregister", MODEL, "2.0")
    assert result.returncode == 0, result.stderr
    assert versions(ts.client, MODEL) == ["1.0"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/model.mar", "https://example.com/model.mar",
                                 "file:///etc/passwd", "../model_store/efficientnet_lite0.mar"])
def test_even_with_the_register_api_on_only_model_store_files_register(serving_1_0, candidates, url):
    ts = serving_1_0
    r = ts.client.management("POST", "/models", params={"url": url, "model_name": "intruder"})
    assert r.status_code == 404, r.text
    assert "allowed URL" in r.json()["message"] or "Relative path" in r.json()["message"]
    assert not (candidates[0] / "passwd").exists()  # nothing was copied into the store
    assert "intruder" not in [m["modelName"] for m in ts.client.models()]
