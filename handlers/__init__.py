"""TorchServe handlers: one base class (`handlers.base.TskitHandler`) and one subclass per task.

Modules here import each other absolutely (`from handlers.x import ...`): `tskit build` bundles this
package inside every archive, and TorchServe imports the handler file as a top-level module. Importing the
package checks the archive it sits in first (handlers/integrity.py), before any other module of it runs.
"""
from pathlib import Path as _Path

from handlers.integrity import check_enclosing_archive as _check_enclosing_archive

_check_enclosing_archive(_Path(__file__).parent)

# Task handlers: the name `tskit build --handler` takes -> (module file in this package, class name).
# Each module defines exactly one class (TorchServe's rule for a handler file).
TASKS = {
    "image_classifier": ("image_classifier.py", "ImageClassifier"),
    "image_segmenter": ("image_segmenter.py", "ImageSegmenter"),
    "object_detector": ("object_detector.py", "ObjectDetector"),
    "tensor": ("tensor.py", "TensorHandler"),
    "text_classifier": ("text_classifier.py", "TextClassifier"),
}
