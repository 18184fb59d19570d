"""`grouplat` command line: one entry point, one subcommand per part of the pipeline.

Each part registers its own subcommands through a `register(subparsers)` function, imported
only when needed, so `grouplat decode` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand → module whose `register(subparsers)` adds it
COMMANDS = {
    "train": "grouplat.training.cli",
    "export": "grouplat.export.cli",
    "serve": "grouplat.serving.server",
    "demo": "grouplat.tools.demo",
    "evaluate": "grouplat.tools.evaluation.cli",
    "batch": "grouplat.client.batch.cli",
    "bench": "grouplat.tools.bench.cli",
    "solvers": "grouplat.tools.solvers",
    "perf-analyzer": "grouplat.tools.perf_analyzer",
    "perf-inputs": "grouplat.tools.perf_analyzer",
    **{
        name: "grouplat.client.cli"
        for name in ("encode", "decode", "mix", "traverse", "interpolate", "variations", "reconstruct")
    },
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grouplat", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        if only is None or only == name:
            importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
