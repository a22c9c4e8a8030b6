"""`tskit k8s NAME`: what it takes to run an archive as a KServe InferenceService on Kubernetes.

Writes, under `--out` (default `k8s/NAME`):

    model-store/NAME.mar       the archive, derived with batchSize 1 (see below)
    config/config.properties   TorchServe for KServe's PyTorch runtime (storageUri is mounted at /mnt/models)
    config/metrics.yaml        the handler metrics' declarations
    Dockerfile                 the same files on the official TorchServe image, for an image of your own
    inferenceservice.yaml      serving.kserve.io/v1beta1: replicas, resources, canaryTrafficPercent, storageUri
                               (or, with --image, a predictor container running that image)
    serviceaccount.yaml,       the storage credentials KServe's storage initializer reads (s3:// and gs://)
    secret.yaml
    keys/, verify/             with --key: the trusted public keys and the check (export/signing.py) the image runs
                               on its model store before TorchServe starts; the derived archive is signed again
                               with --sign-key

TorchServe's `kserve`/`kservev2` envelope reads only the first request of a TorchServe batch, so the model
runs with batchSize 1 there (the archive's own model-config.yaml wins over config.properties, hence the derived
archive); the instances of one request are the handler's batch, and for v1 KServe's batcher gathers the
instances of concurrent requests into one (`batcher`, from the archive's batchSize and maxBatchDelay).
TorchServe's token auth is off in this config: its keys are random per process (every replica would have
others) and KServe's model server in front of it sends none; TorchServe listens on 127.0.0.1 only and access
control belongs to the cluster (KServe's `serving.kserve.io/enable-auth`, an Istio AuthorizationPolicy).
"""
import json
import re
import shlex
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

import export.signing
from export.inprocess import METRICS_YAML
from export.variants import CONFIG_NAME, derive_archive
from handlers.integrity import MANIFEST_NAME
from tskit.properties import write_properties

MOUNT = "/mnt/models"  # where KServe's storage initializer puts storageUri's contents
TORCHSERVE_IMAGE = "pytorch/torchserve:0.12.0-cpu"
ENVELOPES = {"v1": "kserve", "v2": "kservev2"}
PROMETHEUS_PORT = 8082


@dataclass
class K8sSpec:
    name: str  # the TorchServe model name (URL paths: /v2/models/NAME/infer)
    archive: Path
    out: Path
    protocol: str = "v2"
    storage_uri: str = ""  # default: s3://models/NAME
    min_replicas: int = 1
    max_replicas: int = 3
    cpu: str = "1"
    memory: str = "2Gi"
    canary: int | None = None  # canaryTrafficPercent for a rollout of a new storageUri
    image: str = ""  # run this image (built from the Dockerfile) instead of KServe's PyTorch runtime
    namespace: str = ""
    trusted_keys: tuple[Path, ...] = ()  # public keys the pod checks the model store against before serving
    sign_key: Path | None = None  # signs the derived archive (its model-config changes, so its manifest does)

    @property
    def service_name(self) -> str:
        """The InferenceService's name: a DNS-1123 label made from the model name."""
        return re.sub(r"[^a-z0-9-]+", "-", self.name.lower()).strip("-")[:63] or "model"

    @property
    def uri(self) -> str:
        return self.storage_uri or f"s3://models/{self.service_name}"

    @property
    def scheme(self) -> str:
        return self.uri.split("://", 1)[0]


def archive_settings(archive: Path) -> tuple[dict, dict]:
    """(model-config.yaml, tskit-manifest.json or {}) of an archive."""
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        config = yaml.safe_load(zf.read(CONFIG_NAME)) if CONFIG_NAME in names else {}
        manifest = json.loads(zf.read(MANIFEST_NAME)) if MANIFEST_NAME in names else {}
    return config or {}, manifest


