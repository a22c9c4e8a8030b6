"""What `tskit optimize` tries: one table of engines and precisions, each row a name `--only` takes.

    onnxruntime-fp32           ONNX exported from the reference, on ONNX Runtime
    openvino-fp32              OpenVINO IR converted from the reference
    openvino-bf16              the same IR with OpenVINO's bf16 inference-precision hint (CPUs with native bf16)
    openvino-int8              NNCF post-training quantization, calibrated on views of the calibration photos
    openvino-int8-bf16         the same int8 IR; what is not int8 computes in bf16
    openvino-int8-mixed        int8 with the layers that hurt the guard most kept in floating point, found by a
                               search within the run's budget (export/optimize/mixed_int8.py); tried only when
                               no plain int8 row passes
    openvino-int8-mixed-bf16   the same, its floating-point part in bf16

and the archive as built, named by its engine and precision (`torch-fp32` for an eager archive, `torchscript-fp32`,
`aoti-fp32`...; an ONNX archive's own file is the `onnxruntime-fp32` row). Names have no spaces or commas, so
`--only openvino-int8,openvino-int8-mixed` can name any of them.
"""
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # this module stays free of torch: the CLI checks --only with it
    from export.optimize.guard import GuardResult

# the engine that serves each archive format, as the archive is built (no export)
AS_BUILT_ENGINE = {"eager": "torch", "torchscript": "torchscript", "exported": "torch-export", "aoti": "aoti",
                   "onnx": "onnxruntime", "openvino": "openvino"}
TORCH_PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_BUDGET_S = 480  # seconds for a whole run: a Lite0-sized model stays under 10 minutes on 2 cores


@dataclass(frozen=True)
class Recipe:
    name: str
    engine: str  # onnxruntime | openvino
    precision: str  # what the worker computes in: fp32, bf16, int8
    quantize: str = ""  # "" | "plain" (NNCF PTQ) | "mixed" (PTQ, then the search)
    bf16_hint: bool = False  # OpenVINO computes what is not int8 in bf16

    @property
    def needs(self) -> tuple[str, ...]:
        """The Python packages this row cannot be built without."""
        if self.engine == "onnxruntime":
            return ("onnx", "onnxruntime")
        return ("openvino", "nncf") if self.quantize else ("openvino",)


RECIPES = (
    Recipe("onnxruntime-fp32", "onnxruntime", "fp32"),
    Recipe("openvino-fp32", "openvino", "fp32"),
    Recipe("openvino-bf16", "openvino", "bf16", bf16_hint=True),
    Recipe("openvino-int8", "openvino", "int8", "plain"),
    Recipe("openvino-int8-bf16", "openvino", "int8", "plain", bf16_hint=True),
    Recipe("openvino-int8-mixed", "openvino", "int8", "mixed"),
    Recipe("openvino-int8-mixed-bf16", "openvino", "int8", "mixed", bf16_hint=True),
)


def as_built_name(fmt: str, precision: str) -> str:
    return f"{AS_BUILT_ENGINE[fmt]}-{precision}"


def known_names() -> list[str]:
    """Every name `--only` takes: the table's rows, then the archive-as-built names of the torch formats."""
    as_built = [as_built_name(fmt, p) for fmt in ("eager", "torchscript", "exported", "aoti") for p in TORCH_PRECISIONS]
    return [r.name for r in RECIPES] + as_built


def parse_only(text: str | None) -> list[str] | None:
    """`--only`'s comma list, every name checked against `known_names()` (a typo would otherwise end as "no
    candidate passes" after minutes of work)."""
    if not text:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    known = known_names()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"--only: unknown candidate {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    return names


@dataclass
class Candidate:
    name: str
    engine: str  # the engine that serves it: torch, torchscript, aoti, onnxruntime, openvino, ...
    precision: str  # what the worker computes in: fp32, bf16, int8
    quantize: str = ""
    bf16_hint: bool = False
    as_built: bool = False  # the archive's own serialized file and config, unchanged
    files: list[str] = field(default_factory=list)  # serialized file first (an IR's .bin after it)
    guard: "GuardResult | None" = None
    rates: dict[str, float] = field(default_factory=dict)  # "workers x threads" -> forward images/s, all workers
    verdict: str = ""
    search: dict | None = None  # openvino-int8-mixed: what the search kept in floating point, and its steps

    @classmethod
    def of(cls, recipe: Recipe, **kwargs) -> "Candidate":
        return cls(recipe.name, recipe.engine, recipe.precision, recipe.quantize, recipe.bf16_hint, **kwargs)

    @property
    def pixels(self) -> bool:
        """Takes uint8 NHWC pixels (every OpenVINO IR written here normalises itself), not normalised fp32."""
        return self.engine == "openvino" and not self.as_built

    @property
    def best(self) -> tuple[str, float] | None:
        return max(self.rates.items(), key=lambda kv: kv[1]) if self.rates else None

    @property
    def open(self) -> bool:
        """Still to be judged: neither skipped nor judged yet."""
        return not self.verdict


def plan(fmt: str, precision: str, serialized_file: str, only: list[str] | None,
         missing: dict[str, str | None], bf16: bool | None) -> list[Candidate]:
    """The rows to try for an archive of format `fmt`, each either open or with the verdict that skips it.
    `missing`: {package: why it cannot be imported, or None}; `bf16`: the CPU has native bf16 (None: unknown)."""
    own = Candidate(as_built_name(fmt, precision), AS_BUILT_ENGINE[fmt], precision, as_built=True,
                    files=[serialized_file])
    rows = [own]
    for recipe in RECIPES:
        if recipe.name == own.name:  # an ONNX archive's own file is its ONNX Runtime row
            continue
        row = Candidate.of(recipe)
        absent = next((missing.get(p) for p in recipe.needs if missing.get(p)), None)
        if absent:
            row.verdict = f"skipped: {absent}"
        elif recipe.bf16_hint and bf16 is False:
            row.verdict = "skipped: this CPU has no native bf16"
        rows.append(row)
    if only:
        for row in rows:
            if row.name not in only and row.open:
                row.verdict = "skipped: not asked for (--only)"
    return rows
