"""Measures for `grouplat evaluate`: reconstruction, latent statistics, disentanglement, sample quality.

Each disentanglement metric takes codes [N, D] (one row per image) and ground-truth factors [N, K]
(`categorical` names the factor columns that are class labels; the others are continuous) and is
a compact version of its paper's definition. numpy + scikit-learn (imported when first used).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

BINS = 20  # histogram bins per latent dimension and continuous factor (MIG)


def psnr(images: np.ndarray, reference: np.ndarray) -> float:
    """dB over the whole batch (one MSE), peak-to-peak 2 for images in [-1, 1]."""
    mse = float(np.mean((np.asarray(images, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return float(10 * np.log10(4.0 / max(mse, 1e-20)))


def max_abs_correlation(x: np.ndarray) -> float:
    """Largest |Pearson correlation| between two different columns of x [N, D]."""
    corr = np.nan_to_num(np.corrcoef(np.asarray(x, np.float64), rowvar=False))
    np.fill_diagonal(corr, 0.0)
    return float(np.abs(corr).max())


def null_max_abs_correlation(n: int, d: int, seed: int = 0) -> float:
    """The same for N(0, I) samples of the same size: the floor that sampling noise alone gives."""
    return max_abs_correlation(np.random.default_rng(seed).standard_normal((n, d)))


def discretize(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """int [N, D]: equal-width bins per column (disentanglement_lib's histogram discretization)."""
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    out = np.empty(values.shape, dtype=np.int64)
    for d, column in enumerate(values.T):
        out[:, d] = np.digitize(column, np.histogram_bin_edges(column, bins)[1:-1])
    return out


def factor_labels(factors: np.ndarray, categorical: Sequence[int] = (), bins: int = BINS) -> np.ndarray:
    """Factors as integer labels: categorical columns as they are, continuous ones binned."""
    factors = np.asarray(factors, np.float64)
    binned = discretize(factors, bins)
    for k in categorical:
        binned[:, k] = factors[:, k].astype(np.int64)
    return binned


def mig(codes: np.ndarray, factors: np.ndarray, categorical: Sequence[int] = (), bins: int = BINS) -> dict:
    """Mutual Information Gap (Chen et al. 2018, "Isolating sources of disentanglement in VAEs", §4.1).

    Per factor v_k: (I(z_a; v_k) − I(z_b; v_k)) / H(v_k), where z_a and z_b are the two code
    dimensions with the largest mutual information with v_k; MIG is the mean over factors. Mutual
    information (nats) from histograms: `bins` equal-width bins per code dimension and continuous
    factor, categorical factors as they are (as disentanglement_lib computes it).
    """
    from sklearn.metrics import mutual_info_score

    z, v = discretize(codes, bins), factor_labels(factors, categorical, bins)
    if z.shape[1] < 2:
        raise ValueError("MIG needs at least two code dimensions")
    info = np.array([[mutual_info_score(vk, zd) for zd in z.T] for vk in v.T])  # [K, D]
    entropy = np.array([mutual_info_score(vk, vk) for vk in v.T])
    top = -np.sort(-info, axis=1)
    gaps = (top[:, 0] - top[:, 1]) / np.maximum(entropy, 1e-12)
    return {"score": float(gaps.mean()), "per_factor": gaps.tolist()}


def dci(
    codes: np.ndarray,
    factors: np.ndarray,
    categorical: Sequence[int] = (),
    train_fraction: float = 2 / 3,
    trees: int = 50,
    depth: int = 4,
    seed: int = 0,
) -> dict:
    """Disentanglement, completeness, informativeness (Eastwood & Williams 2018, "A framework for
    the quantitative evaluation of disentangled representations", §3).

    One gradient-boosted tree ensemble per factor (fit on the first `train_fraction` of the rows)
    gives the importance matrix R[d, k]. Disentanglement: Σ_d ρ_d (1 − H_K(R[d, :] / Σ_k R[d, k]))
    with ρ_d = Σ_k R[d, k] / Σ R; completeness: the mean over factors of 1 − H_D(R[:, k] / Σ_d R[d, k])
    (entropies in base K and D); informativeness: the mean held-out score, accuracy for a
    categorical factor and R² (clipped at 0) for a continuous one.
    """
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    codes, factors = np.asarray(codes, np.float64), np.asarray(factors, np.float64)
    n = int(len(codes) * train_fraction)
    importance = np.zeros((codes.shape[1], factors.shape[1]))
    scores = []
    for k, target in enumerate(factors.T):
        kind = GradientBoostingClassifier if k in categorical else GradientBoostingRegressor
        model: Any = kind(n_estimators=trees, max_depth=depth, random_state=seed)
        model.fit(codes[:n], target[:n])
        importance[:, k] = model.feature_importances_
        scores.append(max(0.0, float(model.score(codes[n:], target[n:]))))
    total = importance.sum(axis=1)
    weights = total / max(total.sum(), 1e-12)
    disentanglement = float(np.sum(weights * (1 - _entropy(importance, axis=1))))
    completeness = float(np.mean(1 - _entropy(importance, axis=0)))
    return {
        "disentanglement": disentanglement,
        "completeness": completeness,
        "informativeness": float(np.mean(scores)),
        "per_factor_informativeness": scores,
    }


def _entropy(weights: np.ndarray, axis: int) -> np.ndarray:
    """Entropy of the normalized weights along `axis`, in base (the axis' length); 1 if all zero."""
    p = weights / np.maximum(weights.sum(axis=axis, keepdims=True), 1e-12)
    h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0), axis=axis)
    empty = weights.sum(axis=axis) <= 0
    return np.where(empty, 1.0, h / np.log(weights.shape[axis]))


