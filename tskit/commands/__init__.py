"""The commands of `tskit`, each declared beside its code.

    @command("scale", "set a model's worker count (synchronous)", *SERVER, arg("model"), arg("--min", type=int))
    def scale(args) -> int: ...

`arg` is an argparse argument; a value that names a file or folder also gets a `check` (tskit/arguments.py), run
after parsing and before the command, in the order the options are declared: a refused value is the command's one
line (`tskit scale: ...`, exit 1), never a traceback, and no command imports torch before its checks pass. A
value's syntax (a number above 0, a share, a shape) is its argparse `type`, refused by argparse (exit 2).
"""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    kwargs: dict
    check: object = None  # check(value, flag) -> None, raising ValueError/FileNotFoundError with the one line


def arg(*flags: str, check=None, **kwargs) -> Option:
    return Option(flags, kwargs, check)


# where a running TorchServe is: its config (addresses, model store) and the folder it started in (key_file.json)
SERVER = (arg("--config", default="config.properties"),
          arg("--workdir", default=".", help="where TorchServe starts (and writes key_file.json)"))


@dataclass
class Command:
    name: str  # "new handler" for a nested one
    help: str
    options: tuple[Option, ...]
    run: object = field(repr=False)

    def check(self, args) -> None:
        for option in self.options:
            if option.check is None:
                continue
            dest = option.kwargs.get("dest") or option.flags[-1].lstrip("-").replace("-", "_")
            value = getattr(args, dest, None)
            for item in value if isinstance(value, list) else [] if value is None else [value]:
                option.check(item, option.flags[0])


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, *options: Option):
    """Register the decorated function as `tskit NAME` with `options`."""
    def register(run):
        COMMANDS[name] = Command(name, help, options, run)
        return run
    return register


def add_to(subparsers) -> None:
    """Every registered command as a subparser (a nested name, `new handler`, under its group)."""
    groups = {}
    for cmd in COMMANDS.values():
        *group, leaf = cmd.name.split()
        parent = subparsers
        if group:
            if group[0] not in groups:
                groups[group[0]] = subparsers.add_parser(group[0], help=GROUP_HELP[group[0]]).add_subparsers(
                    dest="what", required=True)
            parent = groups[group[0]]
        sub = parent.add_parser(leaf, help=cmd.help)
        for option in cmd.options:
            kwargs = {k: v() if k in LATE and callable(v) else v for k, v in option.kwargs.items()}
            sub.add_argument(*option.flags, **kwargs)
        sub.set_defaults(command_spec=cmd)


LATE = ("help", "choices")  # given as functions, these are read from the registries when the parser is built
GROUP_HELP = {"new": "write a new handler file, its model-config.yaml and a passing test"}
