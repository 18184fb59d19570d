"""`grouplat encode | decode | mix | traverse | interpolate | variations | reconstruct`: the client CLI.

    grouplat encode a.png b.png -o ab.latent
    grouplat decode ab.latent -o ab.png                        # ab-0.png, ab-1.png for two latents
    grouplat decode ab.latent -o ab.png --previews steps/      # + steps/phase-1.png … phase-k.png
    grouplat mix a.png b.png --groups 1 -o c.png               # S1 of b into a (Fig. 6)
    grouplat traverse a.png --index 0:1 --values -3:3:7 -o t.png        # Fig. 7 (one row per --index)
    grouplat interpolate a.png b.png --group 1 -n 8 -o i.png  # Fig. 4
    grouplat variations a.png --keep 1,2 -n 8 -o v.png        # Fig. 9
    grouplat reconstruct a.png --keep 30,100,500 -o r.png     # Fig. 5 (one column per --keep value)

`decode` and `mix` with `--previews DIR` run on the stream models and also write the image as it
stands after each group's phase, S1 first: DIR/phase-<j>.png for j = 1 … k (a row of the batch when
there are several images; phase k is the output).

Inputs ending in `.latent` are latent codes (from `grouplat encode`), anything else an image file.
The server is `--server`, else $GROUPLAT_SERVER, else 127.0.0.1:8001 (comma-separate several
endpoints for fail-over); `--model-version N` pins one of several served versions (a `.latent` input
always goes to the version that made it). Exit status: 0 done, 1 server trouble, 2 bad input or arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from grouplat.client.client import Client
from grouplat.client.errors import ClientError
from grouplat.client.images import grid, load_image, save_image
from grouplat.client.latents import DTYPES, Latents
from grouplat.client.transport import DEFAULT_SERVER, DEFAULT_TIMEOUT, SERVER_ENV, Preview
from grouplat.solvers import SOLVERS

COMMANDS = ("encode", "decode", "mix", "traverse", "interpolate", "variations", "reconstruct")
LATENT_SUFFIX = ".latent"
# argparse reads "-3:3:7" as an option; values like it are numbers here (see _allow_negative_ranges).
NEGATIVE_VALUE = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?([:,].*)?$")


# -- argument types ---------------------------------------------------------------------------
def parse_values(text: str) -> np.ndarray:
    """`start:stop:num` (inclusive, like numpy.linspace), `a,b,c`, or one number."""
    try:
        if ":" in text:
            start, stop, num = text.split(":")
            if int(num) < 1:
                raise ValueError
            return np.linspace(float(start), float(stop), int(num))
        return np.array([float(v) for v in text.split(",")])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP:NUM or a,b,c, got {text!r}") from None


def parse_index(text: str) -> tuple[int, int]:
    """`C:I`: channel C, coefficient index I (in basis order)."""
    try:
        channel, index = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CHANNEL:INDEX such as 0:5, got {text!r}") from None
    return channel, index


def parse_ints(text: str) -> list[int]:
    """`1,2,3` (or empty / `none` for no groups)."""
    if text.strip().lower() in ("", "none", "-"):
        return []
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# -- commands ------------------------------------------------------------------------------------
def _connect(args: argparse.Namespace) -> Client:
    return Client(
        args.server,
        timeout=args.timeout,
        ssl=args.ssl,
        root_certificates=args.root_certificates,
        private_key=args.private_key,
        certificate_chain=args.certificate_chain,
        request_id=args.request_id,
        model_version=args.model_version,
    )


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"steps": args.steps, "solver": args.solver, "schedule": args.schedule}


def _input(client: Client, path: str, args: argparse.Namespace) -> Latents | np.ndarray | str:
    """A `.latent` file as Latents, an image file as uint8 [H, W, C] (resized with --resize)."""
    if path.endswith(LATENT_SUFFIX):
        return Latents.load(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if args.resize:
        c, h, w = client.info().space.shape
        return load_image(path, c, (h, w))
    return path  # the client reads it (and says if the size is wrong)


def _latents(client: Client, path: str, args: argparse.Namespace) -> Latents:
    item = _input(client, path, args)
    return item if isinstance(item, Latents) else client.encode(item, **_settings(args))


def _write(images: np.ndarray, output: str) -> list[str]:
    """One image to `output`; several to `<stem>-<i><suffix>`."""
    if len(images) == 1:
        save_image(images[0], output)
        return [output]
    path = Path(output)
    names = [str(path.with_name(f"{path.stem}-{i}{path.suffix}")) for i in range(len(images))]
    for image, name in zip(images, names):
        save_image(image, name)
    return names


def _write_previews(previews: Iterable[Preview], folder: str) -> tuple[np.ndarray, list[str]]:
    """Each phase's images to `folder`/phase-<j>.png (a row for several); the final images."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    written, images = [], np.zeros((0,), np.float32)
    for preview in previews:
        images = preview.images
        name = str(Path(folder) / f"phase-{preview.phase}.png")
        save_image(images[0] if len(images) == 1 else grid(images), name)
        written.append(name)
    return images, written


