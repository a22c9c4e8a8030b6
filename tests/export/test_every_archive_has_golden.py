"""Every archive the project builds carries golden cases, and `tskit verify` replays them (the segmenter's in
tests/handlers/test_image_segmenter.py, the optimized one's in tests/export/test_optimize.py)."""
import pytest

from export.verify import verify_archive


@pytest.mark.parametrize("archive", ["default_mar"] + [pytest.param(name, marks=pytest.mark.slow)
                                                     for name in ("tabular_mar", "text_mar", "detector_mar")])
def test_trained_archives_verify_with_golden_cases(archive, request):
    report = verify_archive(request.getfixturevalue(archive))
    assert report.passed, str(report)
    assert str(report).count("ok    in-process") >= 3
