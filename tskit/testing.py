"""Run a handler in-process the way a TorchServe worker does: the public way to unit-test a handler.

`load_archive_handler` unpacks a `.mar`, imports the class TorchServe would instantiate from it, builds the
same `ts.context.Context` the worker builds (manifest, model-config.yaml, batch size) and calls `initialize`;
`load_handler` does the same for a handler class of your own on an unpacked archive folder. `run_batch` then
calls `handle` on a list of requests with per-request headers (`{"explain": "True"}` is an /explanations
call) and returns each request's (status, body); `run_envelope` sends one KServe v1/v2 body through
TorchServe's own request envelope.

    handler = load_archive_handler("model_store/my_model.mar", tmp_path)
    [(status, body)] = run_batch(handler, [{"body": open("cat.jpg", "rb").read()}])

Before a trained model exists, `stand_in_archive(handler_file, task, tmp_path)` packs a handler file around a
small random-weight model of the right shape for its task (tskit/stand_in.py), and `stand_in_request(task)` is
a request that model answers: what the tests `tskit new handler` writes start from.
"""
from pathlib import Path

from export.inprocess import (  # noqa: F401  (the public API)
    load_archive_handler, load_handler, make_context, run_batch, run_envelope, unpack_archive,
)
from export.golden import compare
from tskit.stand_in import stand_in_request  # noqa: F401  (public: a request the stand-in of a task answers)


def assert_same_answer(expected, actual, atol: float = 1e-5) -> None:
    """Fail with the differences, one per line, unless the two answers agree within `atol`."""
    differences = compare(expected, actual, atol)
    assert not differences, "answers differ:\n" + "\n".join(differences[:10])


def stand_in_archive(handler_file: str | Path, task: str, work_dir: str | Path, config: str | Path | None = None,
                     name: str | None = None) -> Path:
    """`tskit build --handler handler_file` around the stand-in model of `task` (handlers.tasks.stand_in_tasks()), with the
    model-config.yaml `config` (its handler section under the stand-in's own settings); returns the archive."""
    from export.archive import ArchiveSpec, build_archive, read_config
    from tskit.stand_in import stand_in_files

    work = Path(work_dir)
    files = stand_in_files(task, work / "stand-in")
    settings = read_config(str(config) if config else None)
    settings["handler"] = {**(settings.get("handler") or {}), **files.handler_config}
    return build_archive(ArchiveSpec(
        name=name or Path(handler_file).stem, serialized_file=files.serialized_file, model_file=files.model_file,
        handler=str(handler_file), labels=files.labels, extra_files=files.extra_files, config=settings,
        export_path=str(work / "model_store"), model_dir=files.model_dir))
