"""Overrides only inference: temperature-scaled logits (calibrated probabilities)."""
from handlers.image_classifier import ImageClassifier

TEMPERATURE = 2.0


class TemperedClassifier(ImageClassifier):
    def inference(self, data, *args, **kwargs):
        return super().inference(data, *args, **kwargs) / TEMPERATURE
