import yaml

from export.zoo import CONFIG_DIR, DEFAULT_NAME
from tskit.properties import model_settings, read_properties, serve_overrides, write_properties
from tskit.server import expected_workers

REPO = CONFIG_DIR.parent


def test_continuation_lines_and_comments(tmp_path):
    path = tmp_path / "config.properties"
    path.write_text("# comment\n! also\na=1\nmodels={\"m\": \\\n    {\"1.0\": {\"minWorkers\": 3}}}\nb : two\n")
    props = read_properties(path)
    assert props["a"] == "1" and props["b"] == "two"
    assert model_settings(props) == {"m": {"1.0": {"minWorkers": 3}}}
    assert expected_workers(props) == {"m": 3}


def test_serve_overrides_load_each_model_as_its_default_version(tmp_path):
    overrides = serve_overrides({"a": {"minWorkers": 2, "batchSize": 4}, "b": {}})
    assert overrides["load_models"] == "a.mar,b.mar"
    write_properties(tmp_path / "config.properties", overrides)
    props = read_properties(tmp_path / "config.properties")
    assert model_settings(props) == {
        "a": {"1.0": {"defaultVersion": True, "marName": "a.mar", "minWorkers": 2, "batchSize": 4}},
        "b": {"1.0": {"defaultVersion": True, "marName": "b.mar"}}}
    assert expected_workers(props) == {"a": 2, "b": 1}


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


def test_shipped_config_matches_the_default_archive_config():
    """config.properties' models={...} and config/<model>.yaml must not drift apart."""
    props = read_properties(REPO / "config.properties")
    archive_config = yaml.safe_load((CONFIG_DIR / f"{DEFAULT_NAME}.yaml").read_text())
    settings = model_settings(props)[DEFAULT_NAME]["1.0"]
    for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"):
        assert settings[key] == archive_config[key], key
