"""The client CLI: argument parsing offline, then every command against the real oracle server."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from conftest import make_oracle, oracle_images
from PIL import Image

from grouplat.client import Latents, save_image
from grouplat.client.cli import COMMANDS, build_parser, main, parse_index, parse_ints, parse_values, register
from grouplat.serving.server import EmbeddedServer, _free_ports
from grouplat.settings import DEFAULT_SOLVER

PAD = 2  # grid spacing (grouplat.client.images.grid)


def size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file."""
    with Image.open(path) as image:
        return image.size


def cells(path: Path, rows: int, cols: int, h: int = 16, w: int = 16) -> np.ndarray:
    """The grid's cells as float [rows, cols, h, w, C]."""
    pixels = np.asarray(Image.open(path), dtype=np.float64)
    return np.stack(
        [
            np.stack(
                [
                    pixels[r * (h + PAD) : r * (h + PAD) + h, c * (w + PAD) : c * (w + PAD) + w]
                    for c in range(cols)
                ]
            )
            for r in range(rows)
        ]
    )


# -- offline ---------------------------------------------------------------------------------------
def test_argument_types() -> None:
    np.testing.assert_allclose(parse_values("-3:3:7"), np.arange(-3, 4), rtol=0, atol=1e-12)  # holds 0
    np.testing.assert_allclose(parse_values("-1.5,0,2"), [-1.5, 0, 2], rtol=0, atol=1e-12)
    np.testing.assert_allclose(parse_values("2"), [2], rtol=0, atol=1e-12)
    assert parse_index("2:17") == (2, 17)
    assert parse_ints("1,2") == [1, 2] and parse_ints("none") == []
    for parse, bad in ((parse_values, "1:2"), (parse_values, "a,b"), (parse_index, "3"), (parse_ints, "x")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_parser_takes_the_documented_command_lines() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["traverse", "a.png", "--index", "0:1", "--index", "2:3", "--values", "-3:3:7", "-o", "g.png"]
    )
    assert args.index == [(0, 1), (2, 3)] and len(args.values) == 7 and args.server is None
    args = parser.parse_args(["mix", "a.png", "b.png", "--groups", "1", "-o", "c.png", "--server", "h:1"])
    assert args.groups == [1] and args.server == "h:1" and args.timeout > 0
    args = parser.parse_args(["interpolate", "a", "b", "--group", "1", "-n", "8", "-o", "g.png"])
    assert (args.group, args.n, args.method) == (1, 8, "linear")
    args = parser.parse_args(["variations", "a", "--keep", "1,2", "-n", "8", "-o", "g.png"])
    assert args.keep == [1, 2] and args.seed == 0
    args = parser.parse_args(["reconstruct", "a", "--keep", "500", "-o", "r.png"])
    assert args.keep == [500] and args.fill == "zeros"
    args = parser.parse_args(
        ["encode", "a.png", "b.png", "-o", "z.latent", "--steps", "40", "--solver", "euler"]
    )
    assert args.images == ["a.png", "b.png"] and (args.steps, args.solver) == (40, "euler")
    args = parser.parse_args(["decode", "z.latent", "-o", "x.png", "--force"])
    assert args.force and callable(args.handler)
    with pytest.raises(SystemExit):
        parser.parse_args(["mix", "a.png", "b.png", "-o", "c.png"])  # --groups is required


def test_register_twice_adds_nothing() -> None:
    # grouplat.cli maps each client command to this module, so it may call register once per command.
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    register(subparsers)
    register(subparsers)
    assert tuple(subparsers.choices) == COMMANDS == (
        "encode", "decode", "mix", "traverse", "interpolate", "variations", "reconstruct"
    )  # fmt: skip


def test_grouplat_cli_dispatches_to_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import grouplat.cli

    for name in COMMANDS:  # as grouplat/cli.py registers them
        monkeypatch.setitem(grouplat.cli.COMMANDS, name, "grouplat.client.cli")
    args = grouplat.cli.build_parser("mix").parse_args(["mix", "a", "b", "--groups", "1,2", "-o", "c.png"])
    assert args.groups == [1, 2] and callable(args.handler)
    full = grouplat.cli.build_parser()  # every module's register, the client's once per command
    assert full.parse_args(["reconstruct", "a", "--keep", "30", "-o", "r.png"]).keep == [30]


def test_unreachable_server_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = _free_ports("127.0.0.1", 1)
    save_image(np.zeros((3, 16, 16), np.float32), tmp_path / "a.png")
    code = main(
        [
            "encode",
            str(tmp_path / "a.png"),
            "-o",
            str(tmp_path / "z.latent"),
            "--server",
            f"127.0.0.1:{port}",
            "--timeout",
            "1",
        ]
    )
    assert code == 1
    assert (
        f"grouplat encode: error: grouplat server unavailable: no answer from 127.0.0.1:{port}"
        in capsys.readouterr().err
    )


# -- against the server ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pictures")
    paths = []
    for i, image in enumerate(oracle_images(make_oracle(), 3, seed=5)):
        save_image(image, folder / f"{i}.png")
        paths.append(folder / f"{i}.png")
    return paths


def run(server: EmbeddedServer, *args: object) -> int:
    return main([str(a) for a in args] + ["--server", server.grpc_url])


