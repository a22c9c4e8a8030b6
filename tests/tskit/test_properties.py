import pytest

from export.zoo import CONFIG_DIR
from tskit.properties import model_settings, read_properties, serve_overrides, write_properties
from tskit.serving_config import (SERVING_KEYS, archive_settings, configured_settings, disagreements,
                                  loaded_archives)

REPO = CONFIG_DIR.parent


def test_continuation_lines_and_comments(tmp_path):
    path = tmp_path / "config.properties"
    path.write_text("# comment\n! also\na=1\nmodels={\"m\": \\\n    {\"1.0\": {\"minWorkers\": 3}}}\nb : two\n")
    props = read_properties(path)
    assert props["a"] == "1" and props["b"] == "two"
    assert model_settings(props) == {"m": {"1.0": {"minWorkers": 3}}}
    assert configured_settings(props, "m") == {"minWorkers": 3}


def test_serve_overrides_load_each_model_as_its_default_version(tmp_path):
    overrides = serve_overrides({"a": {"minWorkers": 2, "batchSize": 4}, "b": {}})
    assert overrides["load_models"] == "a.mar,b.mar"
    write_properties(tmp_path / "config.properties", overrides)
    props = read_properties(tmp_path / "config.properties")
    assert model_settings(props) == {
        "a": {"1.0": {"defaultVersion": True, "marName": "a.mar", "minWorkers": 2, "batchSize": 4}},
        "b": {"1.0": {"defaultVersion": True, "marName": "b.mar"}}}
    assert configured_settings(props, "a") == {"minWorkers": 2, "batchSize": 4}


def test_shipped_config_is_secure_and_local():
    props = read_properties(REPO / "config.properties")
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert [props[k].rsplit(":", 1)[1] for k in ("inference_address", "management_address", "metrics_address")] \
        == ["8080", "8081", "8082"]
    assert props.get("disable_token_authorization", "false") == "false"
    assert props.get("enable_model_api", "false") == "false"
    assert props["metrics_mode"] == "prometheus"
    assert not any(k in props for k in ("batch_size", "max_batch_delay")), "TorchServe has no global batch keys"
    assert int(props["job_queue_size"]) > 0, "a bounded queue: excess requests get a fast 503"


def test_shipped_config_leaves_how_models_are_served_to_their_archives():
    """One source of truth: workers, batch size and delay live in the archive's model-config.yaml (written by
    tskit build or measured by tskit optimize), which TorchServe 0.12 uses over a models= entry anyway."""
    props = read_properties(REPO / "config.properties")
    assert "models" not in props and "model_snapshot" not in props
    assert props["load_models"] == "efficientnet_lite0.mar,all_minilm_l6_v2.mar,sms_spam_minilm.mar"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two stand-in image classifier archives: one served by 1 worker, one by 2 (as tskit optimize may choose)."""
    from export.archive import ArchiveSpec, build_archive
    from tskit.stand_in import stand_in_files

    work = tmp_path_factory.mktemp("serving-config")
    files = stand_in_files("image_classifier", work / "stand-in")
    for name, workers in (("one", 1), ("two", 2)):
        build_archive(ArchiveSpec(name=name, serialized_file=files.serialized_file, model_file=files.model_file,
                                  labels=files.labels, export_path=str(work / "store"),
                                  config={"minWorkers": workers, "maxWorkers": workers, "batchSize": 4}))
    return work / "store"


def test_loaded_archives_are_named_by_the_archive_or_the_config(store):
    assert loaded_archives({"model_store": str(store), "load_models": "one.mar"}) == {"one": store / "one.mar"}
    assert loaded_archives({"model_store": str(store), "load_models": "all"}) == {
        "one": store / "one.mar", "two": store / "two.mar"}
    assert loaded_archives({"model_store": str(store), "load_models": "renamed=two.mar, missing.mar"}) == {
        "renamed": store / "two.mar"}
    assert archive_settings(store / "two.mar") == {"minWorkers": 2, "maxWorkers": 2, "batchSize": 4,
                                                   "maxBatchDelay": 10, "responseTimeout": 120}


def test_a_config_that_disagrees_with_its_archive_is_one_line_per_number():
    configured = {"minWorkers": 2, "maxWorkers": 2, "batchSize": 8}
    archive = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8}
    lines = disagreements("m", configured, archive, {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8})
    assert lines == ["m: config.properties says minWorkers 2, the archive's model-config.yaml says 1; TorchServe "
                     "registered 1 (the archive's)",
                     "m: config.properties says maxWorkers 2, the archive's model-config.yaml says 1; TorchServe "
                     "registered 1 (the archive's)"]
    assert disagreements("m", {}, archive, archive) == []
    assert set(SERVING_KEYS) >= set(configured)
