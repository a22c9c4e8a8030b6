"""The Python packages an archive's handler code needs, checked where it is served before that code is imported.

`tskit build --requirements requirements.txt` records the user's requirements (`name`, `name==1.2`,
`name>=1.0,<2`, with extras or environment markers) in the archive's manifest. A worker whose Python lacks
one, or has another version, refuses to load with a message naming each package and the version asked for:
nothing is installed at load time unless the operator turns on TorchServe's `install_py_dep_per_model`, which
installs the archive's `requirements.txt` before the worker starts (and then this check passes).
"""
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement  # torchserve depends on packaging


class RequirementError(RuntimeError):
    """The archive needs packages this Python lacks (not an ImportError: TorchServe would take that for a
    missing handler module and look for a stock handler of the same name instead)."""


def parse_requirements(text: str, source: str = "requirements") -> list[str]:
    """The requirement lines of a requirements.txt, normalised; options (`-r`, `-e`, `--index-url`) and URLs
    are refused, since an archive must name what it needs, not where to fetch it."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise ValueError(f"{source}:{number}: {line!r}: options are not supported; list the packages "
                             "themselves, one per line (name, name==1.2, name>=1.0)")
        try:
            requirement = Requirement(line)
        except InvalidRequirement as err:
            raise ValueError(f"{source}:{number}: {line!r} is not a requirement: {err}") from None
        if requirement.url:
            raise ValueError(f"{source}:{number}: {line!r}: a URL requirement cannot be checked where the archive "
                             "is served; name the package and its version instead")
        out.append(str(requirement))
    return out


def pinned(packages: list[str]) -> list[str]:
    """`name==version` of each package as this Python has it (what an archive built here was checked with)."""
    return [f"{name}=={metadata.version(name)}" for name in packages]


def unmet(requirements: list[str]) -> list[str]:
    """One line per requirement this Python does not meet (markers that do not apply here are skipped)."""
    problems = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{line} (not installed)")
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{line} ({requirement.name} {installed} is installed)")
    return problems


def check_requirements(requirements: list[str]) -> None:
    problems = unmet(requirements or [])
    if problems:
        wanted = " ".join(f"'{Requirement(p.split(' (')[0])}'" for p in problems)
        raise RequirementError(
            "this archive's handler needs packages that this Python lacks:\n  " + "\n  ".join(problems)
            + f"\ninstall them where TorchServe runs (pip install {wanted}), or start TorchServe with "
              "install_py_dep_per_model=true to have it install the archive's requirements.txt")
