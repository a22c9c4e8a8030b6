"""Every archive the project builds carries golden cases, and `tskit verify` replays them."""
import pytest

from export.verify import verify_archive
from export.zoo.detection import build_detector_archive
from export.zoo.tabular import build_tabular_archive
from export.zoo.text import build_text_archive


@pytest.mark.parametrize("build", [build_tabular_archive, build_text_archive, build_detector_archive],
                         ids=["tabular", "text", "detector"])
def test_trained_archives_verify_with_golden_cases(build, tmp_path):
    mar = build(str(tmp_path / "store"), tmp_path / "work")
    report = verify_archive(mar)
    assert report.passed, str(report)
    assert str(report).count("ok    in-process") >= 3
