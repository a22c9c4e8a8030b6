"""A real tabular model for the `tensor` handler, trained at build time in about a second.

No pretrained weights exist for it, so `train` fits `tabular_mlp.TabularMLP` on scikit-learn's bundled
breast cancer data set (569 rows, 30 features, read from the installed package, never downloaded) with
a fixed seed and a stratified held-out split that the tests score through the handler.

    python -m export.zoo.tabular --export-path model_store   # trains, prints accuracy, builds the .mar
"""
import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from export.archive import ArchiveSpec, build_archive
from export.golden import GoldenInput
from export.zoo.tabular_mlp import HIDDEN, TabularMLP

ZOO_DIR = Path(__file__).resolve().parent
TABULAR_NAME = "breast_cancer_mlp"
SCHEMA_FILE = "tensor_schema.json"
SEED = 0
TEST_FRACTION = 0.25
EPOCHS = 300


def load_split(seed: int = SEED):
    """(x_train, x_test, y_train, y_test): float32 raw features, int64 labels, stratified."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    return train_test_split(x, y, test_size=TEST_FRACTION, random_state=seed, stratify=y)


def dataset_info() -> dict:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return {"feature_names": [str(n) for n in data.feature_names], "labels": [str(n) for n in data.target_names]}


def train(x_train: np.ndarray, y_train: np.ndarray, seed: int = SEED) -> TabularMLP:
    """Full-batch Adam on cross-entropy; the training set's statistics become the model's buffers."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
        model = TabularMLP(x.shape[1], int(y.max()) + 1, HIDDEN)
        model.mean.copy_(x.mean(0))
        model.std.copy_(x.std(0).clamp_min(1e-6))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
        model.train()
        for _ in range(EPOCHS):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.inference_mode():
        predicted = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((predicted == y).mean())


def write_schema(path: Path, x_train: np.ndarray, info: dict | None = None) -> Path:
    info = info or dataset_info()
    schema = {
        "input_name": "features",
        "shape": [len(info["feature_names"])],
        "dtype": "float32",
        "feature_names": info["feature_names"],
        "labels": info["labels"],
        "max_rows": 256,
        # explanations start from the average training row (all zeros is no patient at all)
        "baseline": [round(float(v), 6) for v in x_train.mean(0)],
    }
    path.write_text(json.dumps(schema, indent=1))
    return path


def export_files(work_dir: Path) -> tuple[Path, Path]:
    """Train and write (state_dict file, schema file) under `work_dir`."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    x_train, _, y_train, _ = load_split()
    weights = work_dir / f"{TABULAR_NAME}.pt"
    torch.save(train(x_train, y_train).state_dict(), weights)
    return weights, write_schema(work_dir / SCHEMA_FILE, x_train)


def tabular_spec(export_path: str, work_dir: Path) -> ArchiveSpec:
    weights, schema = export_files(work_dir)
    return ArchiveSpec(
        name=TABULAR_NAME,
        serialized_file=str(weights),
        model_file=str(ZOO_DIR / "tabular_mlp.py"),
        handler="tensor",
        config={"minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 10, "handler": {"topk": 2}},
        export_path=str(export_path),
        extra_files=[str(schema)],
        golden_inputs=golden_rows(),
        reference_inputs=training_rows(),
    )


def training_rows() -> list[GoldenInput]:
    """The training rows, one JSON request each: the archive's drift reference."""
    x_train, _, _, _ = load_split()
    return [GoldenInput(f"train-{i}.json", json.dumps(row.tolist()).encode(), "application/json")
            for i, row in enumerate(x_train)]


def golden_rows(n: int = 4) -> list[GoldenInput]:
    """Held-out rows as JSON request bodies, stored in the archive as its golden cases."""
    _, x_test, _, _ = load_split()
    return [GoldenInput(f"row-{i}.json", json.dumps(x_test[i].tolist()).encode(), "application/json")
            for i in range(n)]


def build_tabular_archive(export_path: str | Path, work_dir: str | Path) -> Path:
    """Train, then write `{export_path}/breast_cancer_mlp.mar` and return its path."""
    return build_archive(tabular_spec(str(export_path), Path(work_dir)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export-path", default="model_store")
    args = p.parse_args()
    x_train, x_test, y_train, y_test = load_split()
    model = train(x_train, y_train)
    print(f"held-out accuracy {accuracy(model, x_test, y_test):.4f} on {len(y_test)} rows")
    with tempfile.TemporaryDirectory() as tmp:
        print(build_tabular_archive(args.export_path, tmp))


if __name__ == "__main__":
    main()
