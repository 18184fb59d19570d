"""`grouplat solvers` in its --quick form: every curve, the measured split served as a schedule, --splits."""

from __future__ import annotations

import json

import numpy as np
import torch

import grouplat
from grouplat.cli import main as grouplat_main
from grouplat.schedule import Schedule
from grouplat.solvers import SOLVERS, allocate_steps
from grouplat.training.checkpoint import save_checkpoint
from grouplat.training.networks import build_network


def tiny_grouped_checkpoint(directory) -> str:
    space = grouplat.LatentSpace((3, 16, 16), "dct", (8, 32, 100))
    network = dict(arch="unet", channels=3, resolution=[16, 16], levels=4, model_channels=8,
                   channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    net = build_network(network)
    metadata = {"network": network, "space": space.describe(), "schedule": grouplat.PAPER_TRAIN, "hide": True,
                "data": {"spec": "shapes:16", "seed": 0}}  # fmt: skip
    std = np.linspace(2.0, 0.2, space.size, dtype=np.float32) * np.ones(space.latent_shape, np.float32)
    save_checkpoint(directory, net, net, metadata, np.zeros(space.latent_shape, np.float32), std)
    return str(directory)


def test_solvers_quick_measures_every_setting_and_serves_the_measured_split(tmp_path, capsys) -> None:
    checkpoint = tiny_grouped_checkpoint(tmp_path / "model")
    out = tmp_path / "solvers"
    args = [
        "solvers",
        checkpoint,
        "--quick",
        "--threads",
        "1",
        "--splits",
        "3,2,2,1 4,3,3,2",
        "--out",
        str(out),
    ]
    assert grouplat_main(args) == 0
    report = json.loads((out / "solvers.json").read_text())
    (result,) = report["models"].values()
    assert len([n for n in result["curves"] if n.count("/") == 2 and n.split("/")[2] in
                ("schedule", "even", "measured")]) == len(SOLVERS) * 2 * 3  # fmt: skip
    for solver, per_step in (("euler", 1), ("gei2m", 2), ("gei3ab", 1), ("gei2pc", 1)):
        curve = result["curves"][f"{solver}/tau/3-2-2-1"]
        assert list(curve) == [str(8 * per_step)] and np.isfinite(curve[str(8 * per_step)])
    for split in result["splits"].values():  # the measured split, written as a schedule, gives it back
        schedule = Schedule.from_cuts(split["schedule"])
        assert allocate_steps(schedule, sum(split["steps"])).tolist() == split["steps"]
    assert result["best"]["setting"] in result["curves"]
    assert "| gei2m/tau/4-3-3-2 |" in (out / "solvers.md").read_text()
    assert set(result["round_trip"]) == {f"{s}/tau/{c}" for s in SOLVERS for c in ("3-2-2-1", "4-3-3-2")}
    assert (
        all(np.isfinite(db) for db in result["round_trip"].values())
        and "Round trip of 2" in (out / "solvers.md").read_text()
    )
    capsys.readouterr()
    assert grouplat_main([*args[:2], "--quick", "--splits", "3,2,2", "--out", str(out)]) == 2
    assert "--splits and --encode-split need 4 positive counts" in capsys.readouterr().err
    assert grouplat_main([*args[:2], "--quick", "--encode-split", "3,2,0,2", "--out", str(out)]) == 2
    assert "take positive counts" in capsys.readouterr().err
    assert grouplat_main([*args[:2], "--quick", "--solvers", "gei2m,rk4", "--out", str(out)]) == 2
    assert "--solvers takes names from" in capsys.readouterr().err
    assert grouplat_main([*args[:2], "--quick", "--solvers", "gei3ab", "--out", str(out)]) == 0
    only = json.loads((out / "solvers.json").read_text())["models"][checkpoint]["curves"]
    assert only and all(name.startswith("gei3ab/") for name in only)


def test_round_trips_leave_the_one_way_curves_alone(tmp_path) -> None:
    """Measuring round trips of held-out images changes no one-way figure (each decodes the same latents)."""
    from grouplat.tools.evaluation.cli import Engine, held_out_shapes, load_model
    from grouplat.tools.solvers import study

    checkpoint = tiny_grouped_checkpoint(tmp_path / "model")
    model = load_model(checkpoint, "tiny", Engine("onnx", 1))
    images = held_out_shapes(checkpoint, model.space.shape).images(np.arange(2))
    args = (model, [8], 2, 16, 8, 2, ([3, 2, 2, 1], [4, 3, 3, 2]), ["gei3ab"])
    alone, with_images = study(*args), study(*args, images)
    assert with_images["curves"] == alone["curves"] and len(with_images["round_trip"]) == 2
    # one encode for every split: a split's round trip then differs from its own-split one
    shared = study(*args, images, [4, 3, 3, 2])
    assert shared["curves"] == alone["curves"]
    assert shared["round_trip"]["gei3ab/tau/4-3-3-2"] == with_images["round_trip"]["gei3ab/tau/4-3-3-2"]
    assert shared["round_trip"]["gei3ab/tau/3-2-2-1"] != with_images["round_trip"]["gei3ab/tau/3-2-2-1"]


def test_calibrate_fits_each_splits_knots_and_checks_them_on_other_latents(tmp_path, capsys) -> None:
    checkpoint = tiny_grouped_checkpoint(tmp_path / "model")
    out = tmp_path / "solvers"
    args = ["solvers", checkpoint, "--quick", "--threads", "1", "--solvers", "gei2pc", "--out", str(out)]
    assert grouplat_main([*args, "--splits", "4,3,3,2", "--calibrate", "1"]) == 0
    (result,) = json.loads((out / "solvers.json").read_text())["models"].values()
    calibrated = result["calibrated"]["gei2pc/tau/4-3-3-2"]
    assert [len(k) for k in calibrated["knots"]] == [3, 2, 2, 1]
    assert calibrated["fit"][1] >= calibrated["fit"][0]  # a move is kept only when it helps
    assert calibrated["fit"][0] == result["curves"]["gei2pc/tau/4-3-3-2"]["12"]  # even knots: the curve's
    assert all(np.isfinite(calibrated["held_out"]))
    assert "- gei2pc/tau/4-3-3-2: other latents" in (out / "solvers.md").read_text()
    capsys.readouterr()
    assert grouplat_main([*args, "--calibrate", "-1"]) == 2
    assert "--calibrate takes a number of passes" in capsys.readouterr().err


def test_calibrate_writes_both_directions_knots_beside_the_checkpoint(tmp_path, capsys) -> None:
    """`grouplat calibrate`: the served splits' knots, fitted (never worse than even on the latents
    fitted to), written to knots.json, which the checkpoint then loads; bad arguments refused."""
    from grouplat.training.checkpoint import load_checkpoint

    checkpoint = tiny_grouped_checkpoint(tmp_path / "model")
    args = ["calibrate", checkpoint, "--quick", "--threads", "1", "--steps", "8", "--encode-steps", "12"]
    assert grouplat_main(args) == 0
    printed = capsys.readouterr().out
    assert "one-way decode, other latents: even" in printed and "knots.json" in printed
    content = json.loads((tmp_path / "model" / "knots.json").read_text())
    schedules = grouplat.settings.default_generate_schedule(4), grouplat.settings.default_encode_schedule(4)
    splits = [allocate_steps(s, n).tolist() for s, n in zip(schedules, (8, 12))]
    names = [f"{d}/gei2pc/tau/{'-'.join(map(str, split))}" for d, split in zip(("decode", "encode"), splits)]
    assert sorted(content["knots"]) == sorted(names)
    for name, split in zip(names, splits):
        assert [len(k) for k in content["knots"][name]] == [n - 1 for n in split]
    fitted = content["fitted"]
    for direction in ("decode", "round_trip"):
        assert fitted[direction]["fit"][1] >= fitted[direction]["fit"][0]  # a move is kept only when it helps
        assert all(np.isfinite(fitted[direction]["held_out"]))
    assert load_checkpoint(checkpoint).knots == content["knots"]
    assert grouplat_main([*args[:-4], "--steps", "12", "--dry-run"]) == 0  # another setting, nothing written
    assert sorted(json.loads((tmp_path / "model" / "knots.json").read_text())["knots"]) == sorted(names)
    capsys.readouterr()
    for bad, message in (
        (["--steps", "2"], "2 steps cannot cover 4 groups"),
        (["--solver", "rk4"], "unknown solver 'rk4'"),
        (["--passes", "0"], "must be positive"),
    ):
        assert grouplat_main([*args[:3], *bad]) == 2
        assert message in capsys.readouterr().err
