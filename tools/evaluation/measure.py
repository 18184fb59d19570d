"""What `grouplat evaluate` measures on one model: each function returns a JSON-ready dict.

NFE counts network evaluations per image: Euler and GEI-1 take one per step, Heun and GEI-2m two.
A *probe* space names the coefficient groups that leakage, latent statistics and disentanglement
look at: the grouped model's own groups, and the same index sets for the one-group baseline, so
the two are compared like for like.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from grouplat import knots as calibrated
from grouplat import ops
from grouplat.oracle import GaussianOracle
from grouplat.schedule import Schedule
from grouplat.settings import DEFAULT_ENCODE_STEPS, DEFAULT_SOLVER, DEFAULT_STEPS
from grouplat.solvers import NFE_PER_STEP, Velocity, decode, encode
from grouplat.space import LatentSpace
from grouplat.tools.evaluation import metrics

DEFAULT_NFE = DEFAULT_STEPS * NFE_PER_STEP[DEFAULT_SOLVER]  # a decode's


@dataclass(frozen=True)
class Budget:
    """How much to measure; `FULL` takes ~30–40 min for two 32×32 demo models on 2 CPU cores."""

    images: int = 8  # round trip, one-way decode, leakage and Fig. 5 (per model)
    nfe: tuple[int, ...] = (10, 20, 24, 30, 60)  # round-trip and one-way NFE (24: the served decode)
    reference: int = 4  # one-way reference: GEI-2m at this × the largest NFE
    latents: int = 1000  # held-out images encoded for statistics and disentanglement
    solver: str = DEFAULT_SOLVER  # the served default: latents, leakage, Fig. 5 and Table 1 use it
    encode_nfe: int | None = None  # for those latents and Fig. 5; None: each model's served encode
    decode_nfe: int | None = None  # for leakage and Fig. 5; None: each model's served decode
    samples: int = 512  # generated images per Table-1 cell
    sample_nfe: int = DEFAULT_NFE  # Table 1: network evaluations (a headed model's S1 steps on top)
    classifier: int = 4000  # real images to train the shape classifier on
    classifier_iter: int = 300


FULL = Budget()
QUICK = Budget(
    images=2, nfe=(6, 12), reference=2, latents=60, encode_nfe=8, decode_nfe=8, samples=12, sample_nfe=8,
    classifier=200, classifier_iter=30,
)  # fmt: skip


@dataclass
class Model:
    """One checkpoint, ready to encode and decode with a velocity engine."""

    name: str
    path: str
    fingerprint: str
    space: LatentSpace
    train: Schedule  # the training schedule
    generate: Schedule  # the generation (decode) schedule for everything but Table 1
    velocity: Velocity
    mean: np.ndarray  # per-coefficient data statistics [C, H·W]
    std: np.ndarray
    hide: bool
    encoding: Schedule | None = None  # the encode's schedule; None: `generate`
    knots: dict = field(default_factory=dict)  # calibrated knots (grouplat.knots), as served
    s1_covariance: np.ndarray | None = None  # S1's full covariance (an S1 head), as served
    served: tuple[int, int] = (DEFAULT_STEPS, DEFAULT_ENCODE_STEPS)  # default steps: decode, encode

    def steps(self, nfe: int | None, solver: str, schedule: Schedule, direction: str = "decode") -> int:
        """The steps of a solve that makes `nfe` network evaluations (None: the served default
        steps of `direction`). A headed model's S1 phase runs on its head alone (2–5% of a
        network evaluation, `S1PhaseVelocity`): S1's steps, its share of `schedule`, come on top."""
        if nfe is None:
            return self.served[direction == "encode"]
        steps = nfe // NFE_PER_STEP[solver]
        if self.s1_on_head(schedule):
            steps = round(steps / (1 - float(schedule.end[0] - schedule.start[0])))
        return steps

    def s1_on_head(self, schedule: Schedule) -> bool:
        """S1's phase runs on the S1 head alone: a headed model, every other group hidden then."""
        return self.s1_covariance is not None and self.hide and bool(schedule.hidden[0, 1:].all())

    def _solve(
        self, solver: str, nfe: int | None, schedule: Schedule | None, direction: str = "decode"
    ) -> dict:
        schedule = schedule or (self.encoding or self.generate if direction == "encode" else self.generate)
        steps = self.steps(nfe, solver, schedule, direction)
        if steps < self.space.k:
            raise ValueError(f"{nfe} NFE with {solver} cannot cover {self.space.k} groups")
        return dict(
            velocity=self.velocity, space=self.space, schedule=schedule, steps=steps,
            solver=solver, std=self.std, mean=self.mean, hide=self.hide, s1_covariance=self.s1_covariance,
            knots=calibrated.lookup(self.knots, direction, schedule, steps, solver, "tau"),
        )  # fmt: skip

    def encode(self, images: np.ndarray, nfe: int | None, solver: str = DEFAULT_SOLVER) -> np.ndarray:
        return encode(images=images, **self._solve(solver, nfe, None, "encode"))

    def decode(
        self,
        latents: np.ndarray,
        nfe: int | None,
        solver: str = DEFAULT_SOLVER,
        schedule: Schedule | None = None,
    ) -> np.ndarray:
        return decode(latents=latents, **self._solve(solver, nfe, schedule))

    def decode_coefficients(
        self, latents: np.ndarray, nfe: int | None, solver: str = DEFAULT_SOLVER
    ) -> np.ndarray:
        """The decoded image's basis coefficients [B, C, H·W], as the solver ends (no round-off from
        the basis transforms)."""
        states: list[np.ndarray] = []
        decode(
            latents=latents,
            callback=lambda i, t, x: states.append(x.copy()),
            **self._solve(solver, nfe, None),
        )
        return states[-1]

    def describe(self) -> dict:
        return {
            "path": self.path,
            "fingerprint": self.fingerprint,
            "space": self.space.describe(),
            "train_schedule": self.train.describe(),
            "generate_schedule": self.generate.describe(),
            "encode_schedule": (self.encoding or self.generate).describe(),
            "calibrated_knots": ", ".join(sorted(self.knots)) or "none (even)",
            "served_steps": {"decode": self.served[0], "encode": self.served[1]},
            "hide": self.hide,
        }


