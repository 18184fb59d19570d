"""`grouplat` command line: one entry point, one subcommand per part of the pipeline.

Each part registers its own subcommands through a `register(subparsers)` function, imported
only when needed, so `grouplat decode` never imports torch.

Logging is configured here, once: `grouplat --log-level LEVEL COMMAND …` or $GROUPLAT_LOG_LEVEL
(default INFO) sets the level of grouplat's loggers; records go to stderr, while each command's
results go to stdout. The level is also exported to $GROUPLAT_LOG_LEVEL, so the models that
`grouplat serve` runs log at it too (into the server log; DEBUG there needs `--log-verbose 1`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# subcommand → module whose `register(subparsers)` adds it
COMMANDS = {
    "train": "grouplat.training.cli",
    "fit-s1": "grouplat.training.s1head",
    "export": "grouplat.export.cli",
    "serve": "grouplat.serving.server",
    "demo": "grouplat.tools.demo",
    "evaluate": "grouplat.tools.evaluation.cli",
    "batch": "grouplat.client.batch.cli",
    "bench": "grouplat.tools.bench.cli",
    "solvers": "grouplat.tools.solvers",
    "calibrate": "grouplat.tools.calibrate",
    "perf-analyzer": "grouplat.tools.perf_analyzer",
    "perf-inputs": "grouplat.tools.perf_analyzer",
    **{
        name: "grouplat.client.cli"
        for name in ("encode", "decode", "mix", "traverse", "interpolate", "variations", "reconstruct")
    },
}
LOG_LEVEL_ENV = "GROUPLAT_LOG_LEVEL"  # also read by the served models (grouplat.serving.engines)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to `sys.stderr` as it is at each record (tests and callers may replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # under the handler's lock
        super().emit(record)


def configure_logging(level: str | None = None) -> int:
    """Send log records to stderr at `level`, else $GROUPLAT_LOG_LEVEL, else INFO; return the level.

    grouplat's loggers log at that level; other libraries' at WARNING and above (all of them at
    DEBUG). Calling it again only changes the level. The chosen level is exported to
    $GROUPLAT_LOG_LEVEL for child processes (the served models).
    """
    name = (level or os.environ.get(LOG_LEVEL_ENV) or "INFO").strip().upper()
    unknown = name not in LOG_LEVELS
    if unknown:
        bad, name = name, "INFO"
    value = logging.getLevelName(name)
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(value if value <= logging.DEBUG else max(value, logging.WARNING))  # other libraries
    logging.getLogger("grouplat").setLevel(value)
    os.environ[LOG_LEVEL_ENV] = name
    if unknown:
        logging.getLogger(__name__).warning(
            "$%s=%r is no log level (%s): using INFO", LOG_LEVEL_ENV, bad, ", ".join(LOG_LEVELS)
        )
    return int(value)


def _command(argv: list[str]) -> str | None:
    """The subcommand named in `argv`, after the top-level options (None: none, or --help)."""
    i = 0
    while i < len(argv) and argv[i].startswith("--log-level"):
        i += 1 if "=" in argv[i] else 2
    return argv[i] if i < len(argv) and argv[i] in COMMANDS else None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grouplat", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=None,
        help=f"log level of progress and diagnostics on stderr (default ${LOG_LEVEL_ENV}, else INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        if only is None or only == name:
            importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(argv)).parse_args(argv)
    level = args.log_level
    del args.log_level  # the commands see only their own arguments (some read them all)
    configure_logging(level)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
