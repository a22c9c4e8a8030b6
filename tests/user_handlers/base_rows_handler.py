"""Written against TorchServe's BaseHandler alone (its model loading, inference and postprocess): JSON rows in,
the model's raw outputs out. Its preprocess builds one tensor for the whole batch, so one bad row breaks it."""
import torch
from ts.torch_handler.base_handler import BaseHandler


class RowsHandler(BaseHandler):
    def preprocess(self, data):
        return torch.tensor([row.get("body") or row.get("data") for row in data], dtype=torch.float32)
