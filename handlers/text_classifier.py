"""Text classification: text in, `{label: probability}` for the top-k classes out.

The archive ships the tokenizer as `vocab.json` (next to the handler):

    {"lowercase": true, "token_pattern": "<regex>", "pad_id": 0, "unk_id": 1, "max_length": 256,
     "labels": ["ham", "spam"], "tokens": {"<pad>": 0, "<unk>": 1, "free": 2, ...}}

A text is lower-cased (if `lowercase`), split into the regex's matches, mapped to ids (`unk_id` for a
token not in `tokens`) and cut to `max_length` tokens. The training code uses `tokenize`/`encode` from
this module, so serving tokenizes exactly as training did.

Explanations: Integrated Gradients on the token embedding layer's output (the model still sees the ids, so
its padding mask is the real one), from an all-zero embedding; one score per token, in input order.
"""
import json
import os
import re

import torch

from handlers.base import TskitHandler
from handlers.errors import BadInput, ConfigError
from handlers.explain import EXPLAIN_CONFIG, attribute, embedding_forward, explain_valid, find_embedding, resolve_targets
from handlers.payload import request_text

TOP_TOKENS = 5  # how many of the tokens that argue most for the target an explanation lists
VOCAB_KEYS = ("lowercase", "token_pattern", "pad_id", "unk_id", "max_length", "labels", "tokens")


def tokenize(text: str, pattern: re.Pattern, lowercase: bool = True) -> list[str]:
    return pattern.findall(text.lower() if lowercase else text)


def encode(text: str, vocab: dict, pattern: re.Pattern) -> list[int]:
    """Token ids for `text`, cut to the vocabulary's `max_length`."""
    tokens = vocab["tokens"]
    unk = vocab["unk_id"]
    return [tokens.get(t, unk) for t in tokenize(text, pattern, vocab["lowercase"])][: vocab["max_length"]]


def read_vocab(path: str) -> tuple[dict, re.Pattern]:
    """vocab.json and its compiled token pattern; a missing or inconsistent file is a ConfigError."""
    if not os.path.isfile(path):
        raise ConfigError(f"vocabulary {os.path.basename(path)!r} not in the archive: build it with "
                          "--extra-files vocab.json (or set `vocab_file` in the handler config)")
    with open(path, encoding="utf-8") as f:
        vocab = json.load(f)
    missing = [k for k in VOCAB_KEYS if k not in vocab]
    if missing:
        raise ConfigError(f"{os.path.basename(path)} lacks {missing}; it needs {list(VOCAB_KEYS)}")
    try:
        pattern = re.compile(vocab["token_pattern"])
    except re.error as err:
        raise ConfigError(f"{os.path.basename(path)}: token_pattern is not a valid regex: {err}") from None
    if pattern.match("") is not None:
        raise ConfigError(f"{os.path.basename(path)}: token_pattern must not match the empty string")
    if vocab["pad_id"] == vocab["unk_id"] or int(vocab["max_length"]) < 1 or not vocab["labels"]:
        raise ConfigError(f"{os.path.basename(path)}: need pad_id != unk_id, max_length >= 1 and labels")
    return vocab, pattern


class TextClassifier(TskitHandler):
    config_defaults = {
        "topk": 5,
        "max_chars": 5000,  # longer texts get a 413
        "vocab_file": "vocab.json",
        **EXPLAIN_CONFIG,  # attributions per token, on the embedding layer's output
        "explain_steps": 32,
        "explain_layer": "",  # the token embedding module's name, when the model has several nn.Embedding
    }

    def setup(self, model_dir: str) -> None:
        if self.config["topk"] < 1 or self.config["max_chars"] < 1:
            raise ConfigError("handler config: topk and max_chars must be >= 1")
        self.vocab, self.pattern = read_vocab(os.path.join(model_dir, self.config["vocab_file"]))
        self.labels = list(self.vocab["labels"])
        self.pad_id = int(self.vocab["pad_id"])
        classes = self.forward(self.collate(self.example_items(1))).shape[-1]
        if classes != len(self.labels):
            raise ConfigError(f"the model has {classes} outputs but the vocabulary lists {len(self.labels)} labels")

    def decode(self, request: dict) -> torch.Tensor:
        text = request_text(request, self.config["max_chars"])
        ids = encode(text, self.vocab, self.pattern)
        if not ids:  # only possible with a pattern that skips some visible characters
            raise BadInput("the text has no tokens the model can read", kind="EmptyText")
        return torch.tensor(ids, dtype=torch.long)

    def collate(self, items: list) -> torch.Tensor:
        """Right-pad to the longest text of the batch; the model masks `pad_id`."""
        batch = torch.nn.utils.rnn.pad_sequence(items, batch_first=True, padding_value=self.pad_id)
        return self.to_model_input(batch)

    def respond(self, logits: torch.Tensor) -> list[dict]:
        probs = torch.softmax(logits.float(), dim=1)
        values, indices = probs.topk(min(self.config["topk"], probs.shape[1]), dim=1)
        return [{self.labels[i]: p for p, i in zip(v.tolist(), ix.tolist())}
                for v, ix in zip(values.cpu(), indices.cpu())]

    def drift_features(self, batch: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """Tokens per text (after the cut to max_length) and the share of them not in the vocabulary."""
        tokens = (batch != self.pad_id).sum(dim=1).float()
        unknown = (batch == int(self.vocab["unk_id"])).sum(dim=1).float()
        return ["tokens", "unknown_rate"], torch.stack([tokens, unknown / tokens.clamp_min(1)], dim=1)

    def explain_items(self, items: list, requests: list[dict]) -> list[dict]:
        """Per-token attributions to the target class (requested, else top-1), from an all-zero embedding
        baseline: `tokens` as [token, score] pairs in input order (positive = for the target), and the
        `top_tokens` that argue for it most."""
        method, steps = self.config["explain_method"], self.config["explain_steps"]
        model = self.explainer()
        layer = find_embedding(model, self.config["explain_layer"])
        forward = embedding_forward(model, layer)
        ids = self.collate(items)  # token ids keep their dtype whatever the serving precision
        with torch.inference_mode():
            embeddings = layer(ids)
            probs = torch.softmax(model(ids).float(), dim=1).cpu()

        def explain(ok: list[int], targets: list[int]) -> list[dict]:
            scores = attribute(forward, embeddings[ok], targets, method, steps,
                               baselines=torch.zeros_like(embeddings[ok]), forward_args=(ids[ok],))
            scores = scores.sum(dim=-1).cpu()  # one number per token
            answers = []
            for row, i, t in zip(scores, ok, targets):
                tokens = tokenize(request_text(requests[i]), self.pattern, self.vocab["lowercase"])
                pairs = [[tok, round(float(v), 6)] for tok, v in zip(tokens, row[: len(items[i])])]
                top = sorted((p for p in pairs if p[1] > 0), key=lambda p: -p[1])[:TOP_TOKENS]
                answers.append({"target": self.labels[t], "target_index": t, "probability": float(probs[i, t]),
                                "method": method, "tokens": pairs, "top_tokens": top})
            return answers

        return explain_valid(resolve_targets(requests, self.labels, probs), explain)

    def example_items(self, n: int) -> list:
        unk = int(self.vocab["unk_id"])
        return [torch.full((1 + i % 16,), unk, dtype=torch.long) for i in range(n)]
