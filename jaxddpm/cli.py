"""The ``jaxddpm`` command line. Each subcommand parses its flags and calls the library."""

from __future__ import annotations

import argparse
import sys


def _parity(argv: list[str]) -> int:
    try:
        from parity.report import main
    except ImportError as e:
        print(f"error: jaxddpm parity needs PyTorch ({e}); install it with: pip install 'jaxddpm[parity]'", file=sys.stderr)
        return 2
    return main(argv)


COMMANDS = {
    "parity": ("check jaxddpm against the PyTorch reference (python -m parity)", _parity),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        usage = "usage: jaxddpm {" + ",".join(COMMANDS) + "} ...\n\ncommands:\n"
        usage += "".join(f"  {name:<8} {help_}\n" for name, (help_, _) in COMMANDS.items())
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
            print(usage, file=sys.stderr, end="")
            return 2
        print(usage, end="")
        return 0 if argv else 2
    return COMMANDS[argv[0]][1](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
