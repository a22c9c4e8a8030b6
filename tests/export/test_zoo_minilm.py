"""export/zoo/minilm.py, what `make archives` runs for the text archives: the fine-tuning (here on a few messages
and one epoch, so it takes seconds; the full run's held-out quality is in docs/handlers.md) and the archive it
goes into, with its golden texts verified and the bench and calibration texts written."""
import json
import zipfile

import pytest

from export.archive import build_archive
from export.verify import verify_archive
from export.zoo.minilm import fine_tune_spam, spam_spec, write_bench_texts
from export.zoo.text import LABELS, load_split


@pytest.mark.slow  # a MiniLM fine-tuning step and an ONNX export
def test_a_fine_tuned_minilm_becomes_a_verified_archive(tmp_path):
    folder = fine_tune_spam(tmp_path, load_split()[0][:48], epochs=1)
    mar = build_archive(spam_spec(folder, tmp_path / "store"))
    report = verify_archive(mar)
    assert report.passed, str(report)
    with zipfile.ZipFile(mar) as zf:
        assert json.loads(zf.read("tskit-transformer.json"))["labels"] == LABELS


def test_bench_and_calibration_texts(tmp_path):
    calibration, sms, long = write_bench_texts(tmp_path, count=8, words=120)
    lines = calibration.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 300 and all(line.strip() for line in lines)
    assert len(list(sms.iterdir())) == 8
    assert all(len(p.read_text(encoding="utf-8").split()) == 120 for p in long.iterdir())
