"""The tasks this library serves: the one registry every list of them derives from (torch-free, so the CLI reads it
before importing anything heavy).

`tskit build --handler NAME` bundles the task's module, whose one class TorchServe loads; `tskit new handler --from
NAME` writes a handler on it (its `scaffold`); `tskit.testing.stand_in_archive` builds a random-weight model for it
(`stand_in`); `tskit optimize` holds candidates to its accuracy `guard` (None: not supported yet). `BASE` is not a
task but `TskitHandler` itself, where a new task starts: the scaffolds and stand-ins take it too.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Scaffold:
    """What `tskit new handler --from TASK` writes beyond the class: the handler config keys its model-config.yaml
    shows, and for its test a request body (Python source) the handler refuses, with the status and the type of
    one answer."""
    config: dict
    bad_request: str
    bad_status: int
    answer_type: str


@dataclass(frozen=True)
class Task:
    name: str
    module: str  # a module of this package defining exactly one class (TorchServe's rule for a handler file)
    class_name: str
    takes: str  # what one request carries, for help texts
    scaffold: Scaffold | None = None
    stand_in: bool = False
    guard: str | None = None  # export/optimize/guard.py's GUARDS key

    @property
    def file(self) -> str:
        return f"{self.module}.py"


TASKS = {task.name: task for task in (
    Task("image_classifier", "image_classifier", "ImageClassifier", "an image",
         Scaffold({"resize": 256, "crop": 224, "topk": 5}, 'b"not an image"', 415, "dict"), stand_in=True,
         guard="classifier"),
    Task("image_segmenter", "image_segmenter", "ImageSegmenter", "an image"),
    Task("object_detector", "object_detector", "ObjectDetector", "an image",
         Scaffold({"min_size": 800, "max_size": 1333, "score_threshold": 0.5}, 'b"not an image"', 415, "list"),
         stand_in=True),
    Task("tensor", "tensor", "TensorHandler", "numbers (JSON, .npy, safetensors)",
         Scaffold({"topk": 2}, 'b"not JSON"', 400, "dict"), stand_in=True),
    Task("text_classifier", "text_classifier", "TextClassifier", "text",
         Scaffold({"topk": 2, "max_chars": 10000}, 'b"\\xff\\xfe not UTF-8"', 400, "dict"), stand_in=True),
    Task("transformer_classifier", "transformer_classifier", "TransformerClassifier",
         "text (a Hugging Face model folder: --model-dir)",
         Scaffold({"topk": 2, "max_chars": 10000}, 'b"\\xff\\xfe not UTF-8"', 400, "dict"), stand_in=True,
         guard="text_classifier"),
    Task("sentence_embedder", "sentence_embedder", "SentenceEmbedder",
         "text (a Hugging Face or sentence-transformers folder: --model-dir)", stand_in=True, guard="embedding"),
    Task("token_classifier", "token_classifier", "TokenClassifier", "text (a Hugging Face model folder: --model-dir)",
         Scaffold({"ignore_labels": ["O"], "max_chars": 10000}, 'b"\\xff\\xfe not UTF-8"', 400, "list"),
         stand_in=True, guard="entities"),
)}
BASE = Task("base", "base", "TskitHandler", "what your decode reads",
            Scaffold({"width": 30}, '"not a list"', 400, "list"), stand_in=True)


def scaffold_bases() -> dict[str, Task]:
    """What `tskit new handler --from` takes: every task with a scaffold, then `base`."""
    return {t.name: t for t in (*TASKS.values(), BASE) if t.scaffold}


def stand_in_tasks() -> list[str]:
    return [t.name for t in (*TASKS.values(), BASE) if t.stand_in]


def task_of_handler_file(handler: str) -> Task | None:
    """The task an archive's MAR-INF handler entry (`image_classifier.py`) names; None for a user's handler."""
    return next((t for t in TASKS.values() if t.file == handler), None)
