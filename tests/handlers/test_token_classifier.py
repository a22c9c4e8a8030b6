"""token_classifier on Hugging Face token-classification folders (tests/hf_models.py) as a worker runs it: the
entities `transformers`' pipeline finds with aggregation "simple" (types, spans, scores), whichever texts share
the batch, each placed by character offsets in the text as sent; cut texts answered; bad bodies a JSON 4xx."""
import json

import pytest
import torch

from export.formats import TRANSFORMER_FORMATS
from export.optimize.guard import Thresholds, entity_guard
from handlers.entities import TokenLogits
from handlers.token_classifier import TokenClassifier
from tests.handlers.conftest import archive_builder
from tests.hf_models import ENTITY_LABELS, build_token_folder, reference_entities
from tskit.testing import load_handler, run_batch, run_envelope

TEXTS = [
    "Call 07781 482 910 now to WIN £1000 cash, see www.prize-now.com",
    "ok",
    "emoji 😀🎉 and CJK 你好世界 and right-to-left مرحبا بالعالم שלום עולם",
    "see you at lunch tomorrow, the meeting moved to 3pm and Anna will bring the slides",
]


@pytest.fixture(scope="session")
def token_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-tokens")
    return {arch: build_token_folder(arch, root) for arch in ("bert", "roberta", "xlmr")}


@pytest.fixture(scope="session")
def token_archive(token_folders, tmp_path_factory):
    return archive_builder(token_folders, "token_classifier", tmp_path_factory)


def entities(handler, texts: list[str]) -> list[list[dict]]:
    results = run_batch(handler, [{"body": text.encode()} for text in texts])
    assert all(status == 200 for status, _ in results), results
    return [answer for _, answer in results]


def spans(found: list[dict]) -> list[tuple]:
    return [(e["entity_group"], e["start"], e["end"]) for e in found]


@pytest.mark.parametrize("arch, fmt", [("bert", fmt) for fmt in TRANSFORMER_FORMATS] + [("roberta", "onnx"), ("xlmr", "onnx")])
def test_entities_equal_the_pipelines_whoever_shares_the_batch(arch, fmt, token_folders, token_archive):
    handler = load_handler(TokenClassifier, token_archive(arch, fmt), batch_size=8)
    texts = [t for t in TEXTS if not handler.tokenizer.encode(t).truncated]  # the pipeline does not cut a text
    assert len(texts) >= 3
    expected = reference_entities(token_folders[arch], texts)
    together = entities(handler, texts)
    alone = [entities(handler, [text])[0] for text in texts]
    assert sum(map(len, expected)) > 10, "random weights that find no entities would test nothing"
    for text, want, got, single in zip(texts, expected, together, alone):
        assert spans(got) == spans(want) == spans(single), text
        for ours, theirs, lone in zip(got, want, single):
            assert abs(ours["score"] - theirs["score"]) <= 1e-3 and abs(ours["score"] - lone["score"]) <= 1e-5
            assert ours["word"] == text[ours["start"]:ours["end"]], "a word is the text as sent between its offsets"


def test_offsets_place_entities_in_the_original_string_whatever_the_script(token_archive):
    """Emoji (outside the BMP), CJK and right-to-left text: every offset is a Python string index of the text as
    sent, for WordPiece, byte-level BPE and SentencePiece alike."""
    for arch in ("bert", "roberta", "xlmr"):
        handler = load_handler(TokenClassifier, token_archive(arch, "onnx"))
        [found] = entities(handler, [TEXTS[2]])
        assert found and all(0 <= e["start"] <= e["end"] <= len(TEXTS[2]) for e in found)
        assert all(e["word"] == TEXTS[2][e["start"]:e["end"]] for e in found)
        # in text order; byte-level BPE splits one emoji or CJK character into tokens that each span all of it
        assert all(a["start"] <= b["start"] and a["end"] <= b["end"] for a, b in zip(found, found[1:]))


