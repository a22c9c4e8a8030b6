"""Drift reference statistics, computed at build time by the archive's OWN handler on reference inputs.

The inputs go through the handler's `preprocess` and `inference`, exactly as requests do, so the
statistics (`handlers.drift.reference_stats` of `drift_rows`) describe the preprocessed representation the
model sees. The result is stored in the archive as `tskit-reference.json` and hashed by its manifest. It is
computed in the same fresh Python as the golden answers (`export.replay`): one handler load per build.
"""
from pathlib import Path

from export.golden import GoldenInput, inputs_from_files

BATCH = 16  # requests per handler batch while computing the reference


def read_reference_inputs(path: str | Path) -> list[GoldenInput]:
    """`tskit build --reference`: a folder (every file one request), a `.jsonl` file (every line one JSON
    request) or any other file (one request)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"reference inputs not found: {path}")
    if path.suffix == ".jsonl":
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [GoldenInput(f"{path.stem}-{i}.json", line.encode("utf-8"), "application/json")
                for i, line in enumerate(lines)]
    return inputs_from_files([path])


def reference_cases(inputs: list[GoldenInput], work_dir: str | Path) -> list[dict]:
    """The reference inputs as files under `work_dir`, as cases for `export.replay.replay(reference=...)`."""
    folder = Path(work_dir) / "reference-inputs"
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, item in enumerate(inputs):
        path = folder / f"{i:05d}"
        path.write_bytes(item.payload)
        cases.append({"input": str(path.resolve()), "name": item.name, "content_type": item.content_type})
    return cases


def reference_of(handler, cases: list[dict]) -> dict:
    """Reference statistics of `cases` through a loaded handler; ValueError names the input it refused."""
    import numpy as np

    from export.golden import as_request
    from handlers.drift import reference_stats

    names, chunks = None, []
    for start in range(0, len(cases), BATCH):
        chunk = cases[start:start + BATCH]
        requests = [as_request(Path(case["input"]).read_bytes(), case["content_type"]) for case in chunk]
        state = handler.begin_batch(len(requests))
        inputs = handler.preprocess(requests)  # the user's override included: what the model sees
        for k in range(len(chunk)):
            if state.answered[k]:
                refusal = state.answers[k]
                raise ValueError(f"reference input {chunk[k]['name']} was refused ({refusal['code']}): "
                                 f"{refusal['message']}")
        rows = handler.drift_rows(inputs, handler.inference(inputs))
        if rows is None:
            raise ValueError(f"{type(handler).__name__} describes no drift features: build without reference inputs")
        names, values = rows
        chunks.append(values)
    stats = reference_stats(np.concatenate(chunks), names)
    stats["inputs"] = len(cases)
    return stats
