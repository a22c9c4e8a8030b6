"""Written the way TorchServe's MNIST example is: its stock ImageClassifier, with its own transforms and answer
(the label of the best class). Nothing from torchserve-kit is imported."""
from torchvision import transforms
from ts.torch_handler.image_classifier import ImageClassifier


class StockStyleClassifier(ImageClassifier):
    image_processing = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[127 / 255] * 3, std=[128 / 255] * 3),  # how EfficientNet-Lite was trained
    ])

    def postprocess(self, data):
        return [self.mapping[str(int(index))] for index in data.argmax(1)]
