"""A Hugging Face token classifier (named entities, PII, slots... from the user's own folder): text in, the entities
out, each `{"entity_group", "score", "word", "start", "end"}` with `start`/`end` character offsets in the text as
sent and `word` the text between them. Tokens are grouped into entities as `transformers`' pipeline does with
`aggregation_strategy="simple"` (handlers/entities.py), so a user moving from the pipeline gets the same spans
and scores. Tokenizing, batching and the archive's layout are handlers/transformer.py's.
"""
import logging

import torch

from handlers.entities import Entity, TokenLogits, group_entities, tag
from handlers.errors import ConfigError
from handlers.tokens import TokenItem
from handlers.transformer import TRANSFORMER_CONFIG, TransformerHandler

logger = logging.getLogger(__name__)


class TokenClassifier(TransformerHandler):
    config_defaults = {"ignore_labels": ["O"], **TRANSFORMER_CONFIG}
    task = "token_classifier"

    def setup(self, model_dir: str) -> None:
        super().setup(model_dir)
        self.labels = list(self.description["labels"])
        kinds = {tag(label)[1] for label in self.labels}
        if not isinstance(self.config["ignore_labels"], list):
            raise ConfigError("handler config: ignore_labels must be a list of entity types, like [\"O\"]")
        unknown = set(self.config["ignore_labels"]) - kinds
        if unknown:
            logger.warning("ignore_labels %s: the model has no such type (its types: %s)", sorted(unknown),
                           sorted(kinds))

    def forward(self, batch, *args, **kwargs) -> TokenLogits:
        return TokenLogits(self.rows(batch), batch.items)

    def entities(self, logits: torch.Tensor, item: TokenItem) -> list[Entity]:
        """One text's entities, from its [tokens, labels] logits."""
        return group_entities(torch.softmax(logits.float(), dim=-1), item, self.labels,
                              set(self.config["ignore_labels"]))

    def respond(self, outputs: TokenLogits) -> list[list[dict]]:
        return [[vars(e) for e in self.entities(logits, item)] for logits, item in zip(outputs, outputs.items)]

    def drift_output_features(self, outputs: TokenLogits):
        """Entities found per text, and how sure the model is of its tokens' labels (mean top-1 probability)."""
        rows = [[len(self.entities(logits, item)), float(torch.softmax(logits.float(), -1).amax(-1).mean())]
                for logits, item in zip(outputs, outputs.items)]
        return ["entities", "token_top1_probability"], torch.tensor(rows, dtype=torch.float32)
