"""`TransformerHandler`: what the Hugging Face handlers share (transformer_classifier, sentence_embedder): the
archive's `tskit-transformer.json` and tokenizer read at load, one text per request decoded to its tokens, a batch
padded to its longest text and run in length groups, texts past the model's maximum cut, logged and counted.

`tskit build NAME --handler TASK --model-dir HF_DIR --format eager|torchscript|onnx|openvino` writes the archive
(export/hugging_face.py): `tskit-transformer.json` (the serialized file TorchServe names: the format, the inputs,
the labels or pooling, the longest input the model takes) and the `transformer/` folder (the tokenizer as
`tokenizer.json`, the model in its format; for eager the Hugging Face folder itself). The worker tokenizes with
`tokenizers`; only the eager format needs `transformers`.

A batch is padded to its longest text, never to a fixed length, and split into length groups where one long text
would make short ones pay for its padding (handlers/tokens.py): the answers are the same whoever shares the
batch. A text longer than the model takes is cut to its maximum and answered; the cut is counted
(`TskitTextsTruncated`) and logged.
"""
import logging
import os

import torch

from handlers.base import TskitHandler
from handlers.errors import ConfigError
from handlers.loading import TRANSFORMER_FILE, read_transformer
from handlers.metrics import record_truncated
from handlers.payload import request_text
from handlers.tokens import GROUP_CALL_TOKENS, TextTokenizer, TokenBatch, pad, plan_groups

logger = logging.getLogger(__name__)

TRANSFORMER_CONFIG = {
    "max_chars": 100000,  # longer bodies get a 413 before they are tokenized
    "length_groups": True,  # split a batch into groups of similar length where that saves padding
    "group_call_tokens": GROUP_CALL_TOKENS,  # a forward call's fixed cost in tokens, for that split
    "pad_multiple": 0,  # pad a batch's length up to a multiple of this; 0: 16 for OpenVINO, else none
}
OPENVINO_PAD_MULTIPLE = 16  # measured: int8/bf16 MiniLM on 120-word texts, 110 -> 125 texts/s on one thread


class TransformerHandler(TskitHandler):
    config_defaults = dict(TRANSFORMER_CONFIG)
    task = ""  # the task whose archives this class serves (tskit-transformer.json's `task`)

    def setup(self, model_dir: str) -> None:
        if self.config["max_chars"] < 1:
            raise ConfigError("handler config: max_chars must be >= 1")
        path = os.path.join(model_dir, TRANSFORMER_FILE)
        if not os.path.isfile(path):
            raise ConfigError(f"{TRANSFORMER_FILE} not in the archive: build it with `tskit build --handler "
                              f"{self.task} --model-dir YOUR_HF_FOLDER`")
        self.description = read_transformer(path)
        if self.description.get("task") != self.task:
            raise ConfigError(f"this archive's model was exported for {self.description.get('task')}, not "
                              f"{self.task}: build it again with --handler {self.task}")
        self.input_names = list(self.description["inputs"])
        multiple = self.config["pad_multiple"] or (OPENVINO_PAD_MULTIPLE if self.model_format == "openvino" else 1)
        self.pad_multiple = max(1, multiple)
        self.tokenizer = TextTokenizer(os.path.join(model_dir, self.description["tokenizer"]),
                                       int(self.description["max_length"]), int(self.description["pad_id"]))

    def explainer(self):
        """The archive's Hugging Face model in fp32, loaded on the first explanation request (501 where there is
        none: handlers/transformer_explain.py)."""
        if self._explainer is None:
            from handlers.transformer_explain import load_transformer_explainer

            self._explainer = load_transformer_explainer(self.model_paths[0], self.description, self.model_format,
                                                         self.device)
        return self._explainer

    def decode(self, request: dict):
        text = request_text(request, self.config["max_chars"])
        item = self.tokenizer.encode(text)
        if item.truncated:
            logger.info("a text of %d characters was cut to the model's %d tokens", len(text),
                        self.tokenizer.max_length)
            record_truncated(self.context, 1)
        return item

    def collate(self, items: list) -> TokenBatch:
        return pad(items, self.tokenizer.pad_id, self.pad_multiple)

    def forward(self, batch: TokenBatch, *args, **kwargs) -> torch.Tensor:
        return torch.stack(self.rows(batch))

    def rows(self, batch: TokenBatch) -> list[torch.Tensor]:
        """The model on each length group of the batch: its output row per text in the batch's order (a per-token
        output cut to the text's own tokens)."""
        lengths = [len(item) for item in batch.items]
        groups = (plan_groups(lengths, self.config["group_call_tokens"]) if self.config["length_groups"]
                  else [list(range(len(lengths)))])
        outputs: list = [None] * len(lengths)
        with torch.inference_mode():
            for group in groups:
                part = (batch if len(groups) == 1 else
                        pad([batch.items[i] for i in group], self.tokenizer.pad_id, self.pad_multiple))
                result = self.model(*(self.to_device(t) for t in part.inputs(self.input_names)))
                for i, row in zip(group, result.float()):
                    outputs[i] = row[:lengths[i]] if row.dim() > 1 else row
        return outputs

    def drift_features(self, batch: TokenBatch) -> tuple[list[str], torch.Tensor]:
        """Tokens per text, the share of them the tokenizer did not know, and whether the text was cut."""
        rows = [[len(item), item.unknown / len(item), float(item.truncated)] for item in batch.items]
        return ["tokens", "unknown_rate", "truncated"], torch.tensor(rows, dtype=torch.float32)

    def example_items(self, n: int) -> list:
        words = "the quick brown fox jumps over the lazy dog"
        return [self.tokenizer.encode(" ".join([words] * (1 + i % 4))) for i in range(n)]
