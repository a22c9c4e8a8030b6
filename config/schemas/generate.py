"""Write the JSON schemas that `tskit k8s` manifests are validated against (tests/tskit/test_k8s.py).

    python -m venv /tmp/schema-venv
    /tmp/schema-venv/bin/pip install kserve==0.21.0 kubernetes-validate==1.37.0
    /tmp/schema-venv/bin/python config/schemas/generate.py

A throwaway venv, because the kserve SDK's dependencies would move this project's pins. Neither package is
needed to run the tests: they read the files written here with `jsonschema`.

- `secret-v1.json`, `serviceaccount-v1.json`: Kubernetes 1.37's own schemas as `kubernetes-validate` ships them
  (its "strict" flavour: an unknown field is an error, as with `kubectl apply --validate=strict`), each made
  self-contained: the definitions they reference are copied in.
- `inferenceservice-v1beta1.json`: KServe's `serving.kserve.io/v1beta1` InferenceService, derived from the
  kserve SDK's generated model classes (`V1beta1InferenceService` and the classes its `openapi_types` name):
  one object per class, properties under their JSON names (`attribute_map`), a property required when the
  class's setter refuses None, no unknown properties (the CRD is a structural schema: the API server prunes or,
  strict, rejects them). The Kubernetes types it embeds (Container, ObjectMeta, ResourceRequirements, ...) are
  Kubernetes' own definitions from the same `kubernetes-validate` release. `status` is left open: manifests do
  not write it. apiVersion and kind are pinned to the CRD's group/version and kind.
"""
import copy
import inspect
import json
import re
import sys
from importlib.metadata import version
from pathlib import Path

import kserve.models as kserve_models
import kubernetes_validate

OUT = Path(__file__).resolve().parent
K8S_VERSION = "1.37.0"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
K8S_KINDS = {"secret-v1.json": "io.k8s.api.core.v1.Secret", "serviceaccount-v1.json": "io.k8s.api.core.v1.ServiceAccount"}
SCALARS = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
           "bool": {"type": "boolean"}, "datetime": {"type": "string"}, "date": {"type": "string"}, "object": {}}
K8S_ALIASES = {"ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity"}  # the SDK's name for a Quantity
K8S_GROUP_PREFERENCE = ("io.k8s.api.core.", "io.k8s.apimachinery.pkg.apis.meta.", "io.k8s.api.apps.",
                        "io.k8s.api.autoscaling.")


def k8s_definitions() -> tuple[dict, Path]:
    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    return json.loads((folder / "_definitions.json").read_text())["$defs"], folder


