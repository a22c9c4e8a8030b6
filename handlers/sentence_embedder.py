"""Sentence embeddings from a Hugging Face folder (sentence-transformers' all-MiniLM-L6-v2 and the like): text in,
one vector out, pooled and normalised as the folder's sentence-transformers config says (`modules.json`,
`1_Pooling/config.json`: mean, CLS, max or mean-sqrt-len pooling; a `Normalize` module; `max_seq_length`), in the
exported graph itself. A plain Hugging Face folder without that config is mean-pooled, not normalised, as
sentence-transformers does with one. KServe v2 answers each vector as an FP32 tensor. Tokenizing, batching and the
archive's layout are handlers/transformer.py's.
"""
import torch

from handlers.transformer import TransformerHandler


class SentenceEmbedder(TransformerHandler):
    task = "sentence_embedder"

    def respond(self, embeddings: torch.Tensor) -> list[list[float]]:
        return embeddings.float().cpu().tolist()

    def drift_output_features(self, outputs):
        """The mean of the vector's components and its largest one in size: both move when the texts do (a
        normalised vector's norm would not)."""
        outputs = outputs.float()
        return ["embedding_mean", "embedding_max"], torch.stack([outputs.mean(dim=1), outputs.abs().amax(dim=1)], 1)