def test_a_long_text_is_cut_and_its_entities_stay_inside_the_kept_part(token_archive):
    handler = load_handler(TokenClassifier, token_archive("bert", "onnx"))
    text = "call 0777 123 456 now " * 60
    [found] = entities(handler, [text])
    kept = handler.tokenizer.encode(text).offsets[-2][1]  # the last token before [SEP]
    assert found and max(e["end"] for e in found) <= kept < len(text)


@pytest.mark.parametrize("body, status, message", [
    (b"", 400, "empty"),
    (b"\xff\xfe not UTF-8", 400, "not valid UTF-8"),
    ([1, 2, 3], 400, "expected text"),
])
def test_bad_bodies_are_a_json_4xx_and_the_neighbours_are_answered(body, status, message, token_archive):
    handler = load_handler(TokenClassifier, token_archive("bert", "onnx"))
    results = run_batch(handler, [{"body": TEXTS[0].encode()}, {"body": body}, {"body": {"text": TEXTS[3]}}])
    assert results[1][0] == status and message in results[1][1]["message"], results[1]
    assert results[0][0] == results[2][0] == 200 and isinstance(results[0][1], list)


def test_ignore_labels_keeps_what_the_config_asks_for(token_archive):
    """`ignore_labels: []` answers the O runs too; the default drops them."""
    root = token_archive("bert", "onnx")
    default = entities(load_handler(TokenClassifier, root), TEXTS[:1])[0]
    everything = entities(load_handler(TokenClassifier, root, yaml_overrides={"handler": {"ignore_labels": []}}),
                          TEXTS[:1])[0]
    assert "O" not in {e["entity_group"] for e in default} and "O" in {e["entity_group"] for e in everything}
    assert set(spans(default)) < set(spans(everything))


def test_kserve_v2_answers_each_texts_entities_as_json_bytes(token_archive):
    handler = load_handler(TokenClassifier, token_archive("bert", "onnx"))
    plain = entities(handler, TEXTS[:2])
    request = {"id": "r1", "inputs": [{"name": f"t{i}", "shape": [1], "datatype": "BYTES", "data": [text]}
                                      for i, text in enumerate(TEXTS[:2])]}
    status, body = run_envelope(handler, "kservev2", request)
    assert status == 200
    assert [spans(json.loads(o["data"][0])) for o in body["outputs"]] == [spans(p) for p in plain]


def test_drift_watches_entities_and_token_confidence(token_archive):
    handler = load_handler(TokenClassifier, token_archive("bert", "onnx"))
    batch = handler.collate([handler.decode({"body": t.encode()}) for t in TEXTS])
    names, values = handler.drift_output_features(handler.forward(batch))
    assert names == ["entities", "token_top1_probability"] and values.shape == (len(TEXTS), 2)
    assert ((values[:, 1] > 1 / len(ENTITY_LABELS)) & (values[:, 1] <= 1)).all()


def test_the_entity_guard_refuses_a_candidate_that_moves_entities(token_archive):
    """optimize's guard for token classifiers: the same logits agree fully; logits that relabel a tenth of the
    tokens lose entities and are refused at the default 98% entity F1."""
    handler = load_handler(TokenClassifier, token_archive("bert", "onnx"))
    items = [handler.decode({"body": t.encode()}) for t in TEXTS * 5]
    reference = handler.forward(handler.collate(items))
    same = entity_guard(reference, reference, None, ENTITY_LABELS)
    assert same.f1 == 1.0 and same.token_agreement == 1.0 and same.refusal(Thresholds()) is None
    generator = torch.Generator().manual_seed(0)
    moved = []
    for row in reference:
        row = row.clone()
        flip = torch.rand(len(row), generator=generator) < 0.1
        row[flip] = row[flip].roll(1, dims=-1)
        moved.append(row)
    result = entity_guard(reference, TokenLogits(moved, reference.items), None, ENTITY_LABELS)
    assert result.f1 < 0.98 and "entity agreement" in result.refusal(Thresholds())