def test_encode_decode_files(oracle_server: EmbeddedServer, pictures: list[Path], tmp_path: Path) -> None:
    latent = tmp_path / "ab.latent"
    assert run(oracle_server, "encode", pictures[0], pictures[1], "-o", latent) == 0
    z = Latents.load(latent)
    assert len(z) == 2 and z.space.shape == (3, 16, 16) and z.settings.solver == DEFAULT_SOLVER
    assert run(oracle_server, "decode", latent, "-o", tmp_path / "ab.png") == 0
    for i in range(2):
        assert size(tmp_path / f"ab-{i}.png") == (16, 16)
        back = np.asarray(Image.open(tmp_path / f"ab-{i}.png"), dtype=np.float64)
        original = np.asarray(Image.open(pictures[i]), dtype=np.float64)
        assert np.mean((back - original) ** 2) < 255**2 / 1e3  # PSNR > 30 dB (GEI on the oracle: exact)
    assert run(oracle_server, "decode", latent, "-o", tmp_path / "ab.png", "--steps", "3") == 2  # < k steps

    half = tmp_path / "half.latent"
    assert run(oracle_server, "encode", pictures[0], "-o", half, "--dtype", "float16", "--steps", "40") == 0
    assert Latents.load(half).dtype == "float16" and Latents.load(half).settings.steps == 40
    assert half.stat().st_size < latent.stat().st_size / 3


def test_mix(oracle_server: EmbeddedServer, pictures: list[Path], tmp_path: Path) -> None:
    assert run(oracle_server, "mix", pictures[0], pictures[1], "--groups", "1", "-o", tmp_path / "c.png") == 0
    assert size(tmp_path / "c.png") == (16, 16)
    # With latent files, the groups are mixed on the client: the same picture (up to rounding).
    for i in (0, 1):
        assert run(oracle_server, "encode", pictures[i], "-o", tmp_path / f"{i}.latent") == 0
    assert (
        run(
            oracle_server,
            "mix",
            tmp_path / "0.latent",
            tmp_path / "1.latent",
            "--groups",
            "1",
            "-o",
            tmp_path / "d.png",
        )
        == 0
    )
    served, local = (np.asarray(Image.open(tmp_path / n), dtype=np.int16) for n in ("c.png", "d.png"))
    assert np.abs(served - local).max() <= 1


def test_traverse_grid(oracle_server: EmbeddedServer, pictures: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "t.png"
    code = run(
        oracle_server,
        "traverse",
        pictures[0],
        "--index",
        "0:0",
        "--index",
        "1:3",
        "--values",
        "-3:3:7",
        "-o",
        out,
    )
    assert code == 0
    assert size(out) == (7 * 16 + 6 * PAD, 2 * 16 + PAD)
    grid = cells(out, 2, 7)
    for row in grid:  # the images differ along the traversed axis
        steps = np.abs(np.diff(row, axis=0)).mean(axis=(1, 2, 3))
        assert (steps > 0.5).all(), steps
    # Row 0 sweeps the DC of channel 0 (red): its brightness rises monotonically.
    assert np.all(np.diff(grid[0, :, :, :, 0].mean(axis=(1, 2))) > 0)


def test_interpolate_grid(oracle_server: EmbeddedServer, pictures: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "i.png"
    assert (
        run(oracle_server, "interpolate", pictures[0], pictures[1], "--group", "1", "-n", "8", "-o", out) == 0
    )
    assert size(out) == (8 * 16 + 7 * PAD, 16)
    grid = cells(out, 1, 8)[0]
    assert (np.abs(np.diff(grid, axis=0)).mean(axis=(1, 2, 3)) > 0.1).all()
    assert run(oracle_server, "interpolate", pictures[0], pictures[1], "--group", "9", "-o", out) == 2


def test_variations_grid(oracle_server: EmbeddedServer, pictures: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "v.png"
    assert run(oracle_server, "variations", pictures[0], "--keep", "1,2", "-n", "4", "-o", out) == 0
    assert size(out) == (4 * 16 + 3 * PAD, 16)
    grid = cells(out, 1, 4)[0]
    assert min(np.abs(grid[i] - grid[j]).mean() for i in range(4) for j in range(i)) > 1


def test_reconstruct(oracle_server: EmbeddedServer, pictures: list[Path], tmp_path: Path) -> None:
    assert run(oracle_server, "reconstruct", pictures[0], "--keep", "30", "-o", tmp_path / "r.png") == 0
    assert size(tmp_path / "r.png") == (16, 16)
    assert (
        run(oracle_server, "reconstruct", pictures[0], "--keep", "10,30,100,256", "-o", tmp_path / "g.png")
        == 0
    )
    assert size(tmp_path / "g.png") == (4 * 16 + 3 * PAD, 16)
    grid = cells(tmp_path / "g.png", 1, 4)[0]
    assert (np.abs(np.diff(grid, axis=0)).mean(axis=(1, 2, 3)) > 0.1).all()


def test_environment_variable_names_the_server(
    oracle_server: EmbeddedServer, pictures: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GROUPLAT_SERVER", oracle_server.grpc_url)
    assert main(["encode", str(pictures[2]), "-o", str(tmp_path / "z.latent")]) == 0
    assert len(Latents.load(tmp_path / "z.latent")) == 1


def test_input_errors_exit_2(
    oracle_server: EmbeddedServer, pictures: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(oracle_server, "decode", tmp_path / "missing.latent", "-o", tmp_path / "x.png") == 2
    big = tmp_path / "big.png"
    Image.new("RGB", (40, 32)).save(big)
    assert run(oracle_server, "encode", big, "-o", tmp_path / "z.latent") == 2
    assert "16×16 images" in capsys.readouterr().err
    assert run(oracle_server, "encode", big, "-o", tmp_path / "z.latent", "--resize") == 0
    z = Latents.load(tmp_path / "z.latent")
    Latents(z.values, "f" * 64, z.space, z.settings).save(tmp_path / "other.latent")
    assert run(oracle_server, "decode", tmp_path / "other.latent", "-o", tmp_path / "x.png") == 2
    assert "made by model" in capsys.readouterr().err
    assert run(oracle_server, "decode", tmp_path / "other.latent", "-o", tmp_path / "x.png", "--force") == 0