def generation_schedules(k: int, train: Schedule) -> list[Schedule]:
    """Table 1's generation axis: the paper's three for four groups, else training and even cuts."""
    if k == 4:
        return [Schedule.from_cuts(c) for c in ("0.1,0.2,0.3", "0.3,0.5,0.7", "0.6,0.8,0.9")]
    even = Schedule.from_cuts([j / k for j in range(1, k)])
    return [train] if even == train else [train, even]


def round_trip(model: Model, images: np.ndarray, budget: Budget) -> dict:
    """Encode → decode PSNR (dB) per solver and NFE (both directions at that NFE)."""
    return {
        solver: {str(n): metrics.psnr(model.decode(model.encode(images, n, solver), n, solver), images)
                 for n in budget.nfe if n // NFE_PER_STEP[solver] >= model.space.k}
        for solver in ("euler", "heun")
    }  # fmt: skip


def one_way(model: Model, budget: Budget, seed: int) -> dict:
    """Decode of fixed N(0, I) latents vs a many-step GEI-2m reference decode (docs/design.md §1, trap 2)."""
    latents = np.random.default_rng(seed).standard_normal((budget.images, *model.space.latent_shape))
    latents = latents.astype(np.float32)
    steps = budget.reference * max(budget.nfe)
    reference = model.decode(latents, steps, "gei2m")
    result: dict = {"reference": f"gei2m, {steps} NFE"}
    for solver in ("euler", "heun", "gei2m", "gei3ab", "gei2pc"):
        result[solver] = {
            str(n): metrics.psnr(model.decode(latents, n, solver), reference)
            for n in budget.nfe
            if n // NFE_PER_STEP[solver] >= model.space.k
        }
    return result


def leakage(model: Model, latents: np.ndarray, probe: LatentSpace, budget: Budget, seed: int) -> dict:
    """Resample probe group j of each latent, decode, and compare the decoded coefficients: the RMS
    change of each coarser group i divided by the RMS change of group j. `{"Sj": {"Si": ratio}}`.

    Compared as the solver leaves them (a basis transform of the images would add float32 round-off
    from the finer groups), so with hidden groups the coarser groups' change is exactly 0."""
    rng = np.random.default_rng(seed)
    latents = np.ascontiguousarray(latents)  # as the perturbed copies: BLAS rounding follows memory layout
    original = model.decode_coefficients(latents, budget.decode_nfe, budget.solver).astype(np.float64)
    result: dict = {}
    for j in range(2, probe.k + 1):  # one solve each: the same batch positions, so no batch effects
        noise = rng.standard_normal(latents.shape).astype(np.float32)
        perturbed = np.where(probe.coefficient_mask([j]), noise, latents)
        change = (
            model.decode_coefficients(perturbed, budget.decode_nfe, budget.solver).astype(np.float64)
            - original
        )

        def rms(g: int, change: np.ndarray = change) -> float:
            return float(np.sqrt(np.mean(change[..., probe.indices(g)] ** 2)))

        result[f"S{j}"] = {f"S{i}": rms(i) / max(rms(j), 1e-30) for i in range(1, j)}
    return result


def latent_statistics(latents: np.ndarray, probe: LatentSpace, seed: int) -> dict:
    """Per probe group: mean |mean| and the std range of its elements; for S1 the largest
    |correlation| between two of its elements, beside that of N(0, I) samples of the same size."""
    z = np.asarray(latents, np.float64)
    groups = []
    for g in range(1, probe.k + 1):
        part = z[..., probe.indices(g)].reshape(len(z), -1)
        std = part.std(axis=0)
        groups.append(
            {
                "group": f"S{g}",
                "abs_mean": float(np.abs(part.mean(axis=0)).mean()),
                "std_mean": float(std.mean()),
                "std_min": float(std.min()),
                "std_max": float(std.max()),
            }
        )
    s1 = s1_codes(z, probe)
    return {
        "count": len(z),
        "groups": groups,
        "s1_max_abs_corr": metrics.max_abs_correlation(s1),
        "s1_null_max_abs_corr": metrics.null_max_abs_correlation(len(s1), s1.shape[1], seed),
    }


def s1_spread(
    probe: LatentSpace,
    mean: np.ndarray,
    std: np.ndarray,
    images: np.ndarray,
    samples: np.ndarray,
    latents: np.ndarray,
    bands: int = 3,
) -> list[dict]:
    """Where held-out latents miss N(0, I): along the principal directions of the held-out images'
    standardized S1 coefficients ((x̄ − μ) / σ), in `bands` bands from widest to thinnest, the mean
    std of the images, of the model's samples and of the images' latents.

    Remark 2.1's N(0, I) holds for the model's own distribution. Where the samples spread wider
    than the data (a model not yet as thin as data that few factors make), held-out images sit in
    the middle of the model's spread and their latents come out narrower than 1 along those
    directions: a model error, not a solver one."""
    standardize = GaussianOracle(
        probe, mean, std
    ).encode  # (x̄ − μ) / σ: the per-coefficient Gaussian's latents
    data, generated = s1_codes(standardize(images), probe), s1_codes(standardize(samples), probe)
    variance, rotation = np.linalg.eigh(np.cov(data, rowvar=False))
    rotation = rotation[:, np.argsort(-variance)]

    def along(x: np.ndarray) -> np.ndarray:
        return ((x - x.mean(axis=0)) @ rotation).std(axis=0)

    spreads = {"images": along(data), "samples": along(generated), "latents": along(s1_codes(latents, probe))}
    return [
        {
            "directions": [int(band[0]), int(band[-1]) + 1],
            **{k: float(v[band].mean()) for k, v in spreads.items()},
        }
        for band in np.array_split(np.arange(data.shape[1]), bands)
    ]


def s1_codes(latents: np.ndarray, probe: LatentSpace) -> np.ndarray:
    """[N, C·|S1|]: the S1 elements of every latent (all channels)."""
    return np.asarray(latents)[..., probe.indices(1)].reshape(len(latents), -1)


def disentanglement(codes: np.ndarray, factors: np.ndarray, categorical: Sequence[int]) -> dict:
    return {
        "mig": metrics.mig(codes, factors, categorical),
        "dci": metrics.dci(codes, factors, categorical),
        "sap": metrics.sap(codes, factors, categorical),
    }


def keep_first(
    model: Model, images: np.ndarray, latents: np.ndarray, keep: Sequence[int], budget: Budget
) -> dict:
    """Fig. 5: PSNR of decoding the first m latent coefficients per channel (the rest zero)."""
    batch = np.concatenate([ops.keep_first(model.space, latents, m) for m in keep])
    decoded = np.split(model.decode(batch, budget.decode_nfe, budget.solver), len(keep))
    return {str(m): metrics.psnr(d, images) for m, d in zip(keep, decoded)}


def dct_keep_first(space: LatentSpace, images: np.ndarray, mean: np.ndarray, keep: Sequence[int]) -> dict:
    """Plain truncation: the first m basis coefficients per channel, the rest at the data mean."""
    coefficients = space.to_latent(images)
    result = {}
    for m in keep:
        truncated = np.where(np.arange(space.size) < m, coefficients, mean)
        result[str(m)] = metrics.psnr(space.from_latent(truncated.astype(np.float32)), images)
    return result


def sample_quality(
    samples: np.ndarray,
    real: np.ndarray,
    scale: tuple[np.ndarray, np.ndarray],
    classifier: metrics.ShapeClassifier | None,
) -> dict:
    """Sliced Wasserstein distance of pooled-pixel features (standardized by the real data's),
    and the shape classifier's confidence and kind score on the samples."""
    center, spread = scale
    result = {
        "swd": metrics.sliced_wasserstein(
            (metrics.pooled(samples) - center) / spread, (metrics.pooled(real) - center) / spread
        )
    }
    if classifier is not None:
        result.update(metrics.kind_scores(classifier.probabilities(samples)))
    return result
