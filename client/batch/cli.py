"""`grouplat batch encode | decode | mix`: run a batch job from the command line.

    grouplat batch encode SRC --out DST [--server H:P ...] [--concurrency 4] [--batch-size N]
    grouplat batch decode DST --out IMAGES/            (or IMAGES.zip)
    grouplat batch mix SRC --reference IMG --groups 1,2 --out MIXED/

SRC: a folder, a glob pattern (quoted), an EDM-style .zip, a .parquet/.csv list of paths (column
`path`, optional `id`), or for decode the output of batch encode. Re-run the same command to resume
a stopped job. A job writes only inside --out, follows no symbolic link there, and replaces no file
it did not write (an error naming it) unless given --overwrite. Exit status: 0 done (item errors are
listed, not fatal), 1 server trouble (re-run to resume), 2 bad input or arguments.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from grouplat.client.cli import parse_ints
from grouplat.solvers import SOLVERS

OPERATIONS = {
    "encode": "encode images into latent codes: a Parquet data set",
    "decode": "decode the latents of batch encode into images (a folder or .zip)",
    "mix": "take groups of one reference into every image (Fig. 6): images (a folder or .zip)",
}


def _add(subparsers: Any, op: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        op, help=OPERATIONS[op], description=OPERATIONS[op]
    )
    parser.set_defaults(handler=handle, op=op)
    parser.add_argument(
        "source", metavar="SRC", help="folder, 'glob', .zip, .parquet/.csv list (decode: latents)"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="encode: the output folder (Parquet shards); decode, mix: an image folder or a .zip",
    )
    job = parser.add_argument_group("job")
    job.add_argument(
        "--server",
        action="append",
        default=None,
        help="gRPC host:port of a server; repeat (or comma-separate) for several (default $GROUPLAT_SERVER)",
    )
    job.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    job.add_argument(
        "--batch-size", type=int, default=None, help="items per request (default: the model's max)"
    )
    job.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help="items per output shard (default 1000, fewer for large images; a resumed job keeps its own)",
    )
    job.add_argument("--timeout", type=float, default=120.0, help="seconds per request, retries included")
    job.add_argument("--engine", choices=["local", "ray"], default="local", help="local threads or Ray Data")
    job.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    job.add_argument("--no-progress", action="store_true", help="no progress bar")
    job.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files already in --out that this job did not write (images; the .zip); without it "
        "such a file is an error naming it. A re-run of the same job rewrites its own files either way",
    )
    ode = parser.add_argument_group("generation (default: the model's; decode: each latent's own)")
    ode.add_argument("--steps", type=int, default=None, help="total ODE steps")
    ode.add_argument("--solver", default=None, help=" | ".join(SOLVERS))
    ode.add_argument("--schedule", default=None, help="generation cut points, e.g. 0.1,0.2,0.3")
    if op != "decode":
        parser.add_argument(
            "--resize", action="store_true", help="centre-crop and resize images to the model's size"
        )
    if op == "encode":
        parser.add_argument(
            "--dtype", choices=["float32", "float16"], default="float32", help="latent storage"
        )
    if op == "mix":
        parser.add_argument("--reference", required=True, help="the reference: an image or a .latent file")
        parser.add_argument(
            "--groups", type=parse_ints, required=True, help="groups taken from it, e.g. 1 or 1,2"
        )
    return parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `batch` (with encode, decode, mix) to `grouplat` (grouplat.cli); again adds nothing."""
    if "batch" in subparsers.choices:
        return
    batch = subparsers.add_parser("batch", help="encode / decode / mix whole data sets (resumable)",
                                  description=__doc__.splitlines()[0])  # fmt: skip
    ops = batch.add_subparsers(dest="batch_command", metavar="OPERATION", required=True)
    for op in OPERATIONS:
        _add(ops, op)


def handle(args: argparse.Namespace) -> int:
    from grouplat.client.batch.job import JobError, Task, run
    from grouplat.client.errors import ClientError

    task = Task(
        op=args.op,
        steps=args.steps,
        solver=args.solver,
        schedule=args.schedule,
        dtype=getattr(args, "dtype", "float32"),
        resize=getattr(args, "resize", False),
        reference=getattr(args, "reference", None),
        groups=tuple(getattr(args, "groups", ())),
    )
    servers = [s for given in args.server for s in given.split(",")] if args.server else None
    try:
        summary = run(
            task,
            args.source,
            args.out,
            servers,
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            timeout=args.timeout,
            engine=args.engine,
            ray_address=args.ray_address,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    except (JobError, ValueError, FileNotFoundError) as error:
        print(f"grouplat batch {args.op}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"grouplat batch {args.op}: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130
    except (ClientError, OSError, RuntimeError) as error:
        print(
            f"grouplat batch {args.op}: error: {error}\n(re-run the same command to resume)", file=sys.stderr
        )
        return 1
    print(f"grouplat batch {summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grouplat", description="grouplat batch jobs")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    """`grouplat batch …` (the leading `batch` may be left out).

    Args:
        argv: the arguments (default sys.argv[1:]), e.g. ["encode", "photos/", "--out", "latents/"].

    Returns:
        The exit status: 0 done (item errors are listed, not fatal), 1 server trouble (re-run to
        resume), 2 bad input or arguments, 130 interrupted.
    """
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv if argv[:1] == ["batch"] else ["batch", *argv])
    return int(args.handler(args))