def _write_grid(images: np.ndarray, output: str) -> list[str]:
    """[R, N, C, H, W] (or [N, C, H, W], one row) as one picture."""
    save_image(grid(images), output)
    return [output]


def cmd_encode(client: Client, args: argparse.Namespace) -> list[str]:
    items = [_input(client, p, args) for p in args.images]
    if any(isinstance(item, Latents) for item in items):
        raise ValueError("encode takes image files, not .latent files")
    latents = client.encode(items, **_settings(args))
    if args.dtype != latents.dtype:
        latents = dataclasses.replace(latents, dtype=args.dtype)
    latents.save(args.output)
    return [args.output]


def cmd_decode(client: Client, args: argparse.Namespace) -> list[str]:
    latents = Latents.load(args.latent)
    if args.previews:
        stream = client.decode_stream(latents, force=args.force, **_settings(args))
        images, written = _write_previews(stream, args.previews)
        return written + _write(images, args.output)
    return _write(client.decode(latents, force=args.force, **_settings(args)), args.output)


def cmd_mix(client: Client, args: argparse.Namespace) -> list[str]:
    a, b = _input(client, args.a, args), _input(client, args.b, args)
    if args.previews:
        stream = client.mix_stream(a, b, args.groups, force=args.force, **_settings(args))
        images, written = _write_previews(stream, args.previews)
        return written + _write(images, args.output)
    return _write(client.mix(a, b, args.groups, force=args.force, **_settings(args)), args.output)


def cmd_traverse(client: Client, args: argparse.Namespace) -> list[str]:
    latent = _latents(client, args.input, args)
    rows = [
        client.traverse(latent, channel, index, args.values, force=args.force, **_settings(args))
        for channel, index in args.index
    ]
    return _write_grid(np.stack(rows), args.output)


def cmd_interpolate(client: Client, args: argparse.Namespace) -> list[str]:
    if args.n < 2:
        raise ValueError(f"-n must be at least 2 (the two ends), got {args.n}")
    a, b = _input(client, args.a, args), _input(client, args.b, args)
    weights = np.linspace(0.0, 1.0, args.n)
    images = client.interpolate(
        a, b, args.group, weights, method=args.method, force=args.force, **_settings(args)
    )
    return _write_grid(images, args.output)


def cmd_variations(client: Client, args: argparse.Namespace) -> list[str]:
    latent = _latents(client, args.input, args)
    images = client.variations(latent, args.keep, args.n, seed=args.seed, force=args.force, **_settings(args))
    return _write_grid(images, args.output)


def cmd_reconstruct(client: Client, args: argparse.Namespace) -> list[str]:
    latents = _latents(client, args.input, args)
    columns = [
        client.reconstruct(latents, m, fill=args.fill, seed=args.seed, force=args.force, **_settings(args))
        for m in args.keep
    ]
    if len(columns) == 1 and len(columns[0]) == 1:
        return _write(columns[0], args.output)
    return _write_grid(np.stack(columns, axis=1), args.output)  # a row per latent, a column per keep


# -- registration ----------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser) -> None:
    server = parser.add_argument_group("server")
    server.add_argument(
        "--server",
        default=None,
        help=f"gRPC host:port, comma-separated for fail-over (default ${SERVER_ENV} or {DEFAULT_SERVER})",
    )
    server.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per server call, retries included"
    )
    server.add_argument("--ssl", action="store_true", help="connect with TLS")
    server.add_argument("--root-certificates", default=None, help="PEM file of the CA to trust (TLS)")
    server.add_argument("--private-key", default=None, help="PEM client key (mutual TLS)")
    server.add_argument("--certificate-chain", default=None, help="PEM client certificate chain (mutual TLS)")
    server.add_argument(
        "--request-id",
        default=None,
        help="request id sent with every request of this command, named in the server's errors and log "
        "(default: a new one per call)",
    )
    server.add_argument(
        "--model-version",
        default=None,
        metavar="N",
        help="the model version to use where the server serves several (default: the newest); "
        ".latent inputs always go to the version that made them",
    )
    ode = parser.add_argument_group("generation (default: the latent's own settings, else the model's)")
    ode.add_argument("--steps", type=int, default=None, help="total ODE steps")
    ode.add_argument("--solver", default=None, help=" | ".join(SOLVERS))
    ode.add_argument("--schedule", default=None, help="generation cut points, e.g. 0.1,0.2,0.3")
    parser.add_argument(
        "--resize", action="store_true", help="centre-crop and resize images to the model's size"
    )
    parser.add_argument("--force", action="store_true", help="decode latents of another model anyway")


