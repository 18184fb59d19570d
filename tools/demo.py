"""`grouplat demo`: the whole system on the shipped demo model, with the paper's figures.

Exports the demo checkpoint to ONNX, starts the embedded Triton server, and through the gRPC
client encodes held-out shapes and real photographs, edits their latents and decodes them; the
figures that need the solver's inner states (Fig. 2a, Fig. 3) or a second model (the scalar
baseline of Fig. 1) run the same engines in-process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

import grouplat

# The shipped checkpoints: package data (grouplat/models -> ../models in a checkout), so they are
# found the same way in a checkout and in an installed wheel.
MODELS = resources.files("grouplat") / "models"
SCALE = 4  # figure pixels per image pixel: 32×32 images are small


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the shipped demo model end to end and draw the paper's figures",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="demo", help="folder for the figures (and the model repository)")
    p.add_argument("--model", default=str(MODELS / "shapes32"), help="grouped-latent checkpoint")
    p.add_argument(
        "--baseline", default=str(MODELS / "shapes32-scalar"), help="scalar-schedule checkpoint (Fig. 1)"
    )
    p.add_argument("--gmm", default=str(MODELS / "gmm2d"), help="2-D Gaussian mixture checkpoint (Fig. 2a)")
    p.add_argument(
        "--quadrants", default=str(MODELS / "shapes32-quadrants"), help="pixel-basis quadrant model (Fig. 2b)"
    )
    p.add_argument("--steps", type=int, help="ODE steps per encode and decode (default: the served pair)")
    p.add_argument("--quick", action="store_true", help="fewer images and steps (for tests)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from grouplat.client import Client, grid, save_image
    from grouplat.export.engine import engine_velocity, export_engines, model_info
    from grouplat.export.repository import ServingOptions, write_repository
    from grouplat.serving.server import EmbeddedServer
    from grouplat.training.checkpoint import load_checkpoint

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = 4 if args.quick else 8
    started = time.perf_counter()
    figures: list[Path] = []
    bar = tqdm(total=11, unit="step", desc="grouplat demo")  # the repository, then 10 figures

    def save(name: str, rows: np.ndarray) -> None:
        picture = grid(rows)
        picture = picture.repeat(SCALE, axis=0).repeat(SCALE, axis=1)
        save_image(picture, out / name)
        figures.append(out / name)
        bar.update(1)

    checkpoint = load_checkpoint(args.model)
    info = model_info(checkpoint)
    onnx_model, s1_head, _ = export_engines(checkpoint.network, info)
    steps = args.steps or (8 if args.quick else None)  # given: both directions; else the served pair
    options = ServingOptions(steps=steps).resolved(info)
    with tempfile.TemporaryDirectory() as scratch:
        repository = Path(scratch) / "repository"
        write_repository(repository, info, onnx_model, options, s1_head=s1_head)
        bar.update(1)
        with EmbeddedServer(repository) as server, Client(server.grpc_url) as client:
            shapes = held_out_shapes(info.space.height, n)
            photos = photographs(info.space.height, 4 if args.quick else 6)
            latents = client.encode(shapes)
            photo_latents = client.encode(photos)
            # Fig. 4: one group moved from image 0 to image 1, the others fixed (one row per group).
            weights = np.linspace(0, 1, n)
            save(
                "fig4_interpolation.png",
                np.stack(
                    [
                        client.interpolate(latents[0:1], latents[1:2], g, weights)
                        for g in range(1, info.space.k + 1)
                    ]
                ),
            )
            # Fig. 5: decode from the first m coefficients (rest 0) vs plain DCT truncation.
            keeps = [m for m in (10, 30, 100, 500) if m < info.space.size]
            rows = [shapes[:n]]
            for m in keeps:
                rows.append(
                    np.concatenate([client.reconstruct(latents[i : i + 1], keep=m) for i in range(n)])
                )
                rows.append(dct_truncation(info.space, shapes[:n], m))
            save("fig5_reconstruction.png", np.stack(rows))
            # Fig. 6: each row keeps its left image's finer groups and takes S1 (identity, pose,
            # class) from the image at the top of the column.
            a, b = shapes[: n // 2], shapes[n // 2 : n]
            rows = [np.concatenate([np.ones_like(b[:1]), b])]
            for i in range(len(a)):
                mixed_row = client.mix(np.repeat(a[i : i + 1], len(b), 0), b, groups=[1])
                rows.append(np.concatenate([a[i : i + 1], mixed_row]))
            save("fig6_mixing.png", np.stack(rows))
            # Fig. 7: single elements of S1 traversed over [-3, 3] (channel 0, indices 1..).
            values = np.linspace(-3, 3, n)
            save(
                "fig7_traversal.png",
                np.stack([client.traverse(latents[0:1], 0, index, values) for index in range(1, 5)]),
            )
            # Fig. 8: real photographs: reconstruction, an S1 element moved, S1 from a shape.
            recon = client.decode(photo_latents)
            moved = np.concatenate(
                [client.traverse(photo_latents[i : i + 1], 0, 1, [2.5]) for i in range(len(photos))]
            )
            mixed = client.mix(photo_latents, latents[0:1], groups=[1])
            save("fig8_real_edit.png", np.stack([photos, recon, moved, mixed]))
            # Fig. 9: keep S1 (then S1–S2), resample the rest.
            save(
                "fig9_variations.png",
                np.stack(
                    [
                        client.variations(latents[i : i + 1], keep, n, seed=i)
                        for i, keep in enumerate(([1], [1, 2]))
                    ]
                ),
            )
            latent_values = latents.values
        engine = engine_velocity(onnx_model, s1_head)
        # Fig. 3: the decode of a few latents, shown at the end of each group's phase.
        save("fig3_sequential.png", sequential_states(engine, latent_values[:n], info, options))
        # Fig. 1: the scalar baseline's same elements traversed, beside the grouped model's.
        baseline = baseline_traversal(args.baseline, engine, latent_values[0], info, options, values)
        save("fig1_baseline_traversal.png", baseline)
        gmm_figure(args.gmm, out / "fig2a_gmm.png", 512 if args.quick else 2048)
        figures.append(out / "fig2a_gmm.png")
        bar.update(1)
        save("fig2b_quadrants.png", quadrant_figure(args.quadrants, 3 if args.quick else 6))
    bar.close()
    print(f"grouplat demo: {len(figures)} figures in {out}/ ({time.perf_counter() - started:.0f} s)")
    for path in figures:
        print(f"  {path}")
    return 0


def held_out_shapes(resolution: int, n: int) -> np.ndarray:
    """n shapes the model never saw."""
    from grouplat.training.dataset import held_out_shapes

    return held_out_shapes(resolution).images(np.arange(n))


def photographs(resolution: int, n: int) -> np.ndarray:
    """Real photographs shipped inside scikit-learn and scikit-image, centre-cropped and resized."""
    from grouplat.images import from_uint8
    from grouplat.training.dataset import sample_photographs

    pictures = sample_photographs((resolution, resolution), n)
    if not pictures:
        raise RuntimeError(
            "the demo's photographs come from scikit-learn / scikit-image: install grouplat[demo]"
        )
    return from_uint8(np.stack(pictures))


def dct_truncation(space: grouplat.LatentSpace, images: np.ndarray, m: int) -> np.ndarray:
    coefficients = space.to_latent(images)
    coefficients[..., m:] = 0
    return np.clip(space.from_latent(coefficients), -1, 1)


def solver_settings(info: Any, options: Any) -> dict[str, Any]:
    """The settings the served models use by default, for the in-process figures."""
    from grouplat.export.repository import default_generate_schedule

    return dict(info.solve_args(default_generate_schedule(info, options), options.steps, options.solver))


def sequential_states(engine: Any, latents: np.ndarray, info: Any, options: Any) -> np.ndarray:
    """Rows: one latent each; columns: x_t at t = 1 and at the end of each group's decode phase."""
    settings = solver_settings(info, options)
    schedule = settings["schedule"]
    ends = set(np.round(schedule.start, 9))  # decode runs t from 1 to 0: phase j ends at s_j
    states = [info.space.from_latent(latents)]

    def snapshot(step: int, t: float, x: np.ndarray) -> None:
        if round(t, 9) in ends:
            states.append(info.space.from_latent(x))

    grouplat.decode(engine, latents, callback=snapshot, **settings)
    return np.clip(np.stack(states, axis=1), -1, 1)


