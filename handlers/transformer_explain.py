"""Explanations for the Hugging Face classifiers: Captum attributions per word of the text as sent.

The attributions run on the model's input word embeddings, whichever architecture it is (`get_input_embeddings()`:
BERT's `word_embeddings`, RoBERTa's, DistilBERT's...; no layer name to configure): Integrated Gradients from a
baseline where the text's tokens have all-zero word embeddings (they say nothing; the special tokens, padding
and the position and type embeddings the model adds stay), so the words' attributions add up to the change in
the target's logit from that baseline to the text; or saliency. The texts of a batch are explained together, padded with their attention mask, so each text's
attributions are what it gets alone. A token's score is its attribution summed over the embedding's dimensions;
a word's is the sum of its tokens', the word being the text between its first token's start and its last token's
end (special tokens left out).

The model comes from the archive's Hugging Face folder, through `transformers`: the eager format is that folder;
an ONNX, OpenVINO or TorchScript archive explains when `tskit build --explain-weights HF_DIR` shipped the folder's
weights in `transformer/explain/`, else it answers 501 saying so.
"""
import os

import torch

from handlers.explain import attribute, unavailable
from handlers.loading import load_hugging_face
from handlers.tokens import TokenItem, pad

EXPLAIN_FOLDER = "explain"  # inside the archive's transformer/ folder
TOP_WORDS = 5


def load_transformer_explainer(model_dir: str, description: dict, fmt: str, device: torch.device):
    """The archive's fp32 `HuggingFaceModel` for explanations; a 501 where the archive has no weights for one."""
    folder = os.path.join(model_dir, os.path.dirname(description["model"]))
    if fmt != "eager":
        folder = os.path.join(folder, EXPLAIN_FOLDER)
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise unavailable(f"this archive's model is {fmt}, which has no gradients, and the archive ships no "
                              "Hugging Face weights to explain with: rebuild it with `tskit build ... --model-dir "
                              "HF_DIR --explain-weights HF_DIR`, or --format eager")
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise unavailable("explanations run the Hugging Face model through `transformers`, which this worker's "
                          "Python lacks: pip install transformers") from None
    return load_hugging_face(folder, description, device).float().eval()


def embeddings_forward(model, layer: torch.nn.Module):
    """`forward(embeddings, *inputs)`: `model(*inputs)` with `layer`'s output replaced by `embeddings`."""
    def forward(embeddings: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        handle = layer.register_forward_hook(lambda _module, _args, _output: embeddings)
        try:
            return model(*inputs)
        finally:
            handle.remove()
    return forward


def word_scores(item: TokenItem, scores: list[float]) -> list[list]:
    """[[word, score], ...] in text order: each word's tokens' scores summed, the word read from the text."""
    words: dict[int, list] = {}
    for token, word in enumerate(item.words):
        if word is None or item.special[token]:
            continue
        start, end = item.offsets[token]
        entry = words.setdefault(word, [start, end, 0.0])
        entry[0], entry[1], entry[2] = min(entry[0], start), max(entry[1], end), entry[2] + scores[token]
    return [[item.text[start:end], round(score, 6)] for start, end, score in
            sorted(words.values(), key=lambda w: w[0])]


def explain_texts(handler, items: list[TokenItem], targets: list[int], probabilities: torch.Tensor) -> list[dict]:
    """Answers for `items` explained toward `targets` (label indices); `probabilities`: [n, labels] for them."""
    method, steps = handler.config["explain_method"], handler.config["explain_steps"]
    model = handler.explainer()
    layer = model.model.get_input_embeddings()
    batch = pad(items, handler.tokenizer.pad_id)
    inputs = tuple(t.to(handler.device) for t in batch.inputs(handler.input_names))
    with torch.inference_mode():
        embeddings = layer(batch.input_ids.to(handler.device)).float()
    # the text's tokens go to zero, the special and padding ones stay: every attribution belongs to a word
    words = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    for row, item in enumerate(items):
        words[row, :len(item)] = torch.tensor([not s for s in item.special], dtype=torch.bool)
    baselines = embeddings * (~words).to(embeddings.device).unsqueeze(-1)
    scores = attribute(embeddings_forward(model, layer), embeddings.clone(), targets, method, steps,
                       baselines=baselines, forward_args=inputs).sum(dim=-1).cpu()
    answers = []
    for item, row, target, probs in zip(items, scores, targets, probabilities):
        words = word_scores(item, row[:len(item)].tolist())
        answers.append({"target": handler.labels[target], "target_index": target,
                        "probability": float(probs[target]), "method": method, "words": words,
                        "top_words": sorted((w for w in words if w[1] > 0), key=lambda w: -w[1])[:TOP_WORDS]})
    return answers
