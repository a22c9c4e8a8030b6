"""Texts to token batches for the Hugging Face handlers: one `tokenizers` tokenizer (the archive's `tokenizer.json`,
whichever family wrote it), padding to the longest text of a
batch and never to a fixed length, and length groups where one long text would make a batch of short ones pay
for its padding.

The worker needs `tokenizers` alone (no `transformers`): `tskit build` writes `tokenizer.json` from the user's
folder, so a tokenizer given only as vocab.txt, merges or a SentencePiece model is converted once, at build time.
"""
import json
from dataclasses import dataclass, field

import torch

from handlers.errors import ConfigError

# a forward call's fixed cost, in padded tokens: a batch is split into length groups only where the padding saved
# is worth more than the extra calls (plan_groups)
GROUP_CALL_TOKENS = 64


@dataclass
class TokenItem:
    """One text, tokenized: ids with the special tokens, their type ids, and whether the text was cut; with each
    token's character span in the text, its word and whether it is a special token, for answers and explanations
    about parts of the text (entities, attributions per word)."""
    ids: list[int]
    type_ids: list[int]
    truncated: bool
    unknown: int  # how many tokens are the unknown token
    text: str = ""
    offsets: list[tuple[int, int]] = field(default_factory=list)  # [start, end) in `text` per token
    words: list[int | None] = field(default_factory=list)  # the word each token belongs to; None: special
    special: list[int] = field(default_factory=list)  # 1 for a special token ([CLS], <s>...)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TokenBatch:
    """Texts padded to the longest of them: [N, L] ids, attention mask and type ids, and the items it came from."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    items: list[TokenItem]

    def __len__(self) -> int:
        return len(self.items)

    def inputs(self, names: list[str]) -> tuple[torch.Tensor, ...]:
        """The tensors a model takes, in the order of its input `names`."""
        return tuple(getattr(self, name) for name in names)


class TextTokenizer:
    """`tokenizer.json` with truncation at `max_length` (special tokens included) and no padding of its own."""

    def __init__(self, path: str, max_length: int, pad_id: int):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ConfigError("this archive tokenizes with the `tokenizers` package, which this worker's Python "
                              "lacks: pip install tokenizers") from None
        self.tokenizer = Tokenizer.from_file(path)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.max_length = max_length
        self.pad_id = pad_id
        self.unk_id = self.unknown_id()

    def unknown_id(self) -> int | None:
        model = self.tokenizer.model
        token = getattr(model, "unk_token", None)
        if token is None and type(model).__name__ == "Unigram":  # SentencePiece: its unknown is named by id, in the
            unk_id = json.loads(self.tokenizer.to_str())["model"].get("unk_id")  # the JSON alone has it
            return int(unk_id) if unk_id is not None else None
        return self.tokenizer.token_to_id(token) if token else None

    def encode(self, text: str) -> TokenItem:
        encoding = self.tokenizer.encode(text)
        ids = list(encoding.ids)
        unknown = sum(i == self.unk_id for i in ids) if self.unk_id is not None else 0
        return TokenItem(ids, list(encoding.type_ids), bool(encoding.overflowing), unknown, text,
                         [tuple(o) for o in encoding.offsets], list(encoding.word_ids),
                         list(encoding.special_tokens_mask))


def pad(items: list[TokenItem], pad_id: int, multiple: int = 1) -> TokenBatch:
    """Right-pad to the batch's longest text, rounded up to a `multiple` of tokens (engines that compile a kernel
    per input shape, OpenVINO's, run faster on a few recurring shapes; the mask makes the answers the same)."""
    length = -(-max(len(item) for item in items) // multiple) * multiple
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), length), dtype=torch.long)
    types = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item)
        ids[row, :n] = torch.tensor(item.ids, dtype=torch.long)
        mask[row, :n] = 1
        types[row, :n] = torch.tensor(item.type_ids, dtype=torch.long)
    return TokenBatch(ids, mask, types, list(items))


def plan_groups(lengths: list[int], call_tokens: int = GROUP_CALL_TOKENS) -> list[list[int]]:
    """Split a batch's indices into groups of similar length: the split (of the indices sorted by length into
    contiguous runs) that minimises the tokens computed (padding included) plus `call_tokens` per call, found
    exactly by dynamic programming. One group (the batch as it came, in order) when splitting saves nothing."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    if n < 2 or lengths[order[0]] == lengths[order[-1]]:
        return [list(range(n))]
    best = [0.0] + [float("inf")] * n  # best[j]: the cost of the first j sorted texts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # the last group is sorted[i:j], padded to its longest, lengths[order[j - 1]]
            cost = best[i] + (j - i) * lengths[order[j - 1]] + call_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return [list(range(n))] if len(groups) == 1 else groups[::-1]
