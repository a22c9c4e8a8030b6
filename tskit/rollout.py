"""Model versions over the management API: register beside the serving version, replay, promote or refuse;
roll back to the version served before.

A rollout never touches the serving version until the new one has proven itself: the new archive is
registered as another version of the same model (TorchServe keeps both, each with its own workers), a sample
of inputs is replayed through both, and only if top-1 agreement and latency pass their thresholds does
`set-default` move traffic, which the frontend does atomically. A refused version is unregistered. The
promotion history is kept in `<workdir>/.tskit/rollouts.json`, so `rollback` knows where to go back to.
Registration needs `enable_model_api=true` (TorchServe 0.12 turns it off by default).
"""
import filecmp
import json
import shutil
import statistics
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from export.golden import GoldenInput, top1
from export.variants import ARCHIVER_MANIFEST
from handlers.integrity import MANIFEST_NAME
from tskit.client import ServerError, TorchServeClient

HISTORY = Path(".tskit") / "rollouts.json"


def archive_identity(mar: str | Path) -> tuple[str, str]:
    """(model name, version) from the archive's MAR-INF/MANIFEST.json."""
    with zipfile.ZipFile(mar) as zf:
        model = json.loads(zf.read(ARCHIVER_MANIFEST))["model"]
    return model["modelName"], model["modelVersion"]


def archive_samples(mar: str | Path) -> list[GoldenInput]:
    """The golden inputs an archive carries (tskit-manifest.json): real inputs its builder chose."""
    with zipfile.ZipFile(mar) as zf:
        if MANIFEST_NAME not in zf.namelist():
            return []
        cases = json.loads(zf.read(MANIFEST_NAME))["golden"]["cases"]
        return [GoldenInput(c["input"], zf.read(c["input"]), c["content_type"]) for c in cases]


@dataclass
class VersionStats:
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")


@dataclass
class ReplayReport:
    model: str
    old: str
    new: str
    samples: int
    agreed: int
    old_stats: VersionStats
    new_stats: VersionStats
    disagreements: list[str]
    close_calls: int = 0  # of `agreed`: unsure answers whose two leading labels swapped places

    @property
    def agreement(self) -> float:
        return self.agreed / self.samples if self.samples else 0.0

    def refusals(self, min_agreement: float, max_latency_ratio: float) -> list[str]:
        """Why the new version may not be promoted; [] when it may."""
        reasons = []
        if self.new_stats.errors:
            reasons.append(f"{len(self.new_stats.errors)} failed request(s) on {self.new}: {self.new_stats.errors[0]}")
        if self.agreement < min_agreement:
            reasons.append(f"top-1 agreement {self.agreement:.1%} < {min_agreement:.1%}")
        ratio = self.new_stats.p50_ms / self.old_stats.p50_ms if self.old_stats.latencies_ms else 1.0
        if ratio > max_latency_ratio:
            reasons.append(f"p50 latency {self.new_stats.p50_ms:.1f} ms is {ratio:.2f}x the serving version's "
                           f"{self.old_stats.p50_ms:.1f} ms (> {max_latency_ratio:g}x)")
        return reasons

    def summary(self) -> str:
        close = (f"; {self.close_calls} of them close calls (both unsure, p < {UNSURE}) whose two leading labels "
                 "swapped" if self.close_calls else "")
        return (f"{self.model}: {self.agreed}/{self.samples} top-1 agree ({self.agreement:.1%}{close}); p50 "
                f"{self.old} {self.old_stats.p50_ms:.1f} ms, {self.new} {self.new_stats.p50_ms:.1f} ms; errors "
                f"{self.old} {len(self.old_stats.errors)}, {self.new} {len(self.new_stats.errors)}")


