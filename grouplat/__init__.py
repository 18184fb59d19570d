"""grouplat: train, compile, serve and call grouped-latent flow models.

The method core (basis, groups, schedules, solvers, latent operations, the Gaussian oracle) is
numpy-only and lives here; `grouplat.training`, `grouplat.export`, `grouplat.client` and the
Triton models build on it.

Example:
    >>> import grouplat
    >>> space = grouplat.LatentSpace((3, 16, 16), "dct", (30, 100, 200))
    >>> velocity = grouplat.GaussianOracle(space, 0.0, 0.5)  # exact; a trained network in practice
    >>> schedule = grouplat.Schedule.from_cuts(grouplat.PAPER_GENERATE)
    >>> z = grouplat.encode(velocity, velocity.sample(2), space, schedule, steps=40)
    >>> mixed = grouplat.mix(space, z[:1], z[1:], [1])  # S1 of the second image, the rest of the first
    >>> grouplat.decode(velocity, mixed, space, schedule, steps=40).shape
    (1, 3, 16, 16)
"""

from grouplat.ops import interpolate, keep_first, mix, resample, traverse, variations

__version__ = "0.1.0"

from grouplat.oracle import GaussianOracle
from grouplat.schedule import HIDDEN, PAPER_GENERATE, PAPER_TRAIN, Schedule
from grouplat.solvers import allocate_steps, decode, encode, solve, time_grid
from grouplat.space import PAPER_BOUNDARIES, LatentSpace, quadrant_groups

__all__ = [
    "HIDDEN",
    "PAPER_BOUNDARIES",
    "PAPER_GENERATE",
    "PAPER_TRAIN",
    "GaussianOracle",
    "LatentSpace",
    "Schedule",
    "allocate_steps",
    "decode",
    "encode",
    "interpolate",
    "keep_first",
    "mix",
    "quadrant_groups",
    "resample",
    "solve",
    "time_grid",
    "traverse",
    "variations",
]
