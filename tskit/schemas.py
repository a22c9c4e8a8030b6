"""Validate Kubernetes manifests against the schemas kept in config/schemas (written by its generate.py)."""
import functools
import json
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "config" / "schemas"
SCHEMAS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-v1beta1.json",
    ("v1", "Secret"): "secret-v1.json",
    ("v1", "ServiceAccount"): "serviceaccount-v1.json",
}


@functools.lru_cache(maxsize=None)
def validator(file_name: str):
    from jsonschema import Draft202012Validator

    schema = json.loads((SCHEMA_DIR / file_name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schema_errors(doc: dict) -> list[str]:
    """Every way `doc` breaks its kind's schema, as `path: message`; [] when it is valid."""
    key = (doc.get("apiVersion"), doc.get("kind")) if isinstance(doc, dict) else None
    if key not in SCHEMAS:
        return [f"no schema for apiVersion/kind {key}; known: {sorted(SCHEMAS)}"]
    errors = validator(SCHEMAS[key]).iter_errors(doc)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors)