def _ask(client: TorchServeClient, model: str, version: str, sample: GoldenInput, stats: VersionStats):
    start = time.perf_counter()
    try:
        response = client.predict(model, sample.payload, version=version,
                                  headers={"Content-Type": sample.content_type})
    except Exception as err:  # a refused connection is a failed request like any other
        stats.errors.append(f"{sample.name}: {err}")
        return None
    stats.latencies_ms.append((time.perf_counter() - start) * 1000)
    if not response.ok:
        stats.errors.append(f"{sample.name}: {response.status_code} {response.text[:200]}")
        return None
    return response.json()


UNSURE = 0.5  # a top-1 probability under this is a close call the model itself is unsure of


def _leading(answer) -> list[tuple[str, float]] | None:
    """The two leading (label, probability) pairs of a `{label: probability}` answer, else None."""
    if not isinstance(answer, dict) or "label" in answer or not answer:
        return None
    pairs = list(answer.items())[:2]
    return pairs if all(isinstance(p, (int, float)) and not isinstance(p, bool) for _, p in pairs) else None


def agreement_of(before, after) -> str | None:
    """How the new answer agrees with the serving one: "same" top-1; "close call" when both versions are unsure
    (top-1 probability under UNSURE) and only swapped their two leading labels (the accuracy guard's view:
    such inputs flip between equally good engines for no user-visible loss); None if they disagree."""
    if before is None or after is None:
        return None
    if top1(before) == top1(after):
        return "same"
    old, new = _leading(before), _leading(after)
    if old and new and old[0][1] < UNSURE and new[0][1] < UNSURE and \
            {label for label, _ in old} == {label for label, _ in new}:
        return "close call"
    return None


def replay_versions(client: TorchServeClient, model: str, old: str, new: str, samples: list[GoldenInput],
                    rounds: int = 3) -> ReplayReport:
    """Every sample through both versions, `rounds` times each (latency is the median of all calls);
    agreement is judged on the first round's answers."""
    old_stats, new_stats = VersionStats(), VersionStats()
    verdicts, disagreements = [], []
    for round_ in range(rounds):
        for sample in samples:
            before = _ask(client, model, old, sample, old_stats)
            after = _ask(client, model, new, sample, new_stats)
            if round_:
                continue
            verdicts.append(agreement_of(before, after))
            if verdicts[-1] is None:
                disagreements.append(f"{sample.name}: {old} -> {top1(before)!r}, {new} -> {top1(after)!r}")
    return ReplayReport(model, old, new, len(samples), sum(v is not None for v in verdicts), old_stats, new_stats,
                        disagreements, verdicts.count("close call"))


# ---- versions and history ----------------------------------------------------------------------------
def default_version(client: TorchServeClient, model: str) -> dict:
    """TorchServe's description of the version `/predictions/{model}` goes to."""
    return client.describe(model)[0]


def versions(client: TorchServeClient, model: str) -> list[str]:
    return [v["modelVersion"] for v in client.describe_all(model)]


def read_history(workdir: str | Path) -> dict[str, list[str]]:
    path = Path(workdir) / HISTORY
    return json.loads(path.read_text()) if path.exists() else {}


def write_history(workdir: str | Path, history: dict[str, list[str]]) -> None:
    path = Path(workdir) / HISTORY
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(history, indent=1))


def set_default(client: TorchServeClient, model: str, version: str) -> None:
    response = client.management("PUT", f"/models/{model}/{version}/set-default")
    if not response.ok:
        raise ServerError(f"set-default {model} {version} failed: {response.status_code} {response.text}")


# ---- register / unregister ---------------------------------------------------------------------------
def stage_in_store(mar: str | Path, model_store: str | Path, version: str = "") -> str:
    """The archive's file name inside the model store (copied there if it is elsewhere): TorchServe only
    registers archives it can reach through `allowed_urls`, and the shipped config allows the store alone. A
    different archive of the same file name there (the version it is to replace, say) is left alone: the copy
    is named NAME-VERSION.mar instead."""
    mar, store = Path(mar).resolve(), Path(model_store).resolve()
    if mar.parent == store:
        return mar.name
    for name in (mar.name, f"{mar.stem}-{version}{mar.suffix}" if version else None):
        if name is None:
            break
        target = store / name
        if not target.exists():
            shutil.copyfile(mar, target)
            return name
        if filecmp.cmp(mar, target, shallow=False):
            return name
    raise ValueError(f"{store} already holds other archives named {mar.name} and {mar.stem}-{version}{mar.suffix}: "
                     "rename the archive")


