"""Run requests through an unpacked archive's OWN handler code, in a fresh Python.

`tskit build` uses it to compute golden outputs and `tskit verify` to reproduce them: both exercise
exactly the code inside the archive (the `handlers` package it bundles), not this checkout's.

    python -m export.replay MODEL_DIR CASES.json OUT.json
CASES.json: [{"input": "golden/x.jpg", "content_type": "image/jpeg"}, ...]
OUT.json:   {"precision": "fp32", "model_format": "eager", "results": [[status, body], ...]}
"""
import json
import subprocess
import sys
from pathlib import Path


def run_in_fresh_python(module: str, model_dir: str | Path, cases: list[dict], work_dir: str | Path) -> dict:
    """`python -m MODULE MODEL_DIR CASES.json OUT.json` in a new interpreter; returns OUT.json."""
    work = Path(work_dir)
    stem = module.rsplit(".", 1)[-1]
    cases_file, out_file = work / f"{stem}-cases.json", work / f"{stem}-out.json"
    cases_file.write_text(json.dumps(cases))
    result = subprocess.run([sys.executable, "-m", module, str(model_dir), str(cases_file), str(out_file)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"running the archive's handler ({module}) failed:\n{result.stderr[-4000:]}")
    return json.loads(out_file.read_text())


def replay(model_dir: str | Path, cases: list[dict], work_dir: str | Path) -> dict:
    return run_in_fresh_python("export.replay", model_dir, cases, work_dir)


def _main(model_dir: str, cases_file: str, out_file: str) -> None:
    root = Path(model_dir).resolve()
    sys.path.insert(0, str(root))  # the archive's handlers package wins over any installed one
    from export.golden import as_request
    from export.inprocess import handler_class, load_handler, run_batch

    handler = load_handler(handler_class(root), root)
    cases = json.loads(Path(cases_file).read_text())
    results = []
    for case in cases:  # one request per batch: golden answers must not depend on batch neighbours
        payload = (root / case["input"]).read_bytes()
        results += run_batch(handler, [as_request(payload, case["content_type"])])
    # a handler written against TorchServe's own classes has no precision policy: it runs as loaded (fp32)
    Path(out_file).write_text(json.dumps({"precision": getattr(handler, "precision", "fp32"),
                                          "model_format": getattr(handler, "model_format", type(handler).__name__),
                                          "results": results}))


if __name__ == "__main__":
    _main(*sys.argv[1:4])