def write_layout(spec: K8sSpec) -> tuple[dict[str, Path], dict[str, dict]]:
    """Write everything; returns ({what: path}, {file stem: manifest}), the manifests as written to YAML."""
    if spec.protocol not in ENVELOPES:
        raise ValueError(f"protocol must be one of {sorted(ENVELOPES)}, got {spec.protocol!r}")
    if spec.canary is not None and not 0 <= spec.canary <= 100:
        raise ValueError(f"canaryTrafficPercent must be 0..100, got {spec.canary}")
    if not 1 <= spec.min_replicas <= spec.max_replicas:
        raise ValueError(f"need 1 <= min replicas ({spec.min_replicas}) <= max replicas ({spec.max_replicas})")
    check_signing_options(spec)
    config, manifest = archive_settings(spec.archive)
    out = spec.out
    (out / "config").mkdir(parents=True, exist_ok=True)
    paths = {"archive": derive_archive(spec.archive, out / "model-store" / f"{spec.name}.mar", {"batchSize": 1}),
             "config": out / "config" / "config.properties", "metrics": out / "config" / "metrics.yaml",
             "dockerfile": out / "Dockerfile", "inferenceservice": out / "inferenceservice.yaml"}
    if spec.trusted_keys:
        paths.update(write_verification(spec, paths["archive"]))
    shutil.copy(METRICS_YAML, paths["metrics"])
    write_properties(paths["config"], config_properties(spec, config), header=CONFIG_HEADER)
    paths["dockerfile"].write_text(dockerfile(spec, manifest))
    documents = manifests(spec, config)
    for kind, document in documents.items():
        paths[kind] = out / f"{kind}.yaml"
        paths[kind].write_text(yaml.safe_dump(document, sort_keys=False))
    return paths, documents


VERIFIER = "verify/tskit_signing.py"


def check_signing_options(spec: K8sSpec) -> None:
    """With trusted keys: the source archive must verify with one of them, and the derived one gets signed."""
    if spec.sign_key and not spec.trusted_keys:
        raise ValueError("--sign-key signs the derived archive for a pod that checks it: give the public key(s) the "
                         "pod trusts with --key")
    if not spec.trusted_keys:
        return
    if not spec.image:
        raise ValueError("the pod checks signatures in the image tskit k8s writes (Dockerfile), before TorchServe "
                         "starts; KServe's PyTorch runtime has no such step: pass --image REGISTRY/NAME:TAG")
    if not spec.sign_key:
        raise ValueError("the archive for KServe is derived (batchSize 1), so its manifest changes and it must be "
                         "signed again: pass --sign-key PRIVATE.pem")
    check = export.signing.signature_problems(spec.archive, list(spec.trusted_keys))
    if not check.trusted:
        raise ValueError(f"not deriving from an archive no trusted key vouches for: {check}")


def write_verification(spec: K8sSpec, derived: Path) -> dict[str, Path]:
    """Sign the derived archive and put the check the image runs beside it: the keys and export/signing.py."""
    export.signing.sign_archive(derived, spec.sign_key)
    check = export.signing.signature_problems(derived, list(spec.trusted_keys))
    if not check.trusted:
        raise ValueError(f"--sign-key's public key is not among the --key ones the pod trusts: {check}")
    (spec.out / "keys").mkdir(exist_ok=True)
    paths = {}
    for i, key in enumerate(spec.trusted_keys):
        paths[f"key{i}"] = Path(shutil.copy(key, spec.out / "keys" / Path(key).name))
    paths["verifier"] = spec.out / VERIFIER
    paths["verifier"].parent.mkdir(exist_ok=True)
    shutil.copy(export.signing.__file__, paths["verifier"])
    return paths


def verify_command(spec: K8sSpec) -> list[str]:
    """What the image runs before TorchServe: exit 1, and no TorchServe, unless every archive verifies."""
    keys = [arg for key in spec.trusted_keys for arg in ("--key", f"{MOUNT}/keys/{Path(key).name}")]
    return ["python", f"{MOUNT}/{VERIFIER}", f"{MOUNT}/model-store", *keys, "--require-signed"]


