"""grouplat: train, compile, serve and call grouped-latent flow models.

The method core (basis, groups, schedules, solvers, latent operations, the Gaussian oracle) is
numpy-only and lives here; `grouplat.training`, `grouplat.export`, `grouplat.client` and the
Triton models build on it.
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
