"""The accuracy guards `tskit optimize` holds candidates to, against the fp32 reference on the same views: one per
kind of task, named by the task's `guard` in handlers/tasks.py (`GUARDS`). A guard takes the reference's and a
candidate's outputs on every view and whether each view's photo was held out of calibration, and returns a
`GuardResult` (`refusal` says why it fails, or None).

The classifier's: (a) top-1 agreement on the views where the reference is confident (top-1 probability >= CONFIDENT) at least
`min_confident`; (b) the reference's top-1 inside the candidate's top 5 on at least `min_top5` of all views.
Overall agreement is reported but not judged: where the reference itself hesitates between two labels, a
faithful candidate may pick the other one.

The text classifier's (transformer_classifier): top-1 agreement at least `min_confident` where the reference is
confident and at least `min_overall` on every text (a text has few labels, so top-5 says nothing). The
embedder's (sentence_embedder): the cosine between the candidate's and the reference's vector at least
`min_cosine` for 99% of the texts (its first percentile). The token classifier's (token_classifier): the
candidate's entities (type and span, grouped as the handler answers them) against the reference's, as an F1 over
all texts, at least `min_entities`; the share of tokens whose label agrees is reported beside it.
"""
from dataclasses import dataclass

import numpy as np
import torch

CONFIDENT = 0.5  # the reference's top-1 probability above which a view counts as confident


@dataclass
class Thresholds:
    min_confident: float = 0.99
    min_top5: float = 0.99
    min_overall: float = 0.98  # text classifiers
    min_cosine: float = 0.99  # embedders
    min_entities: float = 0.98  # token classifiers: entity F1 against the reference


@dataclass
class GuardResult:
    views: int
    confident_views: int
    overall: float  # top-1 agreement on all views
    confident: float  # (a) top-1 agreement where the reference is confident
    top5: float  # (b) the reference's top-1 in the candidate's top 5
    held_out_confident: float  # (a) on the photos calibration never saw

    def refusal(self, thresholds: Thresholds) -> str | None:
        """Why the guard refuses these figures, or None when they pass."""
        if self.confident < thresholds.min_confident:
            return f"confident agreement {self.confident:.1%} < {thresholds.min_confident:.1%}"
        if self.top5 < thresholds.min_top5:
            return f"top-5 containment {self.top5:.1%} < {thresholds.min_top5:.1%}"
        return None

    def margin(self, thresholds: Thresholds) -> float:
        """How far the worse of (a) and (b) clears its threshold (negative: refused by that much)."""
        return min(self.confident - thresholds.min_confident, self.top5 - thresholds.min_top5)

    def summary(self) -> str:
        return (f"overall {self.overall:.1%}, confident {self.confident:.1%} of {self.confident_views}, "
                f"top-5 {self.top5:.1%}")


def guard(reference: torch.Tensor, candidate: torch.Tensor, held_out: np.ndarray) -> GuardResult:
    """Compare [N, classes] logits of a candidate with the reference's on the same views."""
    probs = torch.softmax(reference.float(), dim=1)
    top_p, ref_top1 = probs.max(dim=1)
    agree = candidate.float().argmax(dim=1) == ref_top1
    k = min(5, candidate.shape[1])
    in_top5 = (candidate.float().topk(k, dim=1).indices == ref_top1[:, None]).any(dim=1)
    confident = top_p >= CONFIDENT
    held = torch.from_numpy(held_out) & confident

    def share(mask: torch.Tensor, where: torch.Tensor) -> float:
        return float(mask[where].float().mean()) if where.any() else 1.0

    everywhere = torch.ones_like(agree)
    return GuardResult(len(agree), int(confident.sum()), share(agree, everywhere), share(agree, confident),
                       share(in_top5, everywhere), share(agree, held))


