"""Baselines `tskit bench` compares against: same weights, same TorchServe, stock handler code.

`build_stock_archive`: TorchServe's own stock `image_classifier` handler with the default model's weights (it
loads TorchScript when an archive has no model file, so the model is traced). `build_stock_transformer_archive`:
a Hugging Face folder behind a handler written as TorchServe's Hugging Face example writes it
(export/stock_handlers/hf_sequence_classifier.py: padding to 150, eager), the folder's files flattened into the
archive root as that example's recipe does.
"""
import os
import subprocess
import tempfile
from pathlib import Path

import yaml

from export.archive import archiver_command
from export.zoo import export_default, write_imagenet_labels


def build_stock_archive(export_path: str | Path, name: str = "efficientnet_lite0_stock", batch_size: int = 8,
                        max_delay_ms: int = 20, workers: int = 2) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        traced = export_default("torchscript", work, name).serialized_file
        labels = write_imagenet_labels(work / "index_to_name.json")
        config = work / "model-config.yaml"
        config.write_text(yaml.safe_dump({"minWorkers": workers, "maxWorkers": workers, "batchSize": batch_size,
                                          "maxBatchDelay": max_delay_ms, "responseTimeout": 120}))
        Path(export_path).mkdir(parents=True, exist_ok=True)
        cmd = archiver_command() + ["--model-name", name, "--version", "1.0", "--serialized-file", str(traced),
                                    "--handler", "image_classifier", "--extra-files", str(labels),
                                    "--config-file", str(config), "--export-path", str(export_path), "--force"]
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "TMPDIR": tmp})
    return Path(export_path) / f"{name}.mar"


def build_stock_transformer_archive(model_dir: str | Path, export_path: str | Path, name: str, batch_size: int = 8,
                                    max_delay_ms: int = 20, workers: int = 2) -> Path:
    handler = Path(__file__).resolve().parent / "stock_handlers" / "hf_sequence_classifier.py"
    folder = Path(model_dir)
    extra = [str(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != "model.safetensors"]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "model-config.yaml"
        config.write_text(yaml.safe_dump({"minWorkers": workers, "maxWorkers": workers, "batchSize": batch_size,
                                          "maxBatchDelay": max_delay_ms, "responseTimeout": 120,
                                          "torch_threads": 1}))
        Path(export_path).mkdir(parents=True, exist_ok=True)
        cmd = archiver_command() + ["--model-name", name, "--version", "1.0", "--serialized-file",
                                    str(folder / "model.safetensors"), "--handler", str(handler), "--extra-files",
                                    ",".join(extra), "--config-file", str(config), "--export-path", str(export_path),
                                    "--force"]
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "TMPDIR": tmp})
    return Path(export_path) / f"{name}.mar"
