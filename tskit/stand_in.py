"""Stand-in models for testing a handler before a trained model exists (`tskit.testing.stand_in_archive`).

For each task a small model of the right shape with random (seeded) weights, the files that task's archive
carries (labels, vocabulary, schema), the handler settings that suit it, and a valid request. Answers are
well-formed but mean nothing: a handler's logic (decoding, batching, the answer's shape, bad input) can be
tested with it; its accuracy only with the real model.
"""
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from handlers.tasks import stand_in_tasks

STAND_INS = Path(__file__).resolve().parent / "stand_ins"
ZOO = Path(__file__).resolve().parents[1] / "export" / "zoo"
ROW_FEATURES = 30  # export/zoo/tabular_mlp.py's default width
TEXT_LABELS = ["ham", "spam"]
TEXT_WORDS = ["free", "prize", "call", "now", "see", "you", "at", "lunch", "win", "cash", "meeting", "tomorrow"]


@dataclass
class StandIn:
    serialized_file: str | None
    model_file: str | None
    labels: str | None = None
    extra_files: list[str] = field(default_factory=list)
    handler_config: dict = field(default_factory=dict)
    model_dir: str | None = None  # a Hugging Face folder, for the transformer tasks


def _weights(model: torch.nn.Module, path: Path) -> str:
    torch.save(model.state_dict(), path)
    return str(path)


def _module(path: Path):
    from handlers.loading import load_module_class

    return load_module_class(str(path))


def stand_in_files(task: str, work_dir: str | Path) -> StandIn:
    """Write a stand-in model for `task` (one of handlers.tasks.stand_in_tasks()) and its task files into `work_dir`."""
    if task not in stand_in_tasks():
        raise ValueError(f"no stand-in for {task!r}; choose one of {stand_in_tasks()}")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if task in ("image_classifier", "object_detector"):
        model_file = STAND_INS / ("tiny_cnn.py" if task == "image_classifier" else "tiny_fcos.py")
        cls = _module(model_file)
        names = [f"class {i}" for i in range(10 if task == "image_classifier" else 3)]
        labels = work / "index_to_name.json"
        labels.write_text(json.dumps({str(i): name for i, name in enumerate(names)}))
        config = {"min_size": 128, "max_size": 256, "score_threshold": 0.05} if task == "object_detector" else {}
        return StandIn(_weights(cls(), work / "stand_in.pt"), str(model_file), str(labels), handler_config=config)
    if task in ("transformer_classifier", "sentence_embedder", "token_classifier"):  # each reads what it needs
        return StandIn(None, None, model_dir=str(tiny_bert_folder(work / "hf")))
    if task == "text_classifier":
        model_file = ZOO / "text_cnn.py"
        tokens = {"<pad>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(TEXT_WORDS)}}
        vocab = work / "vocab.json"
        vocab.write_text(json.dumps({"lowercase": True, "token_pattern": r"[a-z0-9']+", "pad_id": 0, "unk_id": 1,
                                     "max_length": 64, "labels": TEXT_LABELS, "tokens": tokens}))
        model = _module(model_file)(vocab_size=len(tokens), num_classes=len(TEXT_LABELS))
        return StandIn(_weights(model, work / "stand_in.pt"), str(model_file), extra_files=[str(vocab)])
    model_file = ZOO / "tabular_mlp.py"  # tensor, and the base template's rows of numbers
    schema = work / "tensor_schema.json"
    schema.write_text(json.dumps({"shape": [ROW_FEATURES], "dtype": "float32", "labels": ["a", "b"], "max_rows": 16}))
    return StandIn(_weights(_module(model_file)(), work / "stand_in.pt"), str(model_file),
                   extra_files=[str(schema)] if task == "tensor" else [])


def stand_in_request(task: str) -> dict:
    """A request the stand-in of `task` answers, as TorchServe hands it to the handler."""
    if task in ("image_classifier", "object_detector"):
        from PIL import Image

        buf = io.BytesIO()
        Image.linear_gradient("L").convert("RGB").resize((320, 240)).save(buf, format="PNG")
        return {"body": buf.getvalue()}
    if task in ("text_classifier", "transformer_classifier", "sentence_embedder", "token_classifier"):
        return {"body": "Call now to win a free prize".encode()}
    return {"body": [round(0.1 * i, 1) for i in range(ROW_FEATURES)]}


def tiny_bert_folder(out: Path) -> Path:
    """A Hugging Face folder as users bring one: a 2-layer BERT sequence classifier (ham/spam) and its WordPiece
    tokenizer over TEXT_WORDS, written by `save_pretrained`."""
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(special + TEXT_WORDS)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = transformers.BertTokenizer(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                           cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64,
                                     id2label=dict(enumerate(TEXT_LABELS)),
                                     label2id={n: i for i, n in enumerate(TEXT_LABELS)})
    transformers.BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
