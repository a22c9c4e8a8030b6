"""A tiny text CNN over padded token ids: torch only, so an archive carries it as its model file.

Input: a [batch, time] integer tensor of token ids, right-padded with `pad_id`. Padding never changes a
text's answer: pad positions embed to zeros, each convolution runs "full" (zero padding of width-1 on
both sides, so a window that overlaps the batch's padding sees exactly the zeros it would see alone) and
windows that lie entirely in the padding are zeroed before the max-pool (ReLU outputs are >= 0, so a
zero never beats a real window).

The vocabulary size, class count and pad id are read from the checkpoint (`_load_from_state_dict`), so
the class builds with no arguments, as the handler's loader does.
"""
import torch
from torch import nn

WIDTHS = (1, 2, 3)  # n-gram widths of the convolutions


class TextCNN(nn.Module):
    def __init__(self, vocab_size: int = 2, num_classes: int = 2, dim: int = 64, channels: int = 64,
                 pad_id: int = 0, dropout: float = 0.3):
        super().__init__()
        self.dim, self.channels = dim, channels
        self.register_buffer("pad_id", torch.tensor(pad_id, dtype=torch.long))
        self.embedding = nn.Embedding(vocab_size, dim)
        self.convs = nn.ModuleList(nn.Conv1d(dim, channels, w, padding=w - 1) for w in WIDTHS)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels * len(WIDTHS), num_classes)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Resize the vocabulary and class layers to the checkpoint's before loading it."""
        emb = state_dict.get(prefix + "embedding.weight")
        if emb is not None and emb.shape != self.embedding.weight.shape:
            self.embedding = nn.Embedding(*emb.shape)
        out = state_dict.get(prefix + "classifier.weight")
        if out is not None and out.shape != self.classifier.weight.shape:
            self.classifier = nn.Linear(out.shape[1], out.shape[0])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != self.pad_id  # [B, T]
        lengths = mask.sum(dim=1, keepdim=True)  # [B, 1]
        x = self.embedding(ids) * mask.unsqueeze(-1).to(self.embedding.weight.dtype)
        x = x.transpose(1, 2)  # [B, dim, T]
        pooled = []
        for conv, width in zip(self.convs, WIDTHS):
            h = torch.relu(conv(x))  # [B, C, T + width - 1]; position t covers tokens t-width+1 .. t
            positions = torch.arange(h.shape[-1], device=ids.device).unsqueeze(0)
            valid = positions < lengths + width - 1  # the window holds at least one real token
            h = h.masked_fill(~valid.unsqueeze(1), 0.0)
            pooled.append(h.amax(dim=-1))
        return self.classifier(self.dropout(torch.cat(pooled, dim=1)))