def _previews_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--previews",
        default=None,
        metavar="DIR",
        help="also write the image after each group's phase to DIR/phase-<j>.png, j = 1 … k "
        "(the stream models; a row per phase for several images)",
    )


Command = Callable[[Client, argparse.Namespace], list[str]]


def _add(subparsers: Any, name: str, command: Command, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help, description=help)
    # Let "-3:3:7" and "-1.5,0,1.5" be values, not unknown options.
    parser._negative_number_matcher = NEGATIVE_VALUE  # type: ignore[attr-defined]
    parser.set_defaults(handler=lambda args: run(name, command, args))
    _common(parser)
    return parser


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client subcommands to `grouplat` (grouplat.cli); calling it again adds nothing."""
    if set(COMMANDS) <= set(subparsers.choices):
        return
    p = _add(subparsers, "encode", cmd_encode, "encode images into a latent code file")
    p.add_argument("images", nargs="+", metavar="IMG", help="image files")
    p.add_argument("-o", "--output", required=True, help="latent code file to write (OUT.latent)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="storage precision")

    p = _add(subparsers, "decode", cmd_decode, "decode a latent code file into images")
    p.add_argument("latent", metavar="LATENT", help=".latent file")
    p.add_argument("-o", "--output", required=True, help="image to write (several: OUT-<i>.png)")
    _previews_option(p)

    p = _add(subparsers, "mix", cmd_mix, "take groups of B into A (Fig. 6)")
    p.add_argument("a", metavar="A", help="image or .latent")
    p.add_argument("b", metavar="B", help="image or .latent (the reference)")
    p.add_argument("--groups", type=parse_ints, required=True, help="groups taken from B, e.g. 1 or 1,2")
    p.add_argument("-o", "--output", required=True, help="image to write")
    _previews_option(p)

    p = _add(subparsers, "traverse", cmd_traverse, "sweep latent elements over values: a grid (Fig. 7)")
    p.add_argument("input", metavar="IMG", help="image or .latent")
    p.add_argument(
        "--index",
        type=parse_index,
        action="append",
        required=True,
        help="CHANNEL:INDEX; repeat for more rows",
    )
    p.add_argument(
        "--values", type=parse_values, default=parse_values("-3:3:7"), help="START:STOP:NUM or a,b,c"
    )
    p.add_argument("-o", "--output", required=True, help="grid image to write")

    p = _add(subparsers, "interpolate", cmd_interpolate, "move one group from A to B: a grid (Fig. 4)")
    p.add_argument("a", metavar="A", help="image or .latent")
    p.add_argument("b", metavar="B", help="image or .latent")
    p.add_argument("--group", type=int, required=True, help="the group to move (S1 is 1)")
    p.add_argument("-n", type=int, default=8, help="images in the row, ends included (default 8)")
    p.add_argument("--method", choices=["linear", "slerp"], default="linear")
    p.add_argument("-o", "--output", required=True, help="grid image to write")

    p = _add(subparsers, "variations", cmd_variations, "keep some groups, resample the rest (Fig. 9)")
    p.add_argument("input", metavar="IMG", help="image or .latent")
    p.add_argument("--keep", type=parse_ints, required=True, help="groups kept, e.g. 1,2")
    p.add_argument("-n", type=int, default=8, help="number of variations (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="grid image to write")

    p = _add(subparsers, "reconstruct", cmd_reconstruct, "decode from the first m coefficients (Fig. 5)")
    p.add_argument("input", metavar="IMG", help="image or .latent")
    p.add_argument("--keep", type=parse_ints, required=True, help="m, or several: 30,100,500 (a grid)")
    p.add_argument("--fill", choices=["zeros", "resample"], default="zeros", help="the dropped coefficients")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="image (or grid) to write")


def run(name: str, command: Command, args: argparse.Namespace) -> int:
    """Run one command; print what was written, or the error (exit 1: server, 2: input)."""
    try:
        with _connect(args) as client:
            written = command(client, args)
    except (ClientError, ValueError, OSError) as error:
        print(f"grouplat {name}: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ValueError | FileNotFoundError) else 1
    for path in written:
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A parser with only the client commands (`python -m grouplat.client.cli …`)."""
    parser = argparse.ArgumentParser(prog="grouplat", description="grouplat client commands")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
