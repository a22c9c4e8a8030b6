"""`tskit new handler NAME --from BASE`: a handler file of your own, its model-config.yaml, and a pytest file
that runs it in-process through `tskit.testing` on a stand-in model and passes as written.

The handler subclasses one of this library's handlers (or `TskitHandler` itself for a new task, `--from base`)
and overrides TorchServe's `postprocess` the way TorchServe's docs teach: `super()` first, then your change.
"""
import re
from pathlib import Path

import yaml

from export.archive import DEFAULT_FRONTEND
from handlers.tasks import scaffold_bases

OVERRIDES = '''

class {cls}({base}):
    """{name}: the library's {base}, with your changes.

    TorchServe's contract, each step overridable with super():

        preprocess(data) -> batch        every request decoded alone; a bad one gets its 4xx and never gets further
        inference(batch) -> outputs      the model
        postprocess(outputs) -> answers  one per request that reached inference, in order

    Finer hooks: decode(request), collate(items), respond(outputs). Decoding, batching, precision, metrics,
    drift, explanations and KServe stay the library's.
    """

    def postprocess(self, data):
        answers = super().postprocess(data)
        return answers  # change the answers here
'''

NEW_TASK = '''

class {cls}({base}):
    """{name}: a new task on TskitHandler's hooks. Requests are JSON lists of `width` numbers; answers are the
    model's outputs. Everything else (per-request errors, batching, precision, metrics, KServe) is the library's."""

    config_defaults = {{"width": 30}}  # numbers per request (the model's input width)

    def setup(self, model_dir: str) -> None:
        self.width = self.config["width"]

    def decode(self, request: dict) -> torch.Tensor:
        """One request to one model input; a BadInput is that request's 4xx (the rest of the batch goes on)."""
        value = request_value(request)  # the body, or the multipart field `data`; JSON arrives decoded
        if not (isinstance(value, list) and len(value) == self.width
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise BadInput(f"send a JSON list of {{self.width}} numbers", kind="ShapeMismatch")
        return torch.tensor(value, dtype=torch.float32)

    def collate(self, items: list) -> torch.Tensor:
        return self.to_model_input(torch.stack(items))  # on the worker's device, in its precision

    def respond(self, outputs: torch.Tensor) -> list:
        return outputs.float().cpu().tolist()  # one JSON-able answer per item

    def example_items(self, n: int) -> list:
        return [torch.zeros(self.width) for _ in range(n)]  # warm-up inputs
'''

TEST = '''"""Tests of {module}.py, run in-process as a TorchServe worker runs it (tskit.testing).

Until you have a trained model they use a stand-in: a small model of the right shape with random weights
(tskit.testing.stand_in_archive), so they check your code, not accuracy. With your model, build the archive
(`tskit build {name} --handler {module}.py --serialized-file ... --config model-config.yaml`)
and load it:
    handler = load_archive_handler("model_store/{name}.mar", tmp_path)
"""
from pathlib import Path

import pytest

from tskit.testing import assert_same_answer, load_archive_handler, run_batch, stand_in_archive, stand_in_request

HERE = Path(__file__).resolve().parent
TASK = "{task}"


@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    work = tmp_path_factory.mktemp("{module}")
    mar = stand_in_archive(HERE / "{module}.py", TASK, work, config=HERE / "model-config.yaml")
    return load_archive_handler(mar, work / "unpacked")


def test_answers_a_request(handler):
    [(status, answer)] = run_batch(handler, [stand_in_request(TASK)])
    assert status == 200, answer
    assert isinstance(answer, {answer_type})


def test_a_batch_is_answered_in_order_and_a_bad_request_fails_alone(handler):
    results = run_batch(handler, [stand_in_request(TASK), {{"body": {bad}}}, stand_in_request(TASK)])
    assert [status for status, _ in results] == [200, {status}, 200]
    assert_same_answer(results[0][1], results[2][1])
    assert set(results[1][1]) == {{"code", "type", "message"}}
'''

def class_name(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[_\W]+", name) if part)


def config_text(base: str) -> str:
    config = {**DEFAULT_FRONTEND, "handler": dict(scaffold_bases()[base].scaffold.config)}
    return ("# TorchServe's settings for this model (they win over config.properties' models= entry) and, under\n"
            "# `handler:`, the handler's own keys (an unknown key fails the load with the list of allowed ones).\n"
            + yaml.safe_dump(config, sort_keys=False))


def new_handler(name: str, base: str, out: str | Path = ".") -> list[Path]:
    """Write NAME.py, model-config.yaml and test_NAME.py into `out`; refuses to overwrite a file."""
    bases = scaffold_bases()
    if base not in bases:
        raise ValueError(f"--from must be one of {list(bases)}, got {base!r}")
    if not name.isidentifier() or name == "handlers":
        raise ValueError(f"handler name {name!r} must be a Python module name (letters, digits, underscores) "
                         "other than `handlers`")
    out, scaffold = Path(out), bases[base].scaffold
    files = {out / f"{name}.py": handler_source(name, base), out / "model-config.yaml": config_text(base),
             out / f"test_{name}.py": TEST.format(module=name, name=name, task=base, bad=scaffold.bad_request,
                                                  status=scaffold.bad_status, answer_type=scaffold.answer_type)}
    existing = [str(path) for path in files if path.exists()]
    if existing:
        raise ValueError(f"not overwriting {', '.join(existing)}: pick another name or --out folder")
    out.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
    return list(files)


def handler_source(name: str, base: str) -> str:
    task = scaffold_bases()[base]
    module, cls = f"handlers.{task.module}", task.class_name
    header = f'"""{name}: a TorchServe handler built on torchserve-kit (`tskit new handler --from {base}`)."""\n'
    imports = f"from {module} import {cls}\n"
    if base == "base":
        imports = f"import torch\n\n{imports}from handlers.errors import BadInput\nfrom handlers.payload import request_value\n"
    body = NEW_TASK if base == "base" else OVERRIDES
    return header + imports + body.format(cls=class_name(name), base=cls, name=name)
