"""Explanations of transformer_classifier (handlers/transformer_explain.py): attributions per word of the text as
sent, on the word embeddings each architecture has (found, not configured), several texts in one batch each
explained as alone, a requested target, a bad target answered alone; a compiled archive explains with the weights
`--explain-weights` shipped, and answers 501 saying how to get them without."""
import sys

import pytest
import torch

from export.archive import ArchiveSpec, build_archive
from handlers.transformer_classifier import TransformerClassifier
from tests.hf_models import LABELS
from tskit.cli import main
from tskit.testing import load_handler, run_batch, unpack_archive

TEXTS = ["Call now to WIN a free prize!!", "ok",
         "emoji 😀🎉 and CJK 你好世界 and right-to-left مرحبا שלום, then a few more words to pad it out"]
EXPLAIN = {"explain": "True"}
STEPS = {"handler": {"explain_steps": 16}}


def explain(handler, bodies: list) -> list:
    return run_batch(handler, [{"body": b} for b in bodies], [EXPLAIN] * len(bodies))


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "xlmr"])  # distilbert's is multi-label
def test_words_of_a_batch_are_explained_as_each_text_alone(arch, transformer_archive):
    handler = load_handler(TransformerClassifier, transformer_archive(arch, "eager"), yaml_overrides=STEPS)
    together = explain(handler, [t.encode() for t in TEXTS])
    alone = [explain(handler, [t.encode()])[0] for t in TEXTS]
    predicted = [run_batch(handler, [{"body": t.encode()}])[0][1] for t in TEXTS]
    for text, (status, answer), (_, single), top in zip(TEXTS, together, alone, predicted):
        assert status == 200, answer
        assert answer["target"] == next(iter(top)) and answer["method"] == "integrated_gradients"
        # the prediction's probability: a sigmoid for the multi-label model, a softmax for the others
        assert answer["probability"] == pytest.approx(top[answer["target"]], rel=1e-4)
        words = [w for w, _ in answer["words"]]
        position = 0
        for word in words:  # every word is the text as sent, in order
            found = text.index(word, position)
            position = found + len(word)
        assert words and all(w and w == w.strip() for w in words), (words, text)
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


def test_saliency_and_passes_bounded_by_explain_batch_tokens(transformer_archive):
    """Saliency answers |gradient| per word; a token budget of 1 explains every text in passes of its own (2 IG steps
    each) with the scores of one pass over the whole batch."""
    archive = transformer_archive("bert", "eager")
    bodies = [t.encode() for t in TEXTS]
    saliency = explain(load_handler(TransformerClassifier, archive,
                                    yaml_overrides={"handler": {"explain_method": "saliency"}}), bodies)
    whole = explain(load_handler(TransformerClassifier, archive, yaml_overrides=STEPS), bodies)
    passes = explain(load_handler(TransformerClassifier, archive,
                                  yaml_overrides={"handler": {"explain_steps": 16, "explain_batch_tokens": 1}}), bodies)
    for (status, s), (_, w), (_, p) in zip(saliency, whole, passes):
        assert status == 200 and s["method"] == "saliency" and all(score >= 0 for _, score in s["words"])
        assert [x for x, _ in s["words"]] == [x for x, _ in w["words"]] == [x for x, _ in p["words"]]
        assert all(abs(a[1] - b[1]) <= 1e-4 * (1 + abs(b[1])) for a, b in zip(p["words"], w["words"]))


def test_a_compiled_archive_explains_with_shipped_weights_and_says_how_without(hf_folders, transformer_archive,
                                                                              tmp_path, monkeypatch):
    without = load_handler(TransformerClassifier, transformer_archive("roberta", "onnx"), yaml_overrides=STEPS)
    [(status, answer)] = explain(without, [TEXTS[0].encode()])
    assert status == 501 and "--explain-weights" in answer["message"], answer
    folder, store = str(hf_folders["roberta"]), str(tmp_path / "store")
    assert main(["build", "roberta_explained", "--handler", "transformer_classifier", "--model-dir", folder,
                 "--format", "onnx", "--explain-weights", folder, "--export-path", store]) == 0
    mar = tmp_path / "store" / "roberta_explained.mar"
    shipped = load_handler(TransformerClassifier, unpack_archive(mar, tmp_path / "unpacked"), yaml_overrides=STEPS)
    eager = load_handler(TransformerClassifier, transformer_archive("roberta", "eager"), yaml_overrides=STEPS)
    [(status, answer)] = explain(shipped, [TEXTS[0].encode()])
    [(_, reference)] = explain(eager, [TEXTS[0].encode()])
    assert status == 200 and [w for w, _ in answer["words"]] == [w for w, _ in reference["words"]]
    assert all(abs(a[1] - b[1]) <= 1e-3 * (1 + abs(b[1])) for a, b in zip(answer["words"], reference["words"]))
    # a worker without transformers still serves predictions, and says what explanations need
    lacking = load_handler(TransformerClassifier, unpack_archive(mar, tmp_path / "again"), yaml_overrides=STEPS)
    monkeypatch.setitem(sys.modules, "transformers", None)
    [(status, answer)] = explain(lacking, [TEXTS[0].encode()])
    assert status == 501 and "transformers" in answer["message"], answer
    assert run_batch(lacking, [{"body": TEXTS[0].encode()}])[0][0] == 200


def test_explain_weights_that_cannot_explain_are_refused_before_the_export(hf_folders, tmp_path):
    def build(fmt: str, weights, **more) -> None:
        build_archive(ArchiveSpec("refused", None, handler="transformer_classifier", model_dir=str(hf_folders["bert"]),
                                  model_format=fmt, explain_weights=str(weights), export_path=str(tmp_path), **more))

    with pytest.raises(ValueError, match="--explain-model-file is for an eager state_dict"):
        build("onnx", hf_folders["bert"], explain_model_file=__file__)
    with pytest.raises(ValueError, match="drop --explain-weights"):
        build("eager", hf_folders["bert"])
    with pytest.raises(ValueError, match="give the Hugging Face folder"):
        build("torchscript", tmp_path)
    with pytest.raises(ValueError, match="other labels than --model-dir"):
        build("openvino", hf_folders["roberta"])
    assert not list(tmp_path.glob("*.mar"))
