"""Run requests through an unpacked archive's OWN handler code, in a fresh Python.

`tskit build` uses it to compute golden outputs and `tskit verify` to reproduce them: both exercise
exactly the code inside the archive (the `handlers` package it bundles), not this checkout's.

    python -m export.replay MODEL_DIR JOB.json OUT.json
JOB.json:   {"golden": [{"input": "golden/x.jpg", "content_type": "image/jpeg"}, ...],
             "reference": [{"input": "/path/of/payload", "name": ..., "content_type": ...}, ...] or null}
OUT.json:   {"precision": "fp32", "model_format": "eager", "results": [[status, body], ...],
             "reference": drift reference statistics (export/reference.py) or null}
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml


def replay(model_dir: str | Path, cases: list[dict], work_dir: str | Path, reference: list[dict] | None = None,
           sealing: bool = False) -> dict:
    """The golden `cases` (and the drift `reference` cases, if any) through the archive at `model_dir`, in a new
    interpreter that loads its handler once; returns OUT.json. `sealing`: the archive is being built and has no
    manifest yet (its integrity check lets it load)."""
    work = Path(work_dir)
    job_file, out_file = work / "replay-job.json", work / "replay-out.json"
    job_file.write_text(json.dumps({"golden": cases, "reference": reference}))
    from handlers.integrity import SEALING_ENV  # here: the replayed Python must import the archive's handlers

    env = {**os.environ, SEALING_ENV: "1"} if sealing else None
    result = subprocess.run([sys.executable, "-m", "export.replay", str(model_dir), str(job_file), str(out_file)],
                            capture_output=True, text=True, env=env)
    refusal = [line[len(REFUSAL):] for line in result.stderr.splitlines() if line.startswith(REFUSAL)]
    if refusal:
        raise ValueError(refusal[-1])
    if result.returncode != 0:
        raise RuntimeError(f"running the archive's handler failed:\n{result.stderr[-4000:]}")
    return json.loads(out_file.read_text())


REFUSAL = "tskit-refusal: "  # the line a replay ends with when the archive cannot serve: said as is, in one line


def describe_input(batch) -> str:
    if isinstance(batch, dict):
        return "{" + ", ".join(f"{k}: {describe_input(v)}" for k, v in batch.items()) + "}"
    if isinstance(batch, (list, tuple)):
        return "[" + ", ".join(describe_input(v) for v in batch) + "]"
    shape = getattr(batch, "shape", None)
    return f"{list(shape)} {str(batch.dtype).replace('torch.', '')}" if shape is not None else type(batch).__name__


def run_once(handler, batch_size: int) -> None:
    """The handler's example input through its model at batch 1 and at the archive's batch size, as a worker's
    warm-up runs it: a model that cannot take what the config produces (a fixed 240 x 240 ONNX input behind
    `crop: 224`, say) is refused here, naming both shapes, instead of failing every worker at load."""
    for n in sorted({1, batch_size}):
        try:
            items = handler.example_items(n)
        except NotImplementedError:  # a new task that has not written it yet: nothing to run
            return
        batch = handler.collate(items)
        try:
            handler.forward(batch)
        except Exception as err:
            expected = getattr(handler.model, "input_shape", None)
            wants = f"; the {handler.model_format} model takes {expected}" if expected else ""
            message = " ".join(str(err).split())[:300]
            sys.exit(f"{REFUSAL}the model cannot take the input its config produces: a batch of {n} is "
                     f"{describe_input(batch)}{wants} ({type(err).__name__}: {message})")


def _main(model_dir: str, job_file: str, out_file: str) -> None:
    root = Path(model_dir).resolve()
    sys.path.insert(0, str(root))  # the archive's handlers package wins over any installed one
    from export.golden import as_request
    from export.inprocess import handler_class, load_handler, run_batch
    from export.reference import reference_of

    from handlers.base import TskitHandler

    config_name = json.loads((root / "MAR-INF" / "MANIFEST.json").read_text())["model"].get("configFile")
    batch_size = int((yaml.safe_load((root / config_name).read_text()) or {}).get("batchSize", 1)) if config_name else 1
    handler = load_handler(handler_class(root), root, batch_size=batch_size,
                           yaml_overrides={"handler": {"warmup": False}})
    if isinstance(handler, TskitHandler):
        run_once(handler, batch_size)
    job = json.loads(Path(job_file).read_text())
    try:
        reference = reference_of(handler, job["reference"]) if job["reference"] else None
    except ValueError as err:
        sys.exit(str(err))
    results = []
    for case in job["golden"]:  # one request per batch: golden answers must not depend on batch neighbours
        payload = (root / case["input"]).read_bytes()
        results += run_batch(handler, [as_request(payload, case["content_type"])])
    # a handler written against TorchServe's own classes has no precision policy: it runs as loaded (fp32)
    Path(out_file).write_text(json.dumps({"precision": getattr(handler, "precision", "fp32"),
                                          "model_format": getattr(handler, "model_format", type(handler).__name__),
                                          "results": results, "reference": reference}))


if __name__ == "__main__":
    _main(*sys.argv[1:4])