def register(client: TorchServeClient, mar: str | Path, model_store: str | Path, workers: int = 1) -> tuple[str, str]:
    """Register an archive from the model store and wait for its workers. Returns (model, version)."""
    name, version = archive_identity(mar)
    url = stage_in_store(mar, model_store, version)
    response = client.management("POST", "/models", timeout=600, params={
        "url": url, "initial_workers": workers, "synchronous": "true"})
    if response.status_code == 405:
        raise ServerError("the model register API is disabled (TorchServe 0.12 default); start TorchServe with "
                          "enable_model_api=true in config.properties to register, roll out or roll back")
    if not response.ok:
        raise ServerError(f"registering {url} failed: {response.status_code} {response.text.strip()}")
    return name, version


def unregister(client: TorchServeClient, model: str, version: str | None = None) -> None:
    path = f"/models/{model}" + (f"/{version}" if version else "")
    response = client.management("DELETE", path, timeout=600)
    if response.status_code == 405:
        raise ServerError("the model delete API is disabled (TorchServe 0.12 default); start TorchServe with "
                          "enable_model_api=true to unregister")
    if not response.ok:
        raise ServerError(f"unregistering {model} {version or ''} failed: {response.status_code} {response.text}")


# ---- rollout / rollback ------------------------------------------------------------------------------
@dataclass
class RolloutResult:
    promoted: bool
    report: ReplayReport
    reasons: list[str]


def rollout(client: TorchServeClient, mar: str | Path, model_store: str | Path, workdir: str | Path,
            samples: list[GoldenInput] | None = None, min_agreement: float = 0.99, max_latency_ratio: float = 1.5,
            rounds: int = 3) -> RolloutResult:
    name, new = archive_identity(mar)
    if new in versions(client, name):
        raise ValueError(f"{name} version {new} is already registered: build the new archive with another "
                         "--version")
    serving = default_version(client, name)
    old = serving["modelVersion"]
    samples = samples or archive_samples(mar)
    if not samples:
        raise ValueError(f"{mar} carries no golden inputs to replay: pass --samples FILES_OR_DIR")
    workers = max(1, len(serving.get("workers", [])))
    register(client, mar, model_store, workers)
    try:
        report = replay_versions(client, name, old, new, samples, rounds)
        reasons = report.refusals(min_agreement, max_latency_ratio)
    except BaseException:  # the serving version stays alone, whatever stopped the replay
        unregister(client, name, new)
        raise
    if reasons:
        unregister(client, name, new)
        return RolloutResult(False, report, reasons)
    set_default(client, name, new)
    history = read_history(workdir)
    trail = history.setdefault(name, [])
    if not trail or trail[-1] != old:
        trail.append(old)
    trail.append(new)
    write_history(workdir, history)
    return RolloutResult(True, report, [])


def rollback(client: TorchServeClient, model: str, workdir: str | Path, to: str | None = None) -> tuple[str, str]:
    """Make the version served before the current one the default again (both stay registered, so no
    request waits for a worker). Returns (from, to)."""
    current = default_version(client, model)["modelVersion"]
    registered = versions(client, model)
    history = read_history(workdir)
    trail = [v for v in history.get(model, []) if v in registered]
    earlier = trail[:trail.index(current)] if current in trail else trail
    if to is None:
        if not earlier:
            raise ValueError(f"no earlier version of {model} to roll back to (registered: {registered}); "
                             "name one with --to VERSION")
        to = earlier[-1]
    if to not in registered:
        raise ValueError(f"{model} version {to} is not registered (registered: {registered})")
    set_default(client, model, to)
    if current in trail:
        history[model] = earlier
        write_history(workdir, history)
    return current, to

