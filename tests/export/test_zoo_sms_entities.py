"""export/zoo/sms_entities.py, what `make entities` runs: labels derived from the SMS texts by patterns, turned into
BIO labels per token, a short fine-tuning (a few messages, one epoch: seconds; the full run's held-out F1 is in
docs/handlers.md) and the archive it goes into, its golden texts verified."""
import json
import zipfile

import pytest

from export.archive import build_archive
from export.verify import verify_archive
from export.zoo.sms_entities import LABELS, entities_spec, find_entities, fine_tune, held_out_f1, token_labels
from export.zoo.text import load_split


def test_patterns_find_phone_numbers_amounts_and_web_addresses():
    text = "URGENT! Call 09061701461 or +447797706009 to claim £1,000 cash (150p/msg). See www.win-now.co.uk."
    found = [(kind, text[start:end]) for kind, start, end in find_entities(text)]
    assert found == [("PHONE", "09061701461"), ("PHONE", "+447797706009"), ("MONEY", "£1,000"),
                     ("MONEY", "150p"), ("URL", "www.win-now.co.uk")]
    assert find_entities("see you at 5 then, ok? 2 cups of tea") == []


def test_bio_labels_follow_the_tokens_of_each_entity():
    offsets = [(0, 0), (0, 4), (5, 7), (7, 10), (10, 12), (13, 16), (0, 0)]  # [CLS] call 09 ##061 ##70 now [SEP]
    entities = [("PHONE", 5, 12)]
    labels = [LABELS[i] if i >= 0 else None for i in token_labels(offsets, [1, 0, 0, 0, 0, 0, 1], entities)]
    assert labels == [None, "O", "B-PHONE", "I-PHONE", "I-PHONE", "O", None]
    two = token_labels([(0, 4), (5, 9)], [0, 0], [("MONEY", 0, 4), ("MONEY", 5, 9)])
    assert [LABELS[i] for i in two] == ["B-MONEY", "B-MONEY"], "a new entity starts with B- even right after one"


@pytest.mark.slow  # a MiniLM fine-tuning step and an ONNX export
def test_a_fine_tuned_minilm_becomes_a_verified_token_archive(tmp_path):
    texts = [t for t, _ in load_split()[0] if find_entities(t)][:12]
    folder = fine_tune(tmp_path, texts, epochs=1)
    quality = held_out_f1(folder, texts[:8])
    assert 0.0 <= quality["f1"] <= 1.0 and quality["entities"] >= 8
    mar = build_archive(entities_spec(folder, tmp_path / "store"))
    report = verify_archive(mar)
    assert report.passed, str(report)
    with zipfile.ZipFile(mar) as zf:
        description = json.loads(zf.read("tskit-transformer.json"))
    assert description["labels"] == LABELS and description["task"] == "token_classifier"
