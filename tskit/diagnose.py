"""Why a model version has no READY worker: the last error its workers wrote to TorchServe's model log.

Workers' output lands in `<dir TorchServe started in>/logs/model_log.log`, one line per output line:

    2026-11-23T01:37:13,194 [INFO ] W-9002-slow_1.0-stdout MODEL_LOG - Failed to load model slow, exception ...

TorchServe's worker logs a failed `initialize` as `Failed to load model NAME, exception MESSAGE` (the
message's further lines follow, indented, before the traceback); that message is the reason. Failing
that, the last exception line the version's workers logged is.
"""
import re
from pathlib import Path

LOG_NAME = "model_log.log"
TAIL_BYTES = 4 << 20  # enough for many restarts; a long-running server's log can be large
LINE = re.compile(r"^(?P<time>\S+) \[\s*\w+\s*\] W-(?P<worker>\d+)-(?P<tag>.+)-std(?:out|err) MODEL_LOG - (?P<msg>.*)$")
FAILED_LOAD = re.compile(r"^Failed to load model \S+, exception (?P<reason>.*)$")
EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b: .")
GENERIC = ("RuntimeError: 500 - Unknown exception",)  # the worker's own exit after a failed load


def model_log(workdir: str | Path) -> Path:
    return Path(workdir) / "logs" / LOG_NAME


def read_tail(path: Path, size: int = TAIL_BYTES) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read().decode(errors="replace")


def version_lines(text: str, model: str, version: str) -> list[re.Match]:
    """The log lines of `model` `version`'s workers (TorchServe tags them W-<id>-<model>_<version>)."""
    tag = f"{model}_{version}"
    return [m for m in map(LINE.match, text.splitlines()) if m and m["tag"] == tag]


def last_error(text: str, model: str, version: str, max_lines: int = 6) -> tuple[str, list[str]] | None:
    """(time, message lines) of the version's last load failure, else of its last exception line."""
    lines = version_lines(text, model, version)
    for i in range(len(lines) - 1, -1, -1):
        failed = FAILED_LOAD.match(lines[i]["msg"])
        if failed:
            message = [failed["reason"]]
            for follow in lines[i + 1:]:
                if follow["worker"] != lines[i]["worker"] or not follow["msg"].startswith((" ", "\t")):
                    break
                message.append(follow["msg"].strip())
            return lines[i]["time"], message[:max_lines]
    for m in reversed(lines):
        if EXCEPTION.match(m["msg"]) and not m["msg"].startswith(GENERIC):
            return m["time"], [m["msg"]]
    return None


def no_ready_worker_report(workdir: str | Path, model: str, version: str) -> list[str]:
    """Lines for `tskit status` under a version with no READY worker."""
    path = model_log(workdir)
    found = last_error(read_tail(path), model, version) if path.exists() else None
    if found is None:
        return [f"  no READY worker; no error from it in {path}"]
    when, message = found
    return [f"  no READY worker; last error in {path} at {when}:"] + ["    " + line for line in message]
