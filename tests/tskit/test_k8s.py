"""`tskit k8s`: the layout for KServe, its manifests checked against the KServe and Kubernetes schemas in
config/schemas (no cluster here), and the schemas shown to reject broken manifests."""
import copy
import json
import zipfile
from pathlib import Path

import pytest
import yaml

from export.variants import CONFIG_NAME
from export.zoo.tabular import TABULAR_NAME
from handlers.integrity import check_integrity
from tskit.cli import main
from tskit.k8s import K8sSpec, write_layout
from tskit.properties import model_settings, read_properties
from tskit.schemas import schema_errors
from tskit.testing import unpack_archive


@pytest.fixture(scope="module")
def layout(tabular_mar, tmp_path_factory):
    """`tskit k8s` through the CLI, with a canary share."""
    out = tmp_path_factory.mktemp("k8s") / "layout"
    assert main(["k8s", TABULAR_NAME, "--archive", str(tabular_mar), "--out", str(out), "--canary", "10",
                 "--storage-uri", "s3://tskit-models/breast-cancer-mlp/v2"]) == 0
    return out


def manifests(folder) -> dict:
    return {path.stem: yaml.safe_load(path.read_text()) for path in sorted(folder.glob("*.yaml"))}


def test_layout_has_what_kserves_runtime_mounts(layout):
    assert (layout / "model-store" / f"{TABULAR_NAME}.mar").is_file()
    assert (layout / "config" / "config.properties").is_file() and (layout / "config" / "metrics.yaml").is_file()
    assert set(manifests(layout)) == {"inferenceservice", "secret", "serviceaccount"}
    assert (layout / "Dockerfile").read_text().startswith("# TorchServe with")
    assert "FROM pytorch/torchserve:0.12.0-cpu" in (layout / "Dockerfile").read_text()


def test_every_manifest_validates_against_its_schema(layout):
    for name, doc in manifests(layout).items():
        assert schema_errors(doc) == [], name


