"""Views of a few photos for the accuracy guard: crops, flips and scales of each, re-encoded as JPEG.

A user's `--calibration` folder may hold only a handful of photos; the guard needs hundreds of inputs. Each photo
gives `per_photo` views, deterministically (seeded by the photo's name): a random crop (30-100% of the area,
aspect 3:4 to 4:3), mirrored half of the time, scaled so its shorter side is 160-640 px, saved as JPEG quality
85-95 (the JPEG path is what clients send). The first view is the whole photo. Photos are split by name into a
calibration part and a held-out part, so the guard also judges on photos calibration never saw.
"""
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MIN_VIEWS = 500  # the guard's floor


@dataclass
class View:
    photo: str  # the photo's file name
    index: int
    payload: bytes  # a JPEG request body
    held_out: bool  # the photo is not in the calibration part


def read_photos(folder: str | Path) -> dict[str, Image.Image]:
    """Every image file of `folder` (sorted by name) as upright RGB; at least two are needed (one held out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"calibration folder not found: {folder}")
    photos = {}
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            photos[path.name] = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"calibration photo {path} cannot be read: {err}") from None
    if len(photos) < 2:
        raise ValueError(f"{folder} holds {len(photos)} photo(s); the guard needs at least 2 (one is held out of "
                         "calibration); a handful of your own photos is enough, the views are made from them")
    return photos


def held_out_names(names: list[str]) -> set[str]:
    """Every third photo by name (at least one) is held out of calibration."""
    names = sorted(names)
    return set(names[2::3]) or {names[-1]}


def photo_views(name: str, image: Image.Image, per_photo: int) -> list[bytes]:
    rng = np.random.default_rng(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
    out = []
    w, h = image.size
    for index in range(per_photo):
        view = image
        if index:
            area = rng.uniform(0.3, 1.0) * w * h
            aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = min(w, round(math.sqrt(area * aspect))), min(h, round(math.sqrt(area / aspect)))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            view = image.crop((x, y, x + cw, y + ch))
            if rng.random() < 0.5:
                view = ImageOps.mirror(view)
            side = rng.uniform(160, 640)
            scale = side / min(view.size)
            view = view.resize((max(1, round(view.size[0] * scale)), max(1, round(view.size[1] * scale))),
                               Image.BICUBIC)
        buf = io.BytesIO()
        view.save(buf, format="JPEG", quality=int(rng.integers(85, 96)))
        out.append(buf.getvalue())
    return out


def make_views(photos: dict[str, Image.Image], total: int = 600) -> list[View]:
    """At least `total` views (never under MIN_VIEWS), spread evenly over the photos."""
    total = max(total, MIN_VIEWS)
    per_photo = math.ceil(total / len(photos))
    held = held_out_names(list(photos))
    return [View(name, i, payload, name in held)
            for name in sorted(photos) for i, payload in enumerate(photo_views(name, photos[name], per_photo))]
