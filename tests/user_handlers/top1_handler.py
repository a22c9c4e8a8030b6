"""Overrides only postprocess: the best label and its probability, instead of the top-5 scores."""
from handlers.image_classifier import ImageClassifier


class Top1Classifier(ImageClassifier):
    def postprocess(self, data):
        return [{"label": next(iter(scores)), "probability": round(next(iter(scores.values())), 4)}
                for scores in super().postprocess(data)]
