"""transformer_classifier on Hugging Face folders of four families (tests/hf_models.py) in every format, as a worker
runs it: answers equal to what `transformers` computes for each text alone, whichever texts share the batch;
unknown tokens counted as the folder's tokenizer finds them (SentencePiece's too); texts past the model's maximum
cut and answered; bad bodies a JSON 4xx beside answered neighbours."""
import logging
import subprocess
import sys

import pytest

from export.archive import ArchiveSpec, build_archive
from export.formats import TRANSFORMER_FORMATS
from handlers.transformer_classifier import TransformerClassifier
from tests.hf_models import ARCHITECTURES, LABELS, build_folder, reference_probabilities
from tskit.testing import load_handler, run_batch, run_envelope, unpack_archive

TEXTS = [
    "Call now to WIN a free prize!!",
    "ok",
    "see you at lunch tomorrow, the meeting moved to 3pm and Anna will bring the slides we talked about",
    "emoji 😀🎉 and CJK 你好世界 and right-to-left مرحبا بالعالم שלום עולם",
    "word " * 200,  # past every model's 64 tokens: cut and answered
]


def answers(handler, texts: list[str]) -> list:
    results = run_batch(handler, [{"body": text.encode()} for text in texts])
    assert all(status == 200 for status, _ in results), results
    return [answer for _, answer in results]


