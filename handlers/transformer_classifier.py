"""A Hugging Face sequence classifier (BERT, DistilBERT, RoBERTa, XLM-R, MiniLM... from the user's own folder): text
in, `{label: probability}` for the top-k labels out, labels from the model's `id2label`; a sigmoid per label where
its `problem_type` is `multi_label_classification`, else a softmax. Tokenizing, batching and the archive's layout
are handlers/transformer.py's; explanations (attributions per word) handlers/transformer_explain.py's.
"""
import torch

from handlers.errors import ConfigError
from handlers.explain import EXPLAIN_CONFIG, explain_valid, resolve_targets
from handlers.transformer import TRANSFORMER_CONFIG, TransformerHandler
from handlers.transformer_explain import EXPLAIN_BATCH_TOKENS, explain_texts


class TransformerClassifier(TransformerHandler):
    # explain_method (integrated_gradients | saliency) and explain_steps: attributions per word; explain_batch_tokens:
    # tokens per forward and backward pass of an explanation, what bounds its memory (handlers/transformer_explain.py)
    config_defaults = {"topk": 5, **TRANSFORMER_CONFIG, **EXPLAIN_CONFIG, "explain_batch_tokens": EXPLAIN_BATCH_TOKENS}
    task = "transformer_classifier"

    def setup(self, model_dir: str) -> None:
        if self.config["topk"] < 1 or self.config["explain_batch_tokens"] < 1:
            raise ConfigError("handler config: topk and explain_batch_tokens must be >= 1")
        super().setup(model_dir)
        self.labels = list(self.description["labels"])
        self.multi_label = self.description.get("problem_type") == "multi_label_classification"

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)

    def respond(self, logits: torch.Tensor) -> list[dict]:
        probs = self.probabilities(logits)
        values, indices = probs.topk(min(self.config["topk"], probs.shape[1]), dim=1)
        return [{self.labels[i]: p for p, i in zip(v.tolist(), ix.tolist())}
                for v, ix in zip(values.cpu(), indices.cpu())]

    def explain_items(self, items: list, requests: list[dict]) -> list:
        """Attributions per word toward the requested label (`"target"`: a name or an index), else the top one."""
        probabilities = self.probabilities(self.forward(self.collate(items))).cpu()
        return explain_valid(resolve_targets(requests, self.labels, probabilities),
                             lambda ok, targets: explain_texts(self, [items[i] for i in ok], targets,
                                                               probabilities[ok]))

    def drift_output_features(self, outputs):
        return ["top1_probability"], self.probabilities(outputs).amax(dim=1, keepdim=True)
