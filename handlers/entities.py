"""Per-token labels to entities, as `transformers`' token-classification pipeline groups them with
`aggregation_strategy="simple"`: each token (special tokens left out) takes its most probable label; neighbouring
tokens of the same type join one entity unless the later one is tagged `B-` (a label without a `B-`/`I-` prefix
continues one of its own type); an entity's score is the mean of its tokens' scores and its span runs from its
first token's start to its last token's end; entities of an ignored type (`O`) are dropped.

Unlike the pipeline, `word` is the text as sent between those offsets (the pipeline rebuilds it from tokens, which
lowercases or respaces it for some tokenizers).
"""
from dataclasses import dataclass

import torch

from handlers.tokens import TokenItem


@dataclass
class Entity:
    entity_group: str
    score: float
    word: str
    start: int
    end: int


class TokenLogits(list):
    """The model's per-token logits for each text of a batch ([tokens, labels] each, padding cut off), with the
    tokenized texts they belong to: their offsets place the entities in the text."""

    def __init__(self, rows: list[torch.Tensor], items: list[TokenItem]):
        super().__init__(rows)
        self.items = list(items)

    @classmethod
    def join(cls, parts: list["TokenLogits"]) -> "TokenLogits":
        """Several batches' logits as one, in order."""
        return cls([row for part in parts for row in part], [item for part in parts for item in part.items])


def tag(label: str) -> tuple[str, str]:
    """("B" or "I", the type) of a label: `B-PER` -> (B, PER), `I-PER` and `PER` -> (I, PER)."""
    if label[:2] in ("B-", "I-"):
        return label[0], label[2:]
    return "I", label


def token_spans(labels: list[str], special: list[int]) -> list[tuple[str, list[int]]]:
    """(type, token indices) of each run of tokens grouped into one entity, ignored types included."""
    runs: list[tuple[str, list[int]]] = []
    previous = None
    for index, label in enumerate(labels):
        if special[index]:
            continue
        bi, kind = tag(label)
        if runs and previous == kind and bi != "B":
            runs[-1][1].append(index)
        else:
            runs.append((kind, [index]))
        previous = kind
    return runs


def group_entities(probabilities: torch.Tensor, item: TokenItem, labels: list[str], ignore: set[str]) -> list[Entity]:
    """The entities of one text from its [tokens, labels] probabilities."""
    scores, best = probabilities.max(dim=-1)
    scores, best = scores.tolist(), best.tolist()
    found = []
    for kind, indices in token_spans([labels[i] for i in best], item.special):
        if kind in ignore:
            continue
        start, end = item.offsets[indices[0]][0], item.offsets[indices[-1]][1]
        score = sum(scores[i] for i in indices) / len(indices)
        found.append(Entity(kind, score, item.text[start:end], start, end))
    return found
