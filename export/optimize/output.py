"""The optimized archive: the source archive's model name, handler, labels and golden inputs, served by the chosen
engine and decoder, with the workers x threads split chosen for serving in its model-config.yaml (the one place
that says how it is served) and the whole report in its manifest."""
import json
from dataclasses import dataclass
from pathlib import Path

from export.optimize.candidates import Candidate


@dataclass
class Source:
    """The archive `tskit optimize` starts from, unpacked."""
    mar: Path
    root: Path
    archiver: dict  # MAR-INF/MANIFEST.json's "model"
    manifest: dict | None  # tskit-manifest.json
    config: dict  # model-config.yaml

    @classmethod
    def open(cls, mar: str | Path, work: Path) -> "Source":
        import yaml

        from export.inprocess import unpack_archive
        from export.variants import CONFIG_NAME
        from handlers.integrity import read_manifest

        root = unpack_archive(mar, work / "archive").resolve()
        archiver = json.loads((root / "MAR-INF" / "MANIFEST.json").read_text())["model"]
        config = yaml.safe_load((root / CONFIG_NAME).read_text()) or {}
        return cls(Path(mar), root, archiver, read_manifest(root), config)

    @property
    def name(self) -> str:
        return self.archiver["modelName"]

    @property
    def batch_size(self) -> int:
        return int(self.config.get("batchSize", 1))

    @property
    def serialized_file(self) -> Path:
        return self.root / self.archiver["serializedFile"]

    @property
    def model_file(self) -> Path | None:
        return self.root / self.archiver["modelFile"] if self.archiver.get("modelFile") else None


def eager_weights(source: Source, fmt: str) -> tuple[str | None, str | None]:
    """(state_dict, model file) an optimized archive ships for explanations: the ones the archive ships, else its
    own eager model; a TorchScript or compiled-only archive has none to give (its explanations answer 501)."""
    from handlers.explain import EXPLAIN_MODEL_FILE, EXPLAIN_WEIGHTS

    root = source.root
    if (root / EXPLAIN_WEIGHTS).is_file() and (root / EXPLAIN_MODEL_FILE).is_file():
        return str(root / EXPLAIN_WEIGHTS), str(root / EXPLAIN_MODEL_FILE)
    if fmt == "eager":
        return str(source.serialized_file), str(source.model_file)
    return None, None


RUNTIME_PACKAGES = {"onnxruntime": ["onnxruntime"], "openvino": ["openvino"]}
DECODER_PACKAGES = {"turbojpeg": ["simplejpeg", "opencv-python-headless"]}


def write_archive(source: Source, winner: Candidate, decoder: str, workers: int, fmt: str, report: dict,
                  export_path: str | Path, version: str | None, work: Path) -> Path:
    """Build `{export_path}/{name}.mar` for `winner` behind `decoder`, served by `workers` workers (threads:
    the cores divided among them, as each worker computes at load)."""
    from export.archive import ArchiveSpec, build_archive
    from export.golden import GoldenInput
    from handlers.drift import REFERENCE_NAME
    from handlers.requirements import pinned

    root = source.root
    handler_config = dict(source.config.get("handler") or {})
    handler_config.update(precision="bf16" if winner.bf16_hint or winner.precision == "bf16" else "fp32",
                          threads=0, decoder=decoder)
    config = {**source.config, "minWorkers": workers, "maxWorkers": workers, "handler": handler_config}
    golden = [GoldenInput(Path(c["input"]).name, (root / c["input"]).read_bytes(), c["content_type"])
              for c in (source.manifest or {}).get("golden", {}).get("cases", [])]
    model_file = str(source.model_file) if winner.as_built and source.model_file else None
    explain = (None, None) if model_file else eager_weights(source, fmt)
    labels = root / "index_to_name.json"
    # a worker without the engine (or the decoder's packages) refuses to load, naming them (handlers/requirements.py)
    # (the archive as built keeps its own requirements)
    packages = [] if winner.as_built else RUNTIME_PACKAGES.get(winner.engine, [])
    lines = list((source.manifest or {}).get("requirements", [])) if winner.as_built else []
    lines += pinned(packages + DECODER_PACKAGES.get(decoder, []))
    requirements = None
    if lines:
        requirements = work / "requirements.txt"
        requirements.write_text("".join(f"{line}\n" for line in dict.fromkeys(lines)))
    spec = ArchiveSpec(
        name=source.name, serialized_file=winner.files[0], model_file=model_file, handler="image_classifier",
        labels=str(labels) if labels.is_file() else None, config=config, export_path=str(export_path),
        version=version or source.archiver["modelVersion"], golden_inputs=golden,
        explain_weights=explain[0], explain_model_file=explain[1],
        reference_file=str(root / REFERENCE_NAME) if (root / REFERENCE_NAME).is_file() else None,
        requirements=str(requirements) if requirements else None, manifest_extra={"optimization": report})
    return build_archive(spec)