def baseline_traversal(
    path: str, engine: Any, latent: np.ndarray, info: Any, options: Any, values: np.ndarray
) -> np.ndarray:
    """Row 1: the grouped model's S1 element (channel 0, index 1) traversed; row 2: the scalar
    baseline's same coefficient. The grouped model changes the shape's attributes while the image
    stays a clean shape; the baseline's element is one coefficient among all."""
    from grouplat.export.engine import model_info, onnx_velocity
    from grouplat.training.checkpoint import load_checkpoint

    grouped = grouplat.decode(
        engine, grouplat.traverse(info.space, latent, 0, 1, values), **solver_settings(info, options)
    )
    baseline = load_checkpoint(path)
    base_info = model_info(baseline)
    base_engine = onnx_velocity(baseline)
    if base_info.space.latent_shape != info.space.latent_shape:
        raise ValueError(f"the baseline {path} has another image shape than the demo model")
    scalar = grouplat.decode(
        base_engine,
        grouplat.traverse(base_info.space, latent, 0, 1, values),
        **solver_settings(base_info, options),
    )
    return np.clip(np.stack([grouped, scalar]), -1, 1)


def gmm_figure(path: str, target: Path, n: int) -> None:
    """Fig. 2a: 2-D points decoded from noise; x (S1) settles before y (S2) moves."""
    from PIL import Image, ImageDraw

    from grouplat.training.checkpoint import load_checkpoint

    model = load_checkpoint(path)
    schedule = model.schedule
    z = np.random.default_rng(0).standard_normal((n, *model.space.latent_shape)).astype(np.float32)
    frames = [z.copy()]
    cut = float(schedule.start.max())  # the end of S1's decode phase (t from 1 down to this)

    def snapshot(step: int, t: float, x: np.ndarray) -> None:
        if abs(t - cut) < 1e-9 or t == 0.0:
            frames.append(x.copy())

    grouplat.decode(
        model.velocity(),
        z,
        model.space,
        schedule,
        steps=40,
        std=model.data_std,
        hide=model.hide,
        callback=snapshot,
    )
    size, pad = 256, 8
    picture = Image.new("RGB", (3 * size + 2 * pad, size), "white")
    draw = ImageDraw.Draw(picture)
    for panel, points in enumerate(frames[:3]):
        xy = points.reshape(n, -1)[:, :2]
        left = panel * (size + pad)
        draw.rectangle([left, 0, left + size - 1, size - 1], outline="gray")
        for x, y in np.clip((xy + 2.5) / 5, 0, 1) * (size - 1):  # the mixture lies on the unit circle
            draw.point((left + float(x), size - 1 - float(y)), fill=(200, 40, 40))
    picture.save(target)