CONFIG_HEADER = f"""\
# TorchServe for KServe's PyTorch runtime, written by `tskit k8s`. KServe mounts storageUri at {MOUNT}; its
# model server answers clients on :8080 (KServe v1/v2) and forwards to TorchServe on 127.0.0.1:8085.
# Token auth is off: TorchServe's keys are random per process (per replica) and KServe's model server sends
# none; only the pod itself reaches 127.0.0.1, and access control is the cluster's (see README, KServe).
# batchSize is 1: the kserve/kservev2 envelope answers only the first request of a TorchServe batch.
"""


def config_properties(spec: K8sSpec, config: dict) -> dict[str, str]:
    workers = {key: int(config.get(key, 1)) for key in ("minWorkers", "maxWorkers")}
    snapshot = {"name": "startup.cfg", "modelCount": 1, "models": {spec.name: {"1.0": {
        "defaultVersion": True, "marName": f"{spec.name}.mar", **workers, "batchSize": 1,
        "maxBatchDelay": int(config.get("maxBatchDelay", 10)),
        "responseTimeout": int(config.get("responseTimeout", 120))}}}}
    return {
        "inference_address": "http://127.0.0.1:8085",
        "management_address": "http://127.0.0.1:8085",
        "metrics_address": f"http://0.0.0.0:{PROMETHEUS_PORT}",
        "grpc_inference_port": "7070",
        "grpc_management_port": "7071",
        # KServe sets TS_SERVICE_ENVELOPE from the InferenceService's protocolVersion; this is the default
        "enable_envvars_config": "true",
        "service_envelope": ENVELOPES[spec.protocol],
        "ts_open_inference_protocol": "true",  # /v2/health/live, /v2/health/ready
        "disable_token_authorization": "true",
        "allowed_urls": "^$",
        "model_store": f"{MOUNT}/model-store",
        "load_models": f"{spec.name}.mar",
        "model_snapshot": json.dumps(snapshot),  # KServe's model server takes the model names from here
        "metrics_mode": "prometheus",
        "metrics_config": f"{MOUNT}/config/metrics.yaml",
    }


def local_overrides(out: Path) -> dict[str, str]:
    """The config's {MOUNT} paths pointed at the layout itself, as if it were mounted there: for a local run."""
    out = Path(out).resolve()
    return {"model_store": str(out / "model-store"), "metrics_config": str(out / "config" / "metrics.yaml")}


def dockerfile(spec: K8sSpec, manifest: dict) -> str:
    model = manifest.get("model", {})
    extras = (["onnxruntime"] if model.get("format") == "onnx" else []) + \
             (["safetensors"] if model.get("handler") == "tensor.py" else [])
    if spec.trusted_keys:  # the signature check (export/signing.py) needs these; model-signing imports OpenSSL
        extras += ["model-signing==1.1.1", "pyopenssl==26.4.0"]
    install = f"RUN pip install --no-cache-dir {' '.join(extras)}\n" if extras else ""
    built_with = manifest.get("environment", {}).get("torch", "?")
    return f"""\
# TorchServe with {spec.name} baked in, on the official image: for an InferenceService that runs your own image
# (tskit k8s {spec.name} --image REGISTRY/{spec.service_name}:TAG). Build from this folder:
#   docker build -t REGISTRY/{spec.service_name}:TAG . && docker push REGISTRY/{spec.service_name}:TAG
# The archive was built with torch {built_with}; eager and ONNX archives load in the image's torch, AOTInductor
# and TorchScript files need the torch they were made with.
FROM {TORCHSERVE_IMAGE}
{install}COPY model-store/ {MOUNT}/model-store/
COPY config/ {MOUNT}/config/
# no KServe model server in this image: clients reach TorchServe itself on :8080 (enable_envvars_config=true)
ENV TS_INFERENCE_ADDRESS=http://0.0.0.0:8080
EXPOSE 8080 {PROMETHEUS_PORT}
{start_command(spec)}"""


def start_command(spec: K8sSpec) -> str:
    """The image's CMD: TorchServe, after the signature check of every archive when keys are trusted."""
    serve = ["torchserve", "--start", "--foreground", "--ncs", "--model-store", f"{MOUNT}/model-store",
             "--ts-config", f"{MOUNT}/config/config.properties"]
    if not spec.trusted_keys:
        return f"CMD {json.dumps(serve)}\n"
    checked = f"{shlex.join(verify_command(spec))} && exec {shlex.join(serve)}"
    return (f"COPY keys/ {MOUNT}/keys/\nCOPY verify/ {MOUNT}/verify/\n"
            "# every archive of the model store verified against the trusted keys first: no TorchServe otherwise\n"
            f"CMD {json.dumps(['sh', '-c', checked])}\n")


