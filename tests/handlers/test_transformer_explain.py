"""Explanations of transformer_classifier (handlers/transformer_explain.py): attributions per word of the text as
sent, on the word embeddings each architecture has (found, not configured), several texts in one batch each
explained as alone, a requested target, a bad target answered alone; a compiled archive explains with the weights
`--explain-weights` shipped, and answers 501 saying how to get them without."""
import pytest
import torch

from export.archive import ArchiveSpec, build_archive
from handlers.transformer_classifier import TransformerClassifier
from tests.hf_models import LABELS
from tskit.testing import load_handler, run_batch, unpack_archive

TEXTS = ["Call now to WIN a free prize!!", "ok",
         "emoji 😀🎉 and CJK 你好世界 and right-to-left مرحبا שלום, then a few more words to pad it out"]
EXPLAIN = {"explain": "True"}
STEPS = {"handler": {"explain_steps": 16}}


def explain(handler, bodies: list) -> list:
    return run_batch(handler, [{"body": b} for b in bodies], [EXPLAIN] * len(bodies))


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_words_of_a_batch_are_explained_as_each_text_alone(arch, transformer_archive):
    handler = load_handler(TransformerClassifier, transformer_archive(arch, "eager"), yaml_overrides=STEPS)
    together = explain(handler, [t.encode() for t in TEXTS])
    alone = [explain(handler, [t.encode()])[0] for t in TEXTS]
    predicted = [run_batch(handler, [{"body": t.encode()}])[0][1] for t in TEXTS]
    for text, (status, answer), (_, single), top in zip(TEXTS, together, alone, predicted):
        assert status == 200, answer
        assert answer["target"] == next(iter(top)) and answer["method"] == "integrated_gradients"
        words = [w for w, _ in answer["words"]]
        position = 0
        for word in words:  # every word is the text as sent, in order
            found = text.index(word, position)
            position = found + len(word)
        assert words and all(words), (words, text)
        assert [w for w, _ in single["words"]] == words
        assert all(abs(a[1] - b[1]) <= 1e-4 * (1 + abs(b[1])) for a, b in zip(answer["words"], single["words"]))
        assert answer["top_words"] == sorted((w for w in answer["words"] if w[1] > 0), key=lambda w: -w[1])[:5]


def test_integrated_gradients_add_up_to_the_change_in_the_targets_logit(transformer_archive):
    """Completeness: the words' attributions sum to f(text) - f(baseline) for the target, the baseline being the text
    with its words' embeddings zeroed and its special tokens kept."""
    from handlers.transformer_explain import embeddings_forward

    handler = load_handler(TransformerClassifier, transformer_archive("bert", "eager"),
                           yaml_overrides={"handler": {"explain_steps": 128}})
    [(status, answer)] = explain(handler, [TEXTS[0].encode()])
    model = handler.explainer()
    layer = model.model.get_input_embeddings()
    batch = handler.collate([handler.decode({"body": TEXTS[0].encode()})])
    inputs = batch.inputs(handler.input_names)
    item = batch.items[0]
    with torch.no_grad():
        embeddings = layer(batch.input_ids)
        baseline = embeddings * torch.tensor(item.special, dtype=torch.float32)[None, :, None]  # words to zero
        change = model(*inputs)[0] - embeddings_forward(model, layer)(baseline, *inputs)[0]
    target = answer["target_index"]
    total = sum(s for _, s in answer["words"])
    assert status == 200 and abs(total - float(change[target])) < 0.05 * abs(float(change[target])) + 0.005, \
        (total, float(change[target]))


def test_a_requested_target_and_a_bad_one_answered_alone(transformer_archive):
    handler = load_handler(TransformerClassifier, transformer_archive("bert", "eager"), yaml_overrides=STEPS)
    results = run_batch(handler, [{"body": {"text": TEXTS[0], "target": "negative"}},
                                  {"body": {"text": TEXTS[1], "target": "no such label"}},
                                  {"body": {"text": TEXTS[2], "target": 2}}], [EXPLAIN] * 3)
    assert results[0][0] == 200 and results[0][1]["target"] == "negative"
    assert results[1][0] == 400 and "unknown explanation target" in results[1][1]["message"]
    assert results[2][0] == 200 and results[2][1]["target"] == LABELS["bert"][2]


def test_a_compiled_archive_explains_with_shipped_weights_and_says_how_without(hf_folders, transformer_archive,
                                                                              tmp_path):
    without = load_handler(TransformerClassifier, transformer_archive("roberta", "onnx"), yaml_overrides=STEPS)
    [(status, answer)] = explain(without, [TEXTS[0].encode()])
    assert status == 501 and "--explain-weights" in answer["message"], answer
    mar = build_archive(ArchiveSpec("roberta_explained", None, handler="transformer_classifier",
                                    model_dir=str(hf_folders["roberta"]), model_format="onnx",
                                    explain_weights=str(hf_folders["roberta"]), export_path=str(tmp_path / "store")))
    shipped = load_handler(TransformerClassifier, unpack_archive(mar, tmp_path / "unpacked"), yaml_overrides=STEPS)
    eager = load_handler(TransformerClassifier, transformer_archive("roberta", "eager"), yaml_overrides=STEPS)
    [(status, answer)] = explain(shipped, [TEXTS[0].encode()])
    [(_, reference)] = explain(eager, [TEXTS[0].encode()])
    assert status == 200 and [w for w, _ in answer["words"]] == [w for w, _ in reference["words"]]
    assert all(abs(a[1] - b[1]) <= 1e-3 * (1 + abs(b[1])) for a, b in zip(answer["words"], reference["words"]))