def quadrant_figure(path: str, n: int) -> np.ndarray:
    """Fig. 2b: pixel groups (the image's quadrants, S1 top-left). Rows: one latent each; columns:
    the image after each quadrant's decode phase (the quadrants still to come at the data mean),
    then the final image with quadrant S1 taken from the next row's latent."""
    from grouplat.export.engine import onnx_velocity
    from grouplat.settings import default_generate_schedule
    from grouplat.training.checkpoint import load_checkpoint

    model = load_checkpoint(path)
    space, engine = model.space, onnx_velocity(model)
    schedule = default_generate_schedule(space.k, model.schedule, model.s1_covariance is not None)
    z = np.random.default_rng(7).standard_normal((n, *space.latent_shape)).astype(np.float32)
    solve: dict[str, Any] = dict(space=space, schedule=schedule, steps=[8] * space.k, solver="gei2m",
                 std=model.data_std, mean=model.data_mean, hide=model.hide)  # fmt: skip
    ends = set(np.round(schedule.start, 9))  # decode runs t from 1 to 0: phase j ends at s_j
    decoded: list[np.ndarray] = []
    order = sorted(range(space.k), key=lambda j: -schedule.start[j])  # decode order: S1 first

    def snapshot(step: int, t: float, x: np.ndarray) -> None:
        if round(t, 9) in ends:
            done = np.isin(space.group_of, order[: len(decoded) + 1])
            decoded.append(space.from_latent(np.where(done, x, model.data_mean)))

    grouplat.decode(engine, z, callback=snapshot, **solve)
    mixed = grouplat.decode(engine, grouplat.mix(space, z, np.roll(z, -1, axis=0), [1]), **solve)
    return np.clip(np.stack([*decoded, mixed], axis=1), -1, 1)