def manifests(spec: K8sSpec, config: dict) -> dict[str, dict]:
    """{file stem: manifest}: the InferenceService and, for s3:// or gs:// storage, its credentials."""
    out = {"inferenceservice": inference_service(spec, config)}
    if needs_credentials(spec):
        out["secret"] = storage_secret(spec)
        out["serviceaccount"] = metadata_doc(spec, "v1", "ServiceAccount", storage_account(spec))
        out["serviceaccount"]["secrets"] = [{"name": storage_account(spec)}]
    return out


def metadata_doc(spec: K8sSpec, api_version: str, kind: str, name: str, **meta) -> dict:
    metadata = {"name": name, **({"namespace": spec.namespace} if spec.namespace else {}), **meta}
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata}


def needs_credentials(spec: K8sSpec) -> bool:
    """KServe's runtime downloads s3:// and gs:// storage with credentials; pvc:// and a baked image need none."""
    return not spec.image and spec.scheme in STORAGE_SECRETS


def storage_account(spec: K8sSpec) -> str:
    """The name of the storage credentials' ServiceAccount and of the Secret it carries."""
    return f"{spec.service_name}-storage"


# KServe's storage initializer reads these keys (and, for S3, the serving.kserve.io/s3-* annotations)
STORAGE_SECRETS = {
    "s3": ({"serving.kserve.io/s3-endpoint": "s3.amazonaws.com", "serving.kserve.io/s3-usehttps": "1",
            "serving.kserve.io/s3-region": "us-east-1"}, ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")),
    "gs": ({}, ("gcloud-application-credentials.json",)),
}


def storage_secret(spec: K8sSpec) -> dict:
    """The credentials' Secret with empty values: fill them in (or create it with kubectl), never commit them."""
    annotations, keys = STORAGE_SECRETS[spec.scheme]
    doc = metadata_doc(spec, "v1", "Secret", storage_account(spec),
                       **({"annotations": dict(annotations)} if annotations else {}))
    doc["type"] = "Opaque"
    doc["stringData"] = {key: "" for key in keys}
    return doc


def inference_service(spec: K8sSpec, config: dict) -> dict:
    resources = {"requests": {"cpu": spec.cpu, "memory": spec.memory},
                 "limits": {"cpu": spec.cpu, "memory": spec.memory}}
    predictor: dict = {"minReplicas": spec.min_replicas, "maxReplicas": spec.max_replicas}
    if spec.canary is not None:
        predictor["canaryTrafficPercent"] = spec.canary
    if spec.protocol == "v1":  # KServe's batcher gathers v1 instances of concurrent requests into one request
        predictor["batcher"] = {"maxBatchSize": int(config.get("batchSize", 1)),
                                "maxLatency": int(config.get("maxBatchDelay", 10))}
    if spec.image:
        predictor["containers"] = [{
            "name": "kserve-container", "image": spec.image,
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "env": [{"name": "TS_SERVICE_ENVELOPE", "value": ENVELOPES[spec.protocol]}],
            "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8080}},
            "resources": resources}]
    else:
        if needs_credentials(spec):
            predictor["serviceAccountName"] = storage_account(spec)
        predictor["model"] = {"modelFormat": {"name": "pytorch"}, "protocolVersion": spec.protocol,
                              "storageUri": spec.uri, "resources": resources}
    annotations = {"serving.kserve.io/enable-prometheus-scraping": "true",
                   "prometheus.kserve.io/port": str(PROMETHEUS_PORT), "prometheus.kserve.io/path": "/metrics"}
    doc = metadata_doc(spec, "serving.kserve.io/v1beta1", "InferenceService", spec.service_name,
                       annotations=annotations)
    doc["spec"] = {"predictor": predictor}
    return doc
