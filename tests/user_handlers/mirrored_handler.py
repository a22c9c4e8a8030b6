"""Overrides preprocess with a helper from the user's own package `mylib` (shipped with --extra-files mylib)."""
from handlers.image_classifier import ImageClassifier
from mylib.augment import mirror


class MirroredClassifier(ImageClassifier):
    def preprocess(self, data):
        batch = super().preprocess(data)
        return None if batch is None else mirror(batch)
