"""A Hugging Face text classifier handler written the way TorchServe's own example does it
(examples/Huggingface_Transformers/Transformer_handler_generalized.py, sequence classification): every text
tokenized alone and padded to a fixed `max_length` of 150, the eager `transformers` model, the top label's name as
the answer. `tskit bench`'s baseline for the transformer archives (export/stock.py); not part of the library.
"""
import logging
import os

import torch
from ts.torch_handler.base_handler import BaseHandler
from transformers import AutoModelForSequenceClassification, AutoTokenizer

logger = logging.getLogger(__name__)
MAX_LENGTH = 150  # the example's setup_config.json


class HFSequenceClassifier(BaseHandler):
    def initialize(self, ctx):
        model_dir = ctx.system_properties.get("model_dir")
        threads = int((getattr(ctx, "model_yaml_config", None) or {}).get("torch_threads", 1))
        torch.set_num_threads(threads)  # the benchmark's workers x 1 thread
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        self.initialized = True
        logger.info("loaded %s from %s, %d threads", type(self.model).__name__, os.path.basename(model_dir), threads)

    def preprocess(self, requests):
        input_ids_batch, attention_mask_batch = None, None
        for data in requests:
            text = data.get("data") or data.get("body")
            if isinstance(text, (bytes, bytearray)):
                text = text.decode("utf-8")
            # the example's encode_plus, which transformers 5 spells as a call
            inputs = self.tokenizer(text, max_length=MAX_LENGTH, padding="max_length", add_special_tokens=True,
                                    truncation=True, return_tensors="pt")
            input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
            if input_ids_batch is None:
                input_ids_batch, attention_mask_batch = input_ids, attention_mask
            else:
                input_ids_batch = torch.cat((input_ids_batch, input_ids), 0)
                attention_mask_batch = torch.cat((attention_mask_batch, attention_mask), 0)
        return input_ids_batch, attention_mask_batch

    def inference(self, input_batch):
        input_ids_batch, attention_mask_batch = input_batch
        with torch.no_grad():
            predictions = self.model(input_ids_batch, attention_mask_batch)
        return [self.model.config.id2label[int(i)] for i in predictions[0].argmax(1)]

    def postprocess(self, inference_output):
        return inference_output
