"""A user's own handler file in an archive: `tskit build --handler my_handler.py`.

The handler module's one class may subclass a handler of this library (`handlers.image_classifier.
ImageClassifier`, `handlers.base.TskitHandler`, ...), one of TorchServe's stock handlers, or TorchServe's
`BaseHandler`. The archive carries this library's `handlers` package, the user's module and the user's
`--extra-files` folders as packages, so it is served by a TorchServe that has neither this project nor the
user's code installed. TorchServe loads `tskit_entry.py`, written here, which checks the archive (hashes,
requirements) before it imports the user's module, then defines the one class TorchServe instantiates: the
user's class as is for a subclass of this library's handlers, or the user's class behind `handlers.guard.
Guarded` for one written against TorchServe's own classes.

    python -m export.user_handler BUNDLE_DIR MODULE OUT.json   # inspect MODULE as a worker would import it
"""
import importlib
import inspect
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ENTRY_FILE = "tskit_entry.py"
LIBRARY_PACKAGE = "handlers"  # this library's package name inside every archive
KINDS = ("tskit", "torchserve")  # a subclass of this library's handlers; one of TorchServe's own classes


@dataclass
class UserHandler:
    module: str  # the user's module name at the archive root
    class_name: str
    kind: str  # one of KINDS


def is_handler_file(handler: str) -> bool:
    return handler.endswith(".py")


def check_names(module_file: Path, extra_files: list[str]) -> None:
    """Refuse names that would collide in the archive root with this library's package or with each other."""
    if not module_file.stem.isidentifier():
        raise ValueError(f"handler file name {module_file.name} must be a Python module name (letters, digits, "
                         "underscores), since TorchServe imports it")
    clash = ("has the same name as this library's `handlers` package, which every archive carries at its "
             "root: rename your {what} (say `{suggest}`) and the imports that use it")
    if module_file.stem in (LIBRARY_PACKAGE, Path(ENTRY_FILE).stem):
        raise ValueError(f"handler file {module_file} " + clash.format(what="module", suggest="my_handler.py"))
    seen = {module_file.name: str(module_file)}
    for extra in extra_files:
        path = Path(extra)
        if path.stem == LIBRARY_PACKAGE and (path.is_dir() or path.suffix == ".py"):
            raise ValueError(f"extra file {extra} " + clash.format(what="package", suggest=f"my_{LIBRARY_PACKAGE}"))
        if path.name in seen:
            raise ValueError(f"{extra} and {seen[path.name]} would both land at the archive root as {path.name}")
        seen[path.name] = extra


def stage_user_module(module_file: Path, bundle: Path) -> str:
    shutil.copy(module_file, bundle / module_file.name)
    return module_file.stem


def inspect_handler(bundle: Path, module: str, work_dir: Path) -> UserHandler:
    """Import `module` from the staged bundle in a fresh Python, as a worker would, and find its handler class."""
    out = work_dir / "user-handler.json"
    result = subprocess.run([sys.executable, "-m", "export.user_handler", str(bundle), module, str(out)],
                            capture_output=True, text=True, cwd=bundle)
    if result.returncode != 0:
        raise ValueError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else
                         f"inspecting handler module {module} failed ({result.returncode})")
    return UserHandler(**json.loads(out.read_text()))


def entry_source(handler: UserHandler) -> str:
    """The module TorchServe loads: checks first, then the user's import, then the one class."""
    mixin = handler.kind == "torchserve"
    bases = "Guarded, UserHandler" if mixin else "UserHandler"
    guard_import = "from handlers.guard import Guarded\n" if mixin else ""
    what = ("behind handlers.guard.Guarded (integrity,\nper-request errors, metrics)" if mixin
            else "as written (it derives from\nthis library's TskitHandler)")
    return (f'"""Written by `tskit build --handler {handler.module}.py`: TorchServe loads this module.\n'
            f'It checks the archive before importing {handler.module}, then serves {handler.class_name} {what}."""\n'
            "from handlers.entry import check_archive\n\n"
            "check_archive(__file__)\n\n"
            f"from {handler.module} import {handler.class_name} as UserHandler  # noqa: E402\n"
            f"{guard_import}\n\n"
            f"class {handler.class_name}({bases}):\n"
            f'    """{handler.module}.{handler.class_name}, served by torchserve-kit."""\n')


def write_entry(handler: UserHandler, folder: Path) -> Path:
    path = folder / ENTRY_FILE
    path.write_text(entry_source(handler))
    return path


def _import_hint(err: ImportError, module: str) -> str:
    missing = err.name or ""
    if missing.startswith(LIBRARY_PACKAGE + "."):
        return (f"; `{missing}` is not part of this library's `{LIBRARY_PACKAGE}` package: if it is your own "
                f"package called `{LIBRARY_PACKAGE}`, rename it (it would clash with the library in the archive)")
    if missing and missing.split(".")[0] != module:
        return (f"; if `{missing}` is your own code, pass its file or folder with --extra-files; if it is a "
                "package, install it here and list it in --requirements")
    return ""


def _main(bundle: str, module: str, out_file: str) -> None:
    sys.path.insert(0, str(Path(bundle).resolve()))  # the bundled library wins over an installed one
    from handlers.base import TskitHandler
    from handlers.torchserve import BaseHandler

    try:
        imported = importlib.import_module(module)
    except ImportError as err:
        sys.exit(f"handler module {module}.py cannot be imported: {err}{_import_hint(err, module)}")
    classes = [c for _, c in inspect.getmembers(imported, inspect.isclass) if c.__module__ == imported.__name__]
    if len(classes) != 1:
        sys.exit(f"handler module {module}.py must define exactly one class (TorchServe's rule; imported classes "
                 f"are fine), it defines {[c.__name__ for c in classes] or 'none'}")
    [cls] = classes
    if not issubclass(cls, BaseHandler):
        sys.exit(f"{module}.{cls.__name__} must subclass a handler of this library (handlers.image_classifier."
                 "ImageClassifier, handlers.base.TskitHandler, ...), one of TorchServe's stock handlers "
                 "(ts.torch_handler.image_classifier.ImageClassifier, ...) or "
                 "ts.torch_handler.base_handler.BaseHandler")
    kind = "tskit" if issubclass(cls, TskitHandler) else "torchserve"
    Path(out_file).write_text(json.dumps({"module": module, "class_name": cls.__name__, "kind": kind}))


if __name__ == "__main__":
    _main(*sys.argv[1:4])
