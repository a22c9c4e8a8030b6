"""Explanations for the Hugging Face classifiers: Captum attributions per word of the text as sent.

The attributions run on the model's input word embeddings, whichever architecture it is (`get_input_embeddings()`:
BERT's `word_embeddings`, RoBERTa's, DistilBERT's, XLM-R's...; no layer name to configure), through a forward hook
that replaces that layer's output while the model still gets the real ids, attention mask and type ids.

Integrated Gradients goes from a baseline where the text's own tokens have all-zero word embeddings and the special
tokens ([CLS], [SEP], <s>...) and the padding keep theirs; the position and type embeddings the model adds stay
either way. Why this baseline: a zero word embedding is the same "no word here" point for every architecture
(the pad token's embedding is whatever each model's training left there, and a model never reads pad outside its
attention mask, so it is no more neutral a point, and one more thing that differs between models); keeping the
special tokens keeps the baseline a sequence the model knows how to read, and as they do not move from baseline to
input they get no attribution, so the words' scores alone add up to the target's logit change from the baseline to
the text (IG's completeness, tested). Or saliency: |gradient|, one backward pass.

A token's score is its attribution summed over the embedding's dimensions; a word's is the sum of its tokens'
(`words` of the tokenizer), the word being the text as sent between its first token's start and its last token's
end (special tokens left out). The texts of a batch are explained together, longest first, as many per forward and
backward pass as `explain_batch_tokens` allows, each padded with its attention mask, so a text's attributions are
what it gets alone whoever shares the batch.

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
# tokens per forward and backward pass of an explanation (texts x Integrated Gradients steps x padded length): what
# bounds its memory, the activations autograd keeps for every token of every layer
EXPLAIN_BATCH_TOKENS = 2048


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


def token_groups(lengths: list[int], budget: int, rows_per_text: int) -> list[list[int]]:
    """The texts' indices in groups explained together, longest first: a group holds as many texts as fit
    `rows_per_text` rows each, padded to its longest, in `budget` tokens (at least one text)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * rows_per_text * lengths[groups[-1][0]] <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def attribute_group(handler, model, layer, items: list[TokenItem], targets: list[int], method: str, steps: int,
                    budget: int) -> torch.Tensor:
    """[n, L] scores per token of `items`, padded together; Integrated Gradients in passes of about `budget`
    tokens (at least 2 steps of every text per pass)."""
    batch = pad(items, handler.tokenizer.pad_id)
    inputs = tuple(t.to(handler.device) for t in batch.inputs(handler.input_names))
    with torch.inference_mode():
        embeddings = layer(batch.input_ids.to(handler.device)).float()
    # the text's tokens go to zero, the special and padding ones stay: every attribution belongs to a word
    words = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    for row, item in enumerate(items):
        words[row, :len(item)] = torch.tensor([not s for s in item.special], dtype=torch.bool)
    baselines = embeddings * (~words).to(embeddings.device).unsqueeze(-1)
    n, length = batch.input_ids.shape
    rows = max(2 * n, budget // length // n * n)
    return attribute(embeddings_forward(model, layer), embeddings.clone(), targets, method, steps,
                     baselines=baselines, forward_args=inputs, internal_batch_size=rows).sum(dim=-1).cpu()


def explain_texts(handler, items: list[TokenItem], targets: list[int], probabilities: torch.Tensor) -> list[dict]:
    """Answers for `items` explained toward `targets` (label indices); `probabilities`: [n, labels] for them.

    Texts of similar length are attributed together, as many as `explain_batch_tokens` allows per forward and
    backward pass (its memory grows with the tokens in it); which texts share a pass changes no text's scores."""
    method, steps = handler.config["explain_method"], handler.config["explain_steps"]
    budget = handler.config.get("explain_batch_tokens", EXPLAIN_BATCH_TOKENS)
    model = handler.explainer()
    layer = model.model.get_input_embeddings()
    scores: list = [None] * len(items)
    rows_per_text = 1 if method == "saliency" else min(2, steps)
    for group in token_groups([len(item) for item in items], budget, rows_per_text):
        part = attribute_group(handler, model, layer, [items[i] for i in group], [targets[i] for i in group],
                               method, steps, budget)
        for i, row in zip(group, part):
            scores[i] = row[:len(items[i])].tolist()
    answers = []
    for item, row, target, probs in zip(items, scores, targets, probabilities):
        words = word_scores(item, row)
        answers.append({"target": handler.labels[target], "target_index": target,
                        "probability": float(probs[target]), "method": method, "words": words,
                        "top_words": sorted((w for w in words if w[1] > 0), key=lambda w: -w[1])[:TOP_WORDS]})
    return answers