def local_refs(node):
    """Rewrite kubernetes-validate's `/api/_definitions.json#/$defs/X` references to `#/$defs/X`."""
    if isinstance(node, dict):
        return {k: (re.sub(r"^.*#/\$defs/", "#/$defs/", v) if k == "$ref" else local_refs(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [local_refs(v) for v in node]
    return node


def refs_in(node) -> list[str]:
    """The names of the `#/$defs/X` definitions `node` references."""
    return re.findall(r'"#/\$defs/([^"]+)"', json.dumps(node))


def closure(roots: list[str], definitions: dict) -> dict:
    """The named definitions and every definition they reference, transitively."""
    found, todo = {}, list(roots)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found[name] = local_refs(definitions[name])
        todo += refs_in(found[name])
    return dict(sorted(found.items()))


def k8s_python_names(definitions: dict) -> dict[str, str]:
    """{"V1Container": "io.k8s.api.core.v1.Container", "K8sIoApiAppsV1DeploymentStrategy": ...}: the class names
    the SDK uses; where two API groups share a version and kind, core, meta, apps and autoscaling win in that
    order."""
    names: dict[str, str] = dict(K8S_ALIASES)
    for name in definitions:  # fully qualified: io.k8s.api.apps.v1.X as K8sIoApiAppsV1X
        parts = name.split(".")
        if parts[:2] == ["io", "k8s"]:
            names["K8sIo" + "".join(p[:1].upper() + p[1:] for p in parts[2:])] = name
    ranked = sorted(definitions, key=lambda d: next((i for i, p in enumerate(K8S_GROUP_PREFERENCE) if d.startswith(p)),
                                                    len(K8S_GROUP_PREFERENCE)))
    for name in ranked:
        parts = name.split(".")
        if len(parts) >= 3 and re.fullmatch(r"v\d+(alpha\d+|beta\d+)?", parts[-2]):
            names.setdefault(parts[-2].capitalize() + parts[-1], name)
    return names


class KServeSchema:
    """JSON schema objects for kserve SDK classes, with Kubernetes definitions referenced by name."""

    def __init__(self, definitions: dict):
        self.definitions = definitions
        self.k8s_names = k8s_python_names(definitions)
        self.defs: dict[str, dict] = {}
        self.k8s_used: set[str] = set()
        self.unresolved: set[str] = set()

    def type_schema(self, spec: str) -> dict:
        spec = spec.strip()
        if spec in SCALARS:
            return dict(SCALARS[spec])
        if spec.startswith("list[") and spec.endswith("]"):
            return {"type": "array", "items": self.type_schema(spec[5:-1])}
        if spec.startswith("dict(") and spec.endswith(")"):
            _, value = spec[5:-1].split(",", 1)
            return {"type": "object", "additionalProperties": self.type_schema(value)}
        if hasattr(kserve_models, spec):
            self.add_class(spec)
            return {"$ref": f"#/$defs/{spec}"}
        if spec in self.k8s_names:
            self.k8s_used.add(self.k8s_names[spec])
            return {"$ref": f"#/$defs/{self.k8s_names[spec]}"}
        self.unresolved.add(spec)
        return {}

    def add_class(self, name: str) -> None:
        if name in self.defs:
            return
        cls = getattr(kserve_models, name)
        self.defs[name] = {}  # placeholder against cycles
        properties, required = {}, []
        for attr, spec in cls.openapi_types.items():
            json_name = cls.attribute_map[attr]
            properties[json_name] = {} if attr == "status" else self.type_schema(spec)
            if "must not be `None`" in inspect.getsource(getattr(cls, attr).fset):
                required.append(json_name)
        self.defs[name] = {"type": "object", "description": f"kserve SDK {name}",
                           "properties": properties, "additionalProperties": False,
                           **({"required": required} if required else {})}


def inference_service_schema(definitions: dict) -> dict:
    gen = KServeSchema(definitions)
    gen.add_class("V1beta1InferenceService")
    root = copy.deepcopy(gen.defs["V1beta1InferenceService"])
    root["properties"]["apiVersion"] = {"const": "serving.kserve.io/v1beta1"}
    root["properties"]["kind"] = {"const": "InferenceService"}
    root["required"] = sorted(set(root.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    return {"$schema": DRAFT, "$id": "inferenceservice-v1beta1.json",
            "title": "serving.kserve.io/v1beta1 InferenceService",
            "$comment": f"generated by config/schemas/generate.py from kserve {version('kserve')} "
                        f"(SDK model classes) and kubernetes-validate {version('kubernetes-validate')} "
                        f"(Kubernetes {K8S_VERSION} definitions); types accepted as anything because neither "
                        f"defines them: {sorted(gen.unresolved) or 'none'}",
            **{k: v for k, v in root.items() if k != "description"},
            "$defs": {**gen.defs, **closure(sorted(gen.k8s_used), definitions)}}


def k8s_kind_schema(file_name: str, definition: str, definitions: dict, folder: Path) -> dict:
    kind = local_refs(json.loads((folder / file_name).read_text()))
    return {"$schema": DRAFT, "$id": file_name, "title": definition,
            "$comment": f"Kubernetes {K8S_VERSION} (strict) from kubernetes-validate {version('kubernetes-validate')}, "
                        "made self-contained by config/schemas/generate.py",
            **{k: v for k, v in kind.items() if k not in ("$schema", "$id")},
            "$defs": closure(refs_in(kind), definitions)}


def main() -> int:
    definitions, folder = k8s_definitions()
    written = {"inferenceservice-v1beta1.json": inference_service_schema(definitions)}
    for file_name, definition in K8S_KINDS.items():
        written[file_name] = k8s_kind_schema(file_name, definition, definitions, folder)
    for file_name, schema in written.items():
        (OUT / file_name).write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n")
        print(f"wrote {OUT / file_name} ({len(schema['$defs'])} definitions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
