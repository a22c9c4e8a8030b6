"""Checks the commands make of their arguments before any work (and before torch is imported): each failure is
one line from `tskit.cli.main`, never a traceback."""
import argparse
import zipfile
from pathlib import Path


def out_folder(path: str, option: str) -> Path:
    """A folder the command writes into (created if missing); refused if it, or a folder above it, is a file."""
    folder = Path(path)
    for above in (folder, *folder.parents):
        if above.exists():
            if not above.is_dir():
                where = "" if above == folder else f": {above}"
                raise ValueError(f"{option} {path}{where} is a file, not a folder")
            break
    return folder


def archive_file(path: str, what: str = "archive") -> Path:
    """An existing .mar (a zip holding MAR-INF/MANIFEST.json), checked before anything is imported or loaded."""
    mar = Path(path)
    if not mar.is_file():
        raise FileNotFoundError(f"{what} not found: {path}" + (" (that is a folder)" if mar.is_dir() else ""))
    if not zipfile.is_zipfile(mar):
        raise ValueError(f"{path} is not a .mar archive")
    with zipfile.ZipFile(mar) as zf:
        if "MAR-INF/MANIFEST.json" not in zf.namelist():
            raise ValueError(f"{path} is not a .mar archive (a zip without MAR-INF/MANIFEST.json)")
    return mar


def one_line(err: BaseException, limit: int = 400) -> str:
    """An exception's message folded onto one line (torch's load_state_dict error spans several)."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def positive(kind):
    """argparse type: a number of `kind` above 0 (a batch of 0 or -1 s of timing is a mistake, not a request)."""
    def parse(text: str):
        value = kind(text)  # a ValueError here is argparse's "invalid int value: 'x'"
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def fraction(text: str) -> float:
    """argparse type: a share between 0 and 1 (0.99, not 99)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (0.99 for 99%), got {text}")
    return value


fraction.__name__ = "float"


def shape(text: str) -> list[int]:
    """argparse type: an input shape as comma-separated positive sizes, batch first."""
    try:
        dims = [int(d) for d in text.split(",")]
    except ValueError:
        dims = []
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape: comma-separated sizes above 0, batch first "
                                         "(e.g. 2,3,224,224)")
    return dims


def setting(text: str) -> str:
    """argparse type: one KEY=VALUE handler config override."""
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. precision=bf16)")
    return text


def candidate_names(text: str) -> list[str]:
    """argparse type: `tskit optimize --only`'s comma list, every name a known candidate."""
    from export.optimize.candidates import parse_only

    try:
        return parse_only(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# ---- checks of values that name files: `arg(..., check=...)` in tskit/commands, each called as check(value, flag)
def existing_archive(value: str, flag: str) -> None:
    """An existing .mar: `archive not found: X` for a positional argument, `--reference archive not found: X`
    for an option."""
    archive_file(value, f"{flag} archive" if flag.startswith("-") else "archive")


def folder_to_write(value: str, flag: str) -> None:
    out_folder(value, flag)


def existing_file(value: str, flag: str) -> None:
    """A file that exists, named after its option (`--model-file` -> "model file not found: X")."""
    path = Path(value)
    if not path.is_file():
        label = flag.lstrip("-").replace("-", " ")
        raise FileNotFoundError(f"{label} not found: {path}" + (" (that is a folder)" if path.is_dir() else ""))


def hugging_face_folder(value: str, flag: str) -> None:
    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(f"{flag} {value}: " + ("a file, not a folder" if path.exists() else "not found"))
    if not (path / "config.json").is_file():
        raise ValueError(f"{flag} {value} is not a Hugging Face model folder: it has no config.json")


def python_file(value: str, flag: str) -> None:
    existing_file(value, flag)
    if Path(value).suffix != ".py":
        raise ValueError(f"{flag} {value} is not a Python file (.py) defining the nn.Module")
