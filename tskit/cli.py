"""`tskit`: build, export and verify archives; serve, inspect, scale and benchmark TorchServe.

Each command lives with its options in tskit/commands/ (archives, measure, server, deploy); this module parses
and runs them, every failure one line (`tskit CMD: ...`), never a traceback."""
import argparse
import sys
import zipfile

from tskit.client import ServerError
from tskit.commands import add_to
from tskit.commands import archives, measure, server, deploy  # noqa: F401,I001  (each registers its commands, in this order)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tskit", description=__doc__.split("\n")[0])
    add_to(p.add_subparsers(dest="command", required=True))
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.command_spec.check(args)
        return args.command_spec.run(args)
    except (ServerError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"tskit {args.command}: {err}", file=sys.stderr)
        return 1
    except zipfile.BadZipFile as err:  # a .mar is a zip: `tskit verify README.md`, say
        named = getattr(args, "archive", None) or " or ".join(getattr(args, "archives", None) or ["a file given"])
        print(f"tskit {args.command}: {named} is not a .mar archive ({err})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