def test_inference_service_carries_replicas_resources_canary_and_storage(layout):
    isvc = manifests(layout)["inferenceservice"]
    predictor = isvc["spec"]["predictor"]
    assert isvc["metadata"]["name"] == "breast-cancer-mlp"  # DNS-1123, from the model name
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["canaryTrafficPercent"]) == (1, 3, 10)
    assert predictor["model"]["storageUri"] == "s3://tskit-models/breast-cancer-mlp/v2"
    assert predictor["model"]["protocolVersion"] == "v2" and predictor["model"]["modelFormat"] == {"name": "pytorch"}
    assert predictor["model"]["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    assert isvc["metadata"]["annotations"]["prometheus.kserve.io/port"] == "8082"
    secret, account = manifests(layout)["secret"], manifests(layout)["serviceaccount"]
    assert predictor["serviceAccountName"] == account["metadata"]["name"]
    assert account["secrets"] == [{"name": secret["metadata"]["name"]}]
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert not any(secret["stringData"].values()), "credentials are the user's to fill in, never written"


def test_config_for_kserve_metrics_envelope_and_batch_one(layout, tabular_mar):
    props = read_properties(layout / "config" / "config.properties")
    assert props["metrics_address"].endswith(":8082") and props["metrics_mode"] == "prometheus"
    assert props["service_envelope"] == "kservev2" and props["enable_envvars_config"] == "true"
    assert props["model_store"] == "/mnt/models/model-store"
    assert props["disable_token_authorization"] == "true" and props["inference_address"] == "http://127.0.0.1:8085"
    [settings] = model_settings(props)[TABULAR_NAME].values()
    original = yaml.safe_load(zipfile.ZipFile(tabular_mar).read(CONFIG_NAME))
    assert settings["batchSize"] == 1 and settings["maxWorkers"] == original["maxWorkers"]
    derived = yaml.safe_load(zipfile.ZipFile(layout / "model-store" / f"{TABULAR_NAME}.mar").read(CONFIG_NAME))
    # the archive's own model-config.yaml wins over config.properties, so the archive says batchSize 1 too
    assert derived == {**original, "batchSize": 1}


def test_derived_archive_still_passes_its_integrity_check(layout, tmp_path):
    unpacked = unpack_archive(layout / "model-store" / f"{TABULAR_NAME}.mar", tmp_path / "unpacked")
    assert check_integrity(str(unpacked)) is not None


def test_protocol_v1_image_and_pvc_variants_validate(tabular_mar, tmp_path):
    v1, _ = write_layout(K8sSpec(TABULAR_NAME, tabular_mar, tmp_path / "v1", protocol="v1",
                                 storage_uri="pvc://models/tab"))
    isvc = yaml.safe_load(v1["inferenceservice"].read_text())
    assert "secret" not in v1 and "serviceAccountName" not in isvc["spec"]["predictor"]  # a PVC needs no credentials
    assert isvc["spec"]["predictor"]["batcher"] == {"maxBatchSize": 4, "maxLatency": 10}  # the archive's batching
    assert read_properties(v1["config"])["service_envelope"] == "kserve"
    own, _ = write_layout(K8sSpec(TABULAR_NAME, tabular_mar, tmp_path / "own", image="registry.example/tab:1.0",
                                  min_replicas=2, max_replicas=8, cpu="2", memory="4Gi", namespace="ml"))
    isvc_own = yaml.safe_load(own["inferenceservice"].read_text())
    [container] = isvc_own["spec"]["predictor"]["containers"]
    assert container["image"] == "registry.example/tab:1.0" and "model" not in isvc_own["spec"]["predictor"]
    assert isvc_own["metadata"]["namespace"] == "ml" and "secret" not in own
    for doc in (isvc, isvc_own):
        assert schema_errors(doc) == []


@pytest.mark.parametrize("break_it, expected", [
    (lambda d: d["spec"]["predictor"].update(canaryTrafficPercentage=10), "'canaryTrafficPercentage' was unexpected"),
    (lambda d: d["spec"]["predictor"].update(minReplicas="two"), "'two' is not of type 'integer'"),
    (lambda d: d["spec"]["predictor"]["model"].pop("modelFormat"), "'modelFormat' is a required property"),
    (lambda d: d["spec"]["predictor"]["model"]["resources"].update(limit={}), "'limit' was unexpected"),
    (lambda d: d.update(apiVersion="serving.kserve.io/v1alpha1"), "no schema for apiVersion/kind"),
    (lambda d: d["spec"].update(predictor=[]), "is not of type 'object'"),
])
def test_schema_rejects_a_broken_inference_service(layout, break_it, expected):
    doc = copy.deepcopy(manifests(layout)["inferenceservice"])
    break_it(doc)
    errors = schema_errors(doc)
    assert errors and any(expected in e for e in errors), errors


def test_schema_rejects_broken_kubernetes_objects(layout):
    secret = manifests(layout)["secret"]
    assert any("'stringdata' was unexpected" in e for e in schema_errors({**secret, "stringdata": {}}))
    account = manifests(layout)["serviceaccount"]
    assert any("is not of type 'array'" in e for e in schema_errors({**account, "secrets": "x"}))


def test_schemas_say_where_they_come_from():
    from tskit.schemas import SCHEMA_DIR, SCHEMAS

    for file_name in SCHEMAS.values():
        comment = json.loads((SCHEMA_DIR / file_name).read_text())["$comment"]
        assert "config/schemas/generate.py" in comment and "kubernetes-validate" in comment


def test_bad_options_and_a_missing_archive_fail_clearly(tabular_mar, tmp_path, capsys):
    with pytest.raises(ValueError, match="canaryTrafficPercent"):
        write_layout(K8sSpec(TABULAR_NAME, tabular_mar, tmp_path / "x", canary=120))
    with pytest.raises(ValueError, match="min replicas"):
        write_layout(K8sSpec(TABULAR_NAME, tabular_mar, tmp_path / "y", min_replicas=3, max_replicas=2))
    assert main(["k8s", "nope", "--export-path", str(tmp_path)]) == 1
    assert "archive not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory):
    from export.signing import generate_key_pair

    private, public = generate_key_pair(tmp_path_factory.mktemp("k8s-keys"))
    return private, public


def test_signed_image_checks_its_model_store_before_torchserve_starts(tabular_mar, signing_keys, tmp_path):
    import shlex
    import shutil
    import subprocess
    import sys

    from export.signing import sign_archive

    private, public = signing_keys
    signed = Path(shutil.copy(tabular_mar, tmp_path / "signed.mar"))
    sign_archive(signed, private)
    out = tmp_path / "layout"
    assert main(["k8s", TABULAR_NAME, "--archive", str(signed), "--out", str(out), "--image", "reg/mlp:1",
                 "--key", str(public), "--sign-key", str(private)]) == 0
    assert (out / "keys" / public.name).is_file() and (out / "verify" / "tskit_signing.py").is_file()
    docker = (out / "Dockerfile").read_text()
    assert "model-signing==1.1.1 pyopenssl==26.4.0" in docker and "COPY keys/ /mnt/models/keys/" in docker
    [cmd] = [json.loads(line[4:]) for line in docker.splitlines() if line.startswith("CMD ")]
    assert cmd[:2] == ["sh", "-c"]
    check, serve = cmd[2].split(" && exec ")
    assert serve.startswith("torchserve --start --foreground")
    # the image's check, run on the layout as the image has it at /mnt/models
    argv = [sys.executable if a == "python" else a.replace("/mnt/models", str(out)) for a in shlex.split(check)]
    assert subprocess.run(argv, capture_output=True, text=True).returncode == 0
    derived = out / "model-store" / f"{TABULAR_NAME}.mar"
    with zipfile.ZipFile(derived, "a") as zf:  # something slipped into the store's archive after it was signed
        zf.writestr("sitecustomize.py", "print('hello')\n")
    refused = subprocess.run(argv, capture_output=True, text=True)
    assert refused.returncode == 1 and "sitecustomize.py: not in the manifest" in refused.stdout, refused.stdout


def test_signing_options_that_cannot_work_are_refused(tabular_mar, signing_keys, tmp_path, capsys):
    private, public = signing_keys
    base = ["k8s", TABULAR_NAME, "--archive", str(tabular_mar), "--out", str(tmp_path / "o")]
    cases = [(["--key", str(public), "--sign-key", str(private)], "pass --image"),
             (["--key", str(public), "--image", "r/m:1"], "pass --sign-key"),
             (["--sign-key", str(private), "--image", "r/m:1"], "with --key"),
             (["--key", str(public), "--sign-key", str(private), "--image", "r/m:1"], "no trusted key vouches for")]
    for extra, expected in cases:
        assert main(base + extra) == 1
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err
