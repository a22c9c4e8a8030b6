"""The guard's views: enough of them from a handful of photos, the same every time, some photos held out."""
import io
import shutil

import pytest
from PIL import Image

from export.views import MIN_VIEWS, held_out_names, make_views, read_photos
from export.zoo import sample_photos


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name, path in sample_photos().items():
        shutil.copy(path, folder / name)
    return read_photos(folder)


def test_a_handful_of_photos_gives_at_least_500_views(photos):
    views = make_views(photos, total=100)  # asked for fewer: the guard's floor wins
    assert len(views) >= MIN_VIEWS and {v.photo for v in views} == set(photos)
    sizes = {Image.open(io.BytesIO(v.payload)).size for v in views[:50]}
    assert len(sizes) > 10  # crops and scales differ
    assert all(Image.open(io.BytesIO(v.payload)).format == "JPEG" for v in views[:20])


def test_views_are_the_same_every_time(photos):
    assert [v.payload for v in make_views(photos)] == [v.payload for v in make_views(photos)]


def test_every_third_photo_is_held_out_of_calibration(photos):
    views = make_views(photos)
    held = {v.photo for v in views if v.held_out}
    assert held == held_out_names(list(photos)) and 0 < len(held) < len(photos)


def test_one_photo_is_not_enough(tmp_path, photos):
    next(iter(photos.values())).save(tmp_path / "only.png")
    with pytest.raises(ValueError, match="at least 2"):
        read_photos(tmp_path)
