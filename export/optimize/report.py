"""What `tskit optimize` measured and decided: printed as tables, stored whole in the archive's manifest."""
from dataclasses import asdict, dataclass, field

from export.optimize.candidates import Candidate
from export.optimize.guard import GuardResult, Thresholds


@dataclass
class Decoder:
    name: str  # the image classifier's `decoder` setting
    ms_per_image: float = 0.0  # decode + resize + crop + collate, one core
    guard: GuardResult | None = None
    verdict: str = ""


ACCURACY_COLUMNS = "overall | (a) confident | held-out (a) | (b) top-5 | chosen or why not |"
RULE = "| --- | --- | --- | --- | --- | --- | --- |"


def accuracy_cells(g: GuardResult | None) -> list[str]:
    if g is None:
        return ["-"] * 4
    return [f"{g.overall:.1%}", f"{g.confident:.1%} of {g.confident_views}", f"{g.held_out_confident:.1%}",
            f"{g.top5:.1%}"]


@dataclass
class Report:
    archive: str
    cpu: dict
    batch_size: int
    cores: int
    photos: int
    views: int
    held_out_photos: int
    candidates: list[Candidate]
    thresholds: Thresholds = field(default_factory=Thresholds)
    budget_s: float = 0.0
    chosen: str | None = None
    decoders: list[Decoder] = field(default_factory=list)
    decoder: str | None = None  # the chosen one
    served: dict = field(default_factory=dict)  # split -> served images/s of the chosen archive
    split: str | None = None  # the chosen "workers x threads"
    split_reason: str = ""
    seconds: float = 0.0  # the whole run

    def table(self) -> str:
        flags = ", ".join(self.cpu["flags"]) or "no AVX-512/AMX"
        t = self.thresholds
        lines = [f"tskit optimize {self.archive} on {self.cpu['model']} ({self.cores} cores; {flags}): "
                 f"{self.seconds:.0f} s of a {self.budget_s:.0f} s budget",
                 f"guard: {self.views} views of {self.photos} photos ({self.held_out_photos} held out of "
                 f"calibration); (a) confident top-1 agreement >= {t.min_confident:.0%}, (b) reference top-1 in "
                 f"top-5 >= {t.min_top5:.0%}",
                 f"| candidate | forward images/s, batch {self.batch_size} (workers x threads) | " + ACCURACY_COLUMNS,
                 RULE]
        for c in self.candidates:
            best = c.best
            others = "".join(f"; {k}: {v:.0f}" for k, v in c.rates.items() if best and k != best[0])
            speed = f"{best[1]:.0f} ({best[0]}){others}" if best else "-"
            name = c.name + (" (as built)" if c.as_built else "")
            lines.append(f"| {name} | {speed} | " + " | ".join(accuracy_cells(c.guard)) + f" | {c.verdict} |")
        for c in self.candidates:
            if c.search:
                lines.append(f"{c.name}: {search_line(c.search)}")
        if self.decoders:
            lines += ["", f"| preprocessing, with {self.chosen} | ms per image (one core) | " + ACCURACY_COLUMNS, RULE]
            for d in self.decoders:
                lines.append(f"| decoder {d.name} | {d.ms_per_image:.2f} | " + " | ".join(accuracy_cells(d.guard))
                             + f" | {d.verdict} |")
        if self.served:
            lines += ["", f"| workers x threads | served images/s: {self.chosen}, decoder {self.decoder}, JPEG "
                          f"requests in batches of {self.batch_size} |", "| --- | --- |"]
            lines += [f"| {k} | {v:.0f}{' (chosen)' if k == self.split else ''} |" for k, v in self.served.items()]
            lines.append(f"{self.split} chosen: {self.split_reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def search_line(search: dict) -> str:
    """One line for the mixed-int8 search: what it kept in floating point, in how many steps and seconds."""
    steps = search["steps"]
    head = (f"{len(search['kept'])} of {search['quantizers']} quantized layers kept in floating point"
            if search["kept"] else f"no passing mix of {search['quantizers']} quantized layers")
    tried = ", ".join(f"{s['kept']}{'+' if s['passes'] else '-'}" for s in steps) or "none"
    return (f"{head}; ranked {search['ranked']}/{search['quantizers']}; steps (layers kept, +passes/-refused): "
            f"{tried}; {search['seconds']:.0f} s; stopped: {search['stopped']}")