def divergence(reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """Per view, KL(reference || candidate) of the softmax outputs: how far a candidate strays, continuously
    (the int8 search ranks layers by it where the guard's counts move too little to tell them apart)."""
    log_ref = torch.log_softmax(reference.float(), dim=1)
    log_cand = torch.log_softmax(candidate.float(), dim=1)
    return (log_ref.exp() * (log_ref - log_cand)).sum(dim=1)


class TextClassifierGuard(GuardResult):
    """The classifier's figures, judged on overall agreement instead of top-5 containment."""

    def refusal(self, thresholds: Thresholds) -> str | None:
        if self.confident < thresholds.min_confident:
            return f"confident agreement {self.confident:.1%} < {thresholds.min_confident:.1%}"
        if self.overall < thresholds.min_overall:
            return f"overall agreement {self.overall:.1%} < {thresholds.min_overall:.1%}"
        return None

    def summary(self) -> str:
        return f"overall {self.overall:.1%}, confident {self.confident:.1%} of {self.confident_views} texts"


def text_classifier_guard(reference: torch.Tensor, candidate: torch.Tensor, held_out: np.ndarray) -> TextClassifierGuard:
    """Compare [N, labels] logits on the same texts (a softmax's or a sigmoid's top-1 is the logits' argmax)."""
    return TextClassifierGuard(**vars(guard(reference, candidate, held_out)))


@dataclass
class EmbeddingGuard:
    views: int  # texts
    cosine_p01: float  # 99% of the texts have a cosine at least this high
    cosine_mean: float
    cosine_min: float

    def refusal(self, thresholds: Thresholds) -> str | None:
        if self.cosine_p01 < thresholds.min_cosine:
            return f"cosine {self.cosine_p01:.4f} (1st percentile) < {thresholds.min_cosine}"
        return None

    def summary(self) -> str:
        return (f"cosine to the reference: 1st percentile {self.cosine_p01:.4f}, mean {self.cosine_mean:.4f}, "
                f"min {self.cosine_min:.4f} over {self.views} texts")


def embedding_guard(reference: torch.Tensor, candidate: torch.Tensor, held_out: np.ndarray) -> EmbeddingGuard:
    cosine = torch.nn.functional.cosine_similarity(reference.float(), candidate.float(), dim=1)
    return EmbeddingGuard(len(cosine), float(torch.quantile(cosine, 0.01)), float(cosine.mean()), float(cosine.min()))


@dataclass
class EntityGuard:
    views: int  # texts
    entities: int  # the reference's entities
    f1: float  # the candidate's entities against the reference's (type and token span equal)
    token_agreement: float  # tokens whose most probable label is the reference's

    def refusal(self, thresholds: Thresholds) -> str | None:
        if self.f1 < thresholds.min_entities:
            return f"entity agreement (F1) {self.f1:.1%} < {thresholds.min_entities:.1%}"
        return None

    def summary(self) -> str:
        return (f"entity agreement (F1) {self.f1:.1%} on the reference's {self.entities} entities, token labels "
                f"{self.token_agreement:.1%}, {self.views} texts")


def entity_guard(reference: list, candidate: list, held_out: np.ndarray, labels: list[str],
                 ignore: tuple[str, ...] = ("O",)) -> EntityGuard:
    """Compare per-text [tokens, labels] logits (handlers/token_classifier.py's TokenLogits) on the same texts."""
    from handlers.entities import token_spans

    def spans(logits: torch.Tensor, special: list[int]) -> set:
        runs = token_spans([labels[i] for i in logits.argmax(-1).tolist()], special)
        return {(kind, indices[0], indices[-1]) for kind, indices in runs if kind not in ignore}

    both = found = expected = agree = tokens = 0
    for ref, cand, item in zip(reference, candidate, reference.items):
        ours, theirs = spans(cand, item.special), spans(ref, item.special)
        both, found, expected = both + len(ours & theirs), found + len(ours), expected + len(theirs)
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        tokens += len(ref)
    f1 = 1.0 if found + expected == 0 else 2 * both / (found + expected)
    return EntityGuard(len(reference), expected, f1, agree / max(tokens, 1))


# handlers/tasks.py names these
GUARDS = {"classifier": guard, "text_classifier": text_classifier_guard, "embedding": embedding_guard,
          "entities": entity_guard}
