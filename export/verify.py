"""`tskit verify`: prove an archive still holds, and serves, what was validated at build time.

Checks, in order: with trusted keys, the signature over the manifest (export/signing.py); the manifest is
there; every file matches its sha256; the golden inputs replayed through the archive's own handler in a
fresh Python give the golden outputs; and, with a live TorchServe, the same inputs over HTTP give them too. Top-1 must be identical and every number within
the tolerance of the precisions involved (export.golden.TOLERANCE).
"""
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from export.golden import compare, tolerance, top1
from export.replay import replay
from handlers.integrity import MANIFEST_NAME, integrity_problems, read_manifest
from export.inprocess import unpack_archive


@dataclass
class Report:
    archive: str
    lines: list[str] = field(default_factory=list)
    failures: int = 0

    def ok(self, message: str) -> None:
        self.lines.append(f"ok    {message}")

    def fail(self, message: str, details: list[str] = ()) -> None:
        self.failures += 1
        self.lines.append(f"FAIL  {message}")
        self.lines += [f"        {d}" for d in details]

    @property
    def passed(self) -> bool:
        return self.failures == 0

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else f"FAILED ({self.failures} check(s))"
        return "\n".join([f"verify {self.archive}"] + self.lines + [verdict])


def check_cases(report: Report, where: str, cases: list[dict], results: list, atol: float) -> None:
    for case, (status, body) in zip(cases, results):
        diffs = [f"HTTP {status}: {body}"] if status != 200 else compare(case["output"], body, atol)
        if diffs:
            report.fail(f"{where}: {case['input']}", diffs)
        else:
            report.ok(f"{where}: {case['input']} (top-1 {top1(body)!r}, within {atol:g})")


def check_signature(report: Report, mar: str | Path, trusted_keys: list) -> None:
    from export.signing import signature_problems

    check = signature_problems(mar, trusted_keys)
    if check.trusted:
        report.ok(f"signature: {check.key} verifies the manifest")
    elif not check.signed:
        report.fail("signature: the archive is unsigned (tskit sign ARCHIVE --key PRIVATE.pem)")
    else:
        report.fail("signature", check.problems)


def verify_archive(mar: str | Path, client=None, trusted_keys: list = ()) -> Report:
    """`trusted_keys`: public keys the archive's signature must verify with (none: the signature is not
    checked)."""
    report = Report(str(mar))
    if trusted_keys:
        check_signature(report, mar, list(trusted_keys))
    with tempfile.TemporaryDirectory(prefix="tskit-verify-") as tmp:
        root = unpack_archive(mar, Path(tmp) / "archive")
        manifest = read_manifest(root)
        if manifest is None:
            report.fail(f"no {MANIFEST_NAME}: this archive was not built by tskit build")
            return report
        problems = integrity_problems(root, manifest)
        if problems:
            report.fail("file hashes", problems)
            return report
        report.ok(f"file hashes: {len(manifest['files'])} files match")
        golden = manifest["golden"]
        cases = golden["cases"]
        if not cases:
            report.ok("no golden cases stored: hashes only")
            return report
        out = replay(root, cases, tmp)
        atol = tolerance(golden["precision"], out["precision"])
        check_cases(report, f"in-process ({out['model_format']}, {out['precision']})", cases, out["results"], atol)
        if client is not None:
            model = manifest["model"]
            results = []
            for case in cases:
                response = client.predict(model["name"], (root / case["input"]).read_bytes(), version=model["version"],
                                          headers={"Content-Type": case["content_type"]})
                try:
                    body = response.json()
                except ValueError:
                    body = response.text
                results.append((response.status_code, body))
            check_cases(report, f"live {client.inference_url}", cases, results, atol)
    return report
