"""The default token-classification archive, `sms_entities_minilm`: all-MiniLM-L6-v2 fine-tuned here to find phone
numbers, amounts of money and web addresses in the SMS Spam Collection (the spam models' data and split,
export/zoo/text.py). The labels are derived from the texts by the patterns in `PATTERNS` (no one labelled them by
hand): the model learns to find what they find, and its held-out entity F1 says how closely it does.

    python -m export.zoo.sms_entities --export-path build        # what `make entities` runs; prints held-out F1
"""
import argparse
import random
import re
import tempfile
import time
from pathlib import Path

import torch

from export.archive import ArchiveSpec, build_archive
from export.hugging_face import quiet_transformers
from export.zoo.minilm import ARCHIVE_CONFIG, FORMAT, fine_tune_in_length_buckets, minilm_folder
from export.zoo.text import golden_texts, load_split, training_texts

NAME = "sms_entities_minilm"
SEED = 0
EPOCHS = 3
LR = 1e-4
# one message in eight has an entity: those are repeated and the rest sampled, so the model sees entities often
# enough to learn them (measured: all messages once, 2 epochs, held-out F1 0.36)
ENTITY_REPEAT = 3
PLAIN_MESSAGES = 1500
TRAIN_MAX_TOKENS = 128
# entity type: the pattern that finds it (case-insensitive); UK numbers, £/$/€ amounts and prices in pence, web
# addresses with or without www. (a trailing full stop or bracket is not part of one)
PATTERNS = {
    "PHONE": r"(?<![\w£$.])(?:\+44\s?|0)\d{3,4}[ -]?\d{3}[ -]?\d{3,4}(?!\w)",
    "MONEY": r"[£$€]\s?\d+(?:[.,]\d+)*(?:k\b)?|(?<![\w.])\d+(?:\.\d+)?p(?!\w)",
    "URL": r"(?:https?://|www\.)[^\s,]*[^\s,.!?)]|(?<![\w@.])[a-z0-9-]+\.(?:com|co\.uk|net|org|biz|info)"
           r"(?:/[^\s,]*[^\s,.!?)])?(?!\w)",
}
LABELS = ["O"] + [f"{bi}-{kind}" for kind in PATTERNS for bi in "BI"]


def find_entities(text: str) -> list[tuple[str, int, int]]:
    """(type, start, end) of every pattern match in `text`, in order; a match overlapping an earlier one is left
    out."""
    found = sorted((m.start(), m.end(), kind) for kind, pattern in PATTERNS.items()
                   for m in re.finditer(pattern, text, re.IGNORECASE))
    kept: list[tuple[str, int, int]] = []
    for start, end, kind in found:
        if not kept or start >= kept[-1][2]:
            kept.append((kind, start, end))
    return kept


def token_labels(offsets: list[tuple[int, int]], special: list[int], entities: list[tuple[str, int, int]]) -> list[int]:
    """BIO label ids per token (-100 for special tokens: no loss): a token inside an entity's span is its B- if it
    is the entity's first token, else its I-."""
    labels, open_entity = [], None
    for (start, end), is_special in zip(offsets, special):
        if is_special:
            labels.append(-100)
            continue
        inside = next((e for e in entities if start < e[2] and end > e[1]), None)
        if inside is None:
            labels.append(0)
        else:
            labels.append(LABELS.index(f"{'I' if inside == open_entity else 'B'}-{inside[0]}"))
        open_entity = inside
    return labels


def training_mix(texts: list[str]) -> list[str]:
    """The messages with an entity ENTITY_REPEAT times, and PLAIN_MESSAGES of the others, seeded."""
    with_entities = [t for t in texts if find_entities(t)]
    plain = [t for t in texts if not find_entities(t)]
    return with_entities * ENTITY_REPEAT + random.Random(SEED).sample(plain, min(PLAIN_MESSAGES, len(plain)))


def fine_tune(out_dir: str | Path, texts: list[str] | None = None, epochs: int = EPOCHS) -> Path:
    """MiniLM with a token-classification head over LABELS, fine-tuned on `texts` (default: the training split's
    `training_mix`) labelled by `find_entities`; saved as a Hugging Face folder."""
    transformers = quiet_transformers()

    texts = texts if texts is not None else training_mix([t for t, _ in load_split()[0]])
    source = minilm_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    names = {"id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}}
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model = transformers.AutoModelForTokenClassification.from_pretrained(source, num_labels=len(LABELS), **names)
    rows = []
    for text in texts:
        encoded = tokenizer(text, truncation=True, max_length=TRAIN_MAX_TOKENS, return_offsets_mapping=True,
                            return_special_tokens_mask=True)
        rows.append((encoded["input_ids"], token_labels(encoded["offset_mapping"], encoded["special_tokens_mask"],
                                                         find_entities(text))))

    def loss(padded, batch: list[int]) -> torch.Tensor:
        targets = torch.full(padded["input_ids"].shape, -100, dtype=torch.long)  # -100: padding, no loss
        for row, i in enumerate(batch):
            targets[row, :len(rows[i][1])] = torch.tensor(rows[i][1])
        return model(**padded, labels=targets).loss

    return fine_tune_in_length_buckets(model, tokenizer, [ids for ids, _ in rows], loss, epochs, LR,
                                       Path(out_dir) / NAME)


def held_out_f1(folder: Path, texts: list[str]) -> dict:
    """Entity F1 on `texts` against `find_entities`: an entity counts when its type, start and end all equal a
    pattern match's, grouped as the handler answers (handlers/entities.py)."""
    from handlers.entities import group_entities
    from handlers.tokens import TokenItem

    transformers = quiet_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForTokenClassification.from_pretrained(folder).eval()
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    both = found = expected = 0
    with torch.inference_mode():
        for text in texts:
            encoded = tokenizer(text, truncation=True, max_length=256, return_offsets_mapping=True,
                                return_special_tokens_mask=True)
            logits = model(input_ids=torch.tensor([encoded["input_ids"]])).logits[0]
            item = TokenItem(encoded["input_ids"], [], False, 0, text, encoded["offset_mapping"], [],
                             encoded["special_tokens_mask"])
            ours = {(e.entity_group, e.start, e.end) for e in group_entities(logits.softmax(-1), item, labels, {"O"})}
            truth = set(find_entities(text))
            both, found, expected = both + len(ours & truth), found + len(ours), expected + len(truth)
    precision, recall = both / max(found, 1), both / max(expected, 1)
    return {"f1": 2 * precision * recall / max(precision + recall, 1e-9), "precision": precision, "recall": recall,
            "entities": expected, "texts": len(texts)}


def entities_spec(folder: Path, export_path: str | Path, fmt: str = FORMAT) -> ArchiveSpec:
    return ArchiveSpec(NAME, None, handler="token_classifier", model_dir=str(folder), model_format=fmt,
                       export_path=str(export_path), config=dict(ARCHIVE_CONFIG), golden_inputs=golden_texts(),
                       reference_inputs=training_texts())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export-path", default="model_store")
    parser.add_argument("--format", default=FORMAT, choices=("eager", "torchscript", "onnx", "openvino"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        folder = fine_tune(tmp)
        trained_s = time.monotonic() - start
        quality = held_out_f1(folder, [t for t, _ in load_split()[1]])
        print(f"{NAME}: fine-tuned in {trained_s:.0f} s on {torch.get_num_threads()} threads; held out "
              f"({quality['texts']} messages, {quality['entities']} entities): entity F1 {quality['f1']:.3f} "
              f"(precision {quality['precision']:.3f}, recall {quality['recall']:.3f})")
        print(build_archive(entities_spec(folder, args.export_path, args.format)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