def sap(
    codes: np.ndarray, factors: np.ndarray, categorical: Sequence[int] = (), train_fraction: float = 2 / 3
) -> dict:
    """Separated Attribute Predictability (Kumar et al. 2018, "Variational inference of disentangled
    latent concepts from unlabeled observations", §3).

    Score matrix S[d, k]: for a continuous factor the R² of a linear fit on the single code
    dimension d (its squared correlation); for a categorical factor the held-out accuracy of a
    threshold classifier on d alone (a depth-2 tree: up to 3 thresholds), rescaled so that the
    majority class scores 0 and a perfect classifier 1. SAP is the mean over factors of the gap
    between the two largest scores of its column.
    """
    from sklearn.tree import DecisionTreeClassifier

    codes, factors = np.asarray(codes, np.float64), np.asarray(factors, np.float64)
    n = int(len(codes) * train_fraction)
    scores = np.zeros((codes.shape[1], factors.shape[1]))
    for k, target in enumerate(factors.T):
        if k in categorical:
            chance = np.unique(target[n:], return_counts=True)[1].max() / (len(target) - n)
            for d, column in enumerate(codes.T):
                tree = DecisionTreeClassifier(max_depth=2, random_state=0).fit(column[:n, None], target[:n])
                accuracy = tree.score(column[n:, None], target[n:])
                scores[d, k] = max(0.0, (accuracy - chance) / max(1 - chance, 1e-12))
        else:
            centered = codes - codes.mean(axis=0)
            t = target - target.mean()
            cov = centered.T @ t
            scores[:, k] = cov**2 / np.maximum((centered**2).sum(axis=0) * (t**2).sum(), 1e-300)
    top = -np.sort(-scores, axis=0)
    gaps = top[0] - top[1]
    return {"score": float(gaps.mean()), "per_factor": gaps.tolist()}


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, projections: int = 128, seed: int = 0) -> float:
    """Sliced 1-Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015) between sample sets
    a [N, D] and b [M, D]: the mean over random unit directions of the 1-D W1 distance of the
    projections (compared at the same `max(N, M)` quantile levels)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    directions = np.random.default_rng(seed).standard_normal((a.shape[1], projections))
    directions /= np.linalg.norm(directions, axis=0)
    levels = (np.arange(max(len(a), len(b))) + 0.5) / max(len(a), len(b))
    qa = np.quantile(a @ directions, levels, axis=0)
    qb = np.quantile(b @ directions, levels, axis=0)
    return float(np.mean(np.abs(qa - qb)))


def pooled(images: np.ndarray, size: int = 8) -> np.ndarray:
    """[B, C, H, W] → [B, C·size·size]: block means (sample-quality features)."""
    b, c, h, w = images.shape
    fy, fx = max(1, h // size), max(1, w // size)
    cropped = images[:, :, : h // fy * fy, : w // fx * fx]
    return cropped.reshape(b, c, h // fy, fy, w // fx, fx).mean(axis=(3, 5)).reshape(b, -1)


class ShapeClassifier:
    """The shape kind (circle, square, triangle, plus) of procedural-shapes images.

    An MLP on the foreground mask recentred on its centroid, so colour and position do not
    matter; the shapes draw a bright object (HSV value 0.95) on a dark background (0.30).
    """

    def __init__(self, images: np.ndarray, kinds: np.ndarray, seed: int = 0, max_iter: int = 300) -> None:
        from sklearn.neural_network import MLPClassifier

        self.model = MLPClassifier((128,), max_iter=max_iter, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning with the quick budget
            self.model.fit(self.features(images), np.asarray(kinds).astype(int))

    @staticmethod
    def features(images: np.ndarray) -> np.ndarray:
        value = np.asarray(images, np.float64).max(axis=1)  # [B, H, W], 2v − 1 in [-1, 1]
        mask = np.clip((value + 0.4) / 1.3, 0, 1)  # background (−0.4) → 0, object (0.9) → 1
        b, h, w = mask.shape
        total = mask.sum(axis=(1, 2)) + 1e-6
        cy = (mask.sum(axis=2) * np.arange(h)).sum(axis=1) / total
        cx = (mask.sum(axis=1) * np.arange(w)).sum(axis=1) / total
        shifts = zip(np.rint(h / 2 - cy).astype(int), np.rint(w / 2 - cx).astype(int))
        return np.stack([np.roll(m, (dy, dx), axis=(0, 1)) for m, (dy, dx) in zip(mask, shifts)]).reshape(
            b, -1
        )

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self.features(images))

    def accuracy(self, images: np.ndarray, kinds: np.ndarray) -> float:
        return float(self.model.score(self.features(images), np.asarray(kinds).astype(int)))


def kind_scores(probabilities: np.ndarray) -> dict:
    """Mean confidence (largest class probability) and the Inception-score analogue
    exp(E_x KL(p(y|x) ‖ p(y))) over the shape kinds (1: one kind or no confident kind; 4 at best)."""
    p = np.clip(np.asarray(probabilities, np.float64), 1e-12, 1)
    marginal = p.mean(axis=0, keepdims=True)
    kl = np.sum(p * (np.log(p) - np.log(marginal)), axis=1)
    return {"confidence": float(p.max(axis=1).mean()), "kind_score": float(np.exp(kl.mean()))}
