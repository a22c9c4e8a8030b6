"""Model versions on a real TorchServe through `tskit`: a rollout that is refused, one that promotes, a
rollback under load with zero failed requests, and unregister. The server runs the shipped
config.properties with the register API turned on (`enable_model_api=true`), which rollouts need."""
import time

import pytest

from export.variants import derive_archive
from export.zoo import DEFAULT_NAME
from tskit.loadgen import BackgroundLoad
from tskit.properties import serve_overrides
from tskit.rollout import default_version, versions
from tskit.server import TorchServeProcess

from tests.e2e.conftest import REPO, tskit_cli

MODEL = DEFAULT_NAME
ONE_WORKER = {"minWorkers": 1, "maxWorkers": 1}


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


def test_status_and_scale_up_and_down(versioned_server):
    ts = versioned_server
    assert f"{MODEL} 1.0 (default)" in tskit_cli(ts, "status").stdout
    for workers in (2, 1):
        result = tskit_cli(ts, "scale", MODEL, "--min", str(workers))
        assert result.returncode == 0, result.stderr
        assert ts.client.ready_workers(MODEL) == workers == len(default_version(ts.client, MODEL)["workers"])


def test_a_rollout_that_disagrees_is_refused_and_unregistered(versioned_server, candidates):
    ts, broken = versioned_server, candidates[2]
    result = tskit_cli(ts, "rollout", str(broken), "--max-latency-ratio", "100")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "refused" in result.stdout and "top-1 agreement" in result.stdout
    assert versions(ts.client, MODEL) == ["1.0"]
    assert default_version(ts.client, MODEL)["modelVersion"] == "1.0"


def test_a_rollout_that_agrees_is_promoted(versioned_server, candidates, photo_bytes):
    ts, good = versioned_server, candidates[1]
    # generous latency bound: both versions share two busy cores; this test is about the decision
    result = tskit_cli(ts, "rollout", str(good), "--max-latency-ratio", "100")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "100.0%" in result.stdout and "promoted" in result.stdout
    assert sorted(versions(ts.client, MODEL)) == ["1.0", "2.0"]
    assert default_version(ts.client, MODEL)["modelVersion"] == "2.0"
    assert next(iter(ts.client.predict(MODEL, photo_bytes["coffee.png"]).json())) == "espresso"


def test_rollback_under_load_fails_no_request(versioned_server, photo_bytes):
    ts = versioned_server
    with BackgroundLoad.against(ts.client, MODEL, [photo_bytes["chelsea.png"]], clients=4) as load:
        while len(load.outcomes) < 8:  # load is flowing before the switch
            time.sleep(0.1)
        result = tskit_cli(ts, "rollback", MODEL)
        after = len(load.outcomes)
        while len(load.outcomes) < after + 8:  # and keeps flowing after it
            time.sleep(0.1)
    statuses = [o.status for o in load.outcomes]
    assert result.returncode == 0, result.stderr
    assert "2.0 -> 1.0" in result.stdout
    assert default_version(ts.client, MODEL)["modelVersion"] == "1.0"
    assert statuses.count(200) == len(statuses) >= after + 8, sorted(set(statuses))


def test_nothing_left_to_roll_back_to_says_so(versioned_server):
    result = tskit_cli(versioned_server, "rollback", MODEL)
    assert result.returncode == 1 and "no earlier version" in result.stderr


def test_unregister_a_version(versioned_server):
    ts = versioned_server
    result = tskit_cli(ts, "unregister", MODEL, "2.0")
    assert result.returncode == 0, result.stderr
    assert versions(ts.client, MODEL) == ["1.0"]


def test_status_lists_every_version_and_marks_the_default(versioned_server, candidates):
    ts = versioned_server
    assert tskit_cli(ts, "register", str(candidates[1])).returncode == 0
    lines = tskit_cli(ts, "status").stdout.splitlines()
    assert any(line.startswith(f"{MODEL} 1.0 (default)") for line in lines)
    assert any(line.startswith(f"{MODEL} 2.0 batch=") for line in lines)
    assert tskit_cli(ts, "unregister", MODEL, "2.0").returncode == 0


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/model.mar", "https://example.com/model.mar",
                                 "file:///etc/passwd", "../model_store/efficientnet_lite0.mar"])
def test_even_with_the_register_api_on_only_model_store_files_register(versioned_server, candidates, url):
    ts = versioned_server
    r = ts.client.management("POST", "/models", params={"url": url, "model_name": "intruder"})
    assert r.status_code == 404, r.text
    assert "allowed URL" in r.json()["message"] or "Relative path" in r.json()["message"]
    assert not (candidates[0] / "passwd").exists()  # nothing was copied into the store
    assert "intruder" not in [m["modelName"] for m in ts.client.models()]