@pytest.mark.parametrize("fmt", TRANSFORMER_FORMATS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_answers_equal_transformers_whoever_shares_the_batch(arch, fmt, hf_folders, transformer_archive):
    handler = load_handler(TransformerClassifier, transformer_archive(arch, fmt), batch_size=8)
    expected = reference_probabilities(hf_folders[arch], TEXTS, handler.tokenizer.max_length)
    together = answers(handler, TEXTS)
    alone = [answers(handler, [text])[0] for text in TEXTS]
    for text, want, got, single in zip(TEXTS, expected, together, alone):
        assert list(got) == sorted(want, key=want.get, reverse=True)[:len(got)], (text, want, got)
        for label, p in got.items():
            assert abs(p - want[label]) <= 1e-3, (arch, fmt, text[:40], label, p, want[label])
            assert abs(p - single[label]) <= 1e-5, "an answer depends on the texts beside it"
    assert len(together[0]) == min(5, len(LABELS[arch]))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_unknown_tokens_are_counted_as_the_folders_tokenizer_finds_them(arch, hf_folders, transformer_archive):
    """The drift statistics' unknown count uses the tokenizer's unknown id, a SentencePiece (Unigram) one's too,
    which `tokenizers` names only in its JSON."""
    import transformers

    handler = load_handler(TransformerClassifier, transformer_archive(arch, "onnx"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_folders[arch])
    counted = []
    for text in TEXTS[:4]:
        ids = tokenizer(text, truncation=True, max_length=handler.tokenizer.max_length)["input_ids"]
        counted.append(handler.decode({"body": text.encode()}).unknown)
        assert counted[-1] == ids.count(tokenizer.unk_token_id), (arch, text, counted[-1])
    assert arch not in ("bert", "xlmr") or sum(counted) > 0, "texts with characters the vocabulary lacks"


def test_a_long_text_is_cut_to_the_models_maximum_and_logged(transformer_archive, caplog):
    handler = load_handler(TransformerClassifier, transformer_archive("bert", "eager"))
    with caplog.at_level(logging.INFO, logger="handlers"):
        [(status, _)] = run_batch(handler, [{"body": ("word " * 500).encode()}])
    assert status == 200 and handler.tokenizer.max_length == 64
    assert "was cut to the model's 64 tokens" in caplog.text
    item = handler.decode({"body": b"word " * 500})
    assert len(item) == 64 and item.truncated


@pytest.mark.parametrize("body, status, message", [
    (b"", 400, "empty"),
    (b"   \n\t ", 400, "empty text"),
    (b"\xff\xfe not UTF-8", 400, "not valid UTF-8"),
    ({"words": "hi"}, 400, "JSON body must carry the text"),
    ([1, 2, 3], 400, "expected text"),
    (b"x" * 100001, 413, "the limit is 100000"),
])
def test_bad_bodies_are_a_json_4xx_and_the_neighbours_are_answered(body, status, message, transformer_archive):
    handler = load_handler(TransformerClassifier, transformer_archive("roberta", "onnx"))
    results = run_batch(handler, [{"body": b"a fine text"}, {"body": body}, {"body": {"text": "another one"}}])
    assert results[1][0] == status and message in results[1][1]["message"], results[1]
    assert results[0][0] == results[2][0] == 200 and set(results[0][1]) == set(LABELS["roberta"])


def test_an_eager_archive_refuses_a_worker_without_transformers_naming_it(transformer_archive, tmp_path):
    """The eager format needs `transformers` in the worker: a Python without it refuses at load, naming it."""
    blocker = tmp_path / "site" / "transformers"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'transformers'\", "
                                         "name='transformers')\n")
    code = ("import sys; sys.path.insert(0, sys.argv[2])\n"
            "from export.inprocess import load_handler\n"
            "from handlers.transformer_classifier import TransformerClassifier\n"
            "load_handler(TransformerClassifier, sys.argv[1])\n")
    result = subprocess.run([sys.executable, "-c", code, str(transformer_archive("distilbert", "eager")),
                             str(tmp_path / "site")], capture_output=True, text=True)
    assert result.returncode != 0 and "transformers" in result.stderr.splitlines()[-1], result.stderr[-2000:]


def test_kserve_v1_instances_and_v2_bytes_inputs_answer_like_plain_requests(transformer_archive):
    import json

    handler = load_handler(TransformerClassifier, transformer_archive("bert", "openvino"))
    plain = answers(handler, TEXTS[:3])
    status, body = run_envelope(handler, "kserve", {"instances": [TEXTS[0], {"text": TEXTS[1]}, {"data": TEXTS[2]}]})
    assert status == 200
    for want, got in zip(plain, body["predictions"]):
        assert list(got) == list(want) and all(abs(got[k] - want[k]) <= 1e-5 for k in want)
    request = {"id": "r1", "inputs": [{"name": f"t{i}", "shape": [1], "datatype": "BYTES", "data": [text]}
                                      for i, text in enumerate(TEXTS[:2])]}
    status, body = run_envelope(handler, "kservev2", request)
    assert status == 200 and [list(json.loads(o["data"][0])) for o in body["outputs"]] == [list(a) for a in plain[:2]]


def test_a_drift_reference_of_texts_is_built_and_new_kinds_of_text_drift(hf_folders, tmp_path):
    """`--reference` texts give the archive its drift reference (tokens, unknown share, cut, top-1 probability);
    texts unlike them move the statistics."""
    from export.golden import GoldenInput

    reference = [GoldenInput(f"r{i}.txt", (f"message {i} " + "about lunch and meetings " * (i % 6)).encode())
                 for i in range(40)]
    mar = build_archive(ArchiveSpec("drifting", None, handler="transformer_classifier",
                                    model_dir=str(hf_folders["bert"]), model_format="onnx",
                                    export_path=str(tmp_path / "store"), reference_inputs=reference,
                                    config={"handler": {"drift_window": 16, "drift_min_count": 8, "drift_every": 8}}))
    handler = load_handler(TransformerClassifier, unpack_archive(mar, tmp_path / "unpacked"))
    assert handler.drift is not None
    for _ in range(2):
        answers(handler, [f"message {i} " + "about lunch and meetings " * (i % 6) for i in range(8)])
    calm = dict(zip(handler.drift.names, handler.drift.last))
    for _ in range(2):
        answers(handler, ["word " * 300] * 8)
    shifted = dict(zip(handler.drift.names, handler.drift.last))
    assert {"tokens", "unknown_rate", "truncated", "top1_probability"} <= set(calm), calm
    assert calm["tokens"] < handler.drift.threshold < shifted["tokens"] and shifted["truncated"] > calm["truncated"]


@pytest.mark.slow  # a transformers model padded to 150 tokens
def test_the_stock_style_baseline_answers_the_top_label(tmp_path):
    """`tskit bench`'s baseline for transformers (export/stock.py): the folder behind a handler written as
    TorchServe's example writes it, padding every text to 150 tokens."""
    import importlib.util

    from export.stock import build_stock_transformer_archive

    folder = build_folder("bert", tmp_path, positions=160)
    mar = build_stock_transformer_archive(folder, tmp_path / "store", "bert_stock")
    root = unpack_archive(mar, tmp_path / "unpacked")
    spec = importlib.util.spec_from_file_location("hf_sequence_classifier", root / "hf_sequence_classifier.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = load_handler(module.HFSequenceClassifier, root)
    expected = reference_probabilities(folder, TEXTS[:2], 150)
    results = run_batch(handler, [{"body": text.encode()} for text in TEXTS[:2]])
    assert [answer for _, answer in results] == [max(want, key=want.get) for want in expected]
