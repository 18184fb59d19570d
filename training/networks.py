"""Group-conditioned velocity networks (docs/design.md §1): `f_θ(x_t, levels) → [B, C, H, W]`.

A DDPM++-style U-Net after EDM's SongUNet, and a small MLP for 2-D point data. Both see the k
group levels — never t — through one embedding that is added in every block. Export-friendly:
no data-dependent Python control flow, static shapes except the batch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from grouplat.basis import dct_matrix
from grouplat.oracle import gaussian_residual_scale, gaussian_velocity
from grouplat.space import LatentSpace

# ----------------------------------------------------------------------------
# Layers with EDM's initialization (xavier-uniform, scaled; near-zero for the last layer of a
# residual branch so that every block starts as the identity).


def _init(layer: nn.Conv2d | nn.Linear, weight: float = 1.0) -> nn.Module:
    nn.init.xavier_uniform_(layer.weight, gain=weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def conv(cin: int, cout: int, kernel: int, weight: float = 1.0) -> nn.Module:
    return _init(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), weight)


def linear(cin: int, cout: int, weight: float = 1.0) -> nn.Module:
    return _init(nn.Linear(cin, cout), weight)


def group_norm(channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """EDM's GroupNorm: up to 32 groups, at least 4 channels per group (and a divisor of channels)."""
    return nn.GroupNorm(math.gcd(channels, max(1, min(32, channels // 4))), channels, eps=eps)


# ----------------------------------------------------------------------------
# Level embedding: the network's only conditioning.


class LevelEmbedding(nn.Module):
    """Levels [B, k] (α_j in [0, 1], or −1 for a hidden group) → embedding [B, channels].

    Per group: α, a hidden flag, and `frequencies` smooth features sin/cos(nπα), n = 1…F, then a
    2-layer MLP. Low frequencies only: high-frequency Fourier features of log(1−α) made the
    prototype's network rough near α = 1 (docs/design.md §1).
    """

    freqs: torch.Tensor

    def __init__(self, levels: int, channels: int, frequencies: int = 4) -> None:
        super().__init__()
        self.register_buffer("freqs", math.pi * torch.arange(1, frequencies + 1.0), persistent=False)
        self.layer0 = linear(levels * (2 + 2 * frequencies), channels)
        self.layer1 = linear(channels, channels)

    def forward(self, levels: torch.Tensor) -> torch.Tensor:
        hidden = (levels < 0).to(levels.dtype)
        alpha = levels.clamp(0, 1)
        angles = alpha[..., None] * self.freqs.to(levels.dtype)  # [B, k, F]
        visible = (1 - hidden)[..., None]
        features = torch.cat(
            [alpha, hidden, (angles.sin() * visible).flatten(1), (angles.cos() * visible).flatten(1)], dim=1
        )
        return F.silu(self.layer1(F.silu(self.layer0(features))))


# ----------------------------------------------------------------------------
# U-Net block: GroupNorm + SiLU residual block with optional 2× resampling and self-attention.


class UNetBlock(nn.Module):
    """EDM's UNetBlock in its DDPM++ setting (additive embedding, resample_proj, one head)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        dropout: float = 0.0,
        skip: bool = False,  # concatenate a U-Net skip connection in front (decoder)
    ) -> None:
        super().__init__()
        self.cin, self.cout, self.up, self.down, self.takes_skip = cin, cout, up, down, skip
        self.dropout = dropout
        self.skip_scale = math.sqrt(0.5)
        self.norm0 = group_norm(cin)
        self.conv0 = conv(cin, cout, 3)
        self.affine = linear(emb_channels, cout)
        self.norm1 = group_norm(cout)
        self.conv1 = conv(cout, cout, 3, weight=1e-5)
        self.skip = conv(cin, cout, 1) if (cin != cout or up or down) else None
        self.attention = attention
        if attention:
            self.norm2 = group_norm(cout)
            self.qkv = conv(cout, 3 * cout, 1, weight=math.sqrt(0.2))
            self.proj = conv(cout, cout, 1, weight=1e-5)

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        """EDM's [1, 1] filter: nearest-neighbour 2× up, 2×2 box 2× down."""
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            x = F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(self.resample(F.silu(self.norm0(x))))
        x = F.silu(self.norm1(x + self.affine(emb)[:, :, None, None].to(x.dtype)))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        shortcut = self.resample(orig)
        x = (x + (self.skip(shortcut) if self.skip is not None else shortcut)) * self.skip_scale
        if self.attention:
            b, c, h, w = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(b, c, 3, h * w).unbind(2)
            weights = torch.einsum("ncq,nck->nqk", q.float(), k.float() / math.sqrt(c)).softmax(dim=2)
            a = torch.einsum("nqk,nck->ncq", weights.to(v.dtype), v)
            x = (self.proj(a.reshape(b, c, h, w)) + x) * self.skip_scale
        return x


# ----------------------------------------------------------------------------
# The networks.


class UNet(nn.Module):
    """DDPM++ U-Net (EDM's SongUNet, standard encoder/decoder) conditioned on group levels.

    Resolutions are counted on the image height; attention runs where `H >> level` is in
    `attn_resolutions`, and always once at the lowest resolution (as in SongUNet's decoder).
    """

    def __init__(
        self,
        channels: int,  # image channels C (in and out)
        resolution: Sequence[int],  # image size (H, W); each must divide by 2^(levels−1)
        levels: int,  # k, the number of groups (length of the level vector)
        model_channels: int = 128,  # base channel count
        channel_mult: Sequence[int] = (1, 2, 2, 2),  # per-resolution channel multipliers
        channel_mult_emb: int = 4,  # embedding width = model_channels × this
        num_blocks: int = 4,  # residual blocks per resolution
        attn_resolutions: Sequence[int] = (16,),  # resolutions (height) with self-attention
        dropout: float = 0.10,  # dropout probability inside the blocks
        level_frequencies: int = 4,  # sin/cos features per level (LevelEmbedding)
    ) -> None:
        super().__init__()
        height, width = (int(r) for r in resolution)
        scale = 2 ** (len(channel_mult) - 1)
        if height % scale or width % scale:
            raise ValueError(
                f"a U-Net with {len(channel_mult)} resolutions needs an image size "
                f"divisible by {scale}, got {height}×{width}"
            )
        emb = model_channels * channel_mult_emb
        self.map_levels = LevelEmbedding(levels, emb, level_frequencies)
        block = functools.partial(UNetBlock, emb_channels=emb, dropout=dropout)

        self.enc = nn.ModuleDict()
        cout = model_channels
        self.enc_in = conv(channels, cout, 3)
        skips = [cout]
        for level, mult in enumerate(channel_mult):
            res = height >> level
            if level > 0:
                self.enc[f"{res}_down"] = block(cout, cout, down=True)
                skips.append(cout)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}_block{idx}"] = block(cin, cout, attention=res in attn_resolutions)
                skips.append(cout)

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = height >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}_in0"] = block(cout, cout, attention=True)
                self.dec[f"{res}_in1"] = block(cout, cout)
            else:
                self.dec[f"{res}_up"] = block(cout, cout, up=True)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}_block{idx}"] = block(cin, cout, attention=attn, skip=True)
        self.out_norm = group_norm(cout)
        self.out_conv = conv(cout, channels, 3, weight=1e-5)

    def forward(self, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        emb = self.map_levels(levels)
        x = self.enc_in(x)
        skips = [x]
        for block in self.enc.values():
            x = block(x, emb)
            skips.append(x)
        for block in self.dec.values():
            if block.takes_skip:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


MLP_BLOCKS = ("shift", "film")  # PointMLP's residual blocks


class PointMLP(nn.Module):
    """Residual MLP for point data (an "image" of shape (C, H, W) = (1, 1, d), pixel basis).

    Blocks: "shift" adds the level embedding before one linear layer (`h + W silu(h + A e)`);
    "film" normalizes, scales and shifts by the embedding, then a two-layer MLP twice as wide
    (`h + W₂ silu(W₁ (LN(h)(1 + s) + b))`, DiT's adaLN). On S1's flow the film block fits far
    better for its size (docs/recipe.md, "A better block for the S1 head").
    """

    def __init__(
        self,
        channels: int,  # C (1 for points)
        resolution: Sequence[int],  # (H, W) = (1, d) for d-dimensional points
        levels: int,  # k, the number of groups
        hidden: int = 256,  # width of every layer
        layers: int = 4,  # residual layers
        level_frequencies: int = 4,  # sin/cos features per level (LevelEmbedding)
        embedding: int | None = None,  # width of the levels' embedding (default: `hidden`)
        block: str = "shift",  # residual block: one of MLP_BLOCKS
    ) -> None:
        super().__init__()
        if block not in MLP_BLOCKS:
            raise ValueError(f"unknown MLP block {block!r}: expected one of {', '.join(MLP_BLOCKS)}")
        self.shape = (channels, *(int(r) for r in resolution))
        self.block, self.width = block, hidden
        dim = math.prod(self.shape)
        # The embedding is a function of the levels alone (one number per group), so it needs no
        # more width than that curve has; at the default width it holds half the parameters.
        embedding = embedding or hidden
        self.map_levels = LevelEmbedding(levels, embedding, level_frequencies)
        self.inp = linear(dim, hidden)
        if block == "shift":
            self.affine = nn.ModuleList(linear(embedding, hidden) for _ in range(layers))
            self.layers = nn.ModuleList(linear(hidden, hidden) for _ in range(layers))
        else:  # the scale and shift start at zero: every block starts as a plain pre-norm MLP
            self.affine = nn.ModuleList(linear(embedding, 2 * hidden, weight=1e-5) for _ in range(layers))
            self.layers = nn.ModuleList(
                nn.Sequential(linear(hidden, 2 * hidden), nn.SiLU(), linear(2 * hidden, hidden))
                for _ in range(layers)
            )
        self.norm = nn.LayerNorm(hidden)
        self.out = linear(hidden, dim, weight=1e-5)

    def forward(self, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        emb = self.map_levels(levels)
        h = self.inp(x.flatten(1))
        for affine, layer in zip(self.affine, self.layers):
            if self.block == "shift":
                h = h + layer(F.silu(h + affine(emb)))
            else:
                scale, shift = affine(emb).chunk(2, dim=1)
                h = h + layer(F.layer_norm(h, (self.width,)) * (1 + scale) + shift)
        return self.out(F.silu(self.norm(h))).reshape(x.shape)


ARCHITECTURES = {"unet": UNet, "mlp": PointMLP}
RESIDUALS = ("none", "gaussian")  # what the network's output is added to (GaussianResidual)
# config["s1_head"]: the S1 head's PointMLP (S1Head)
S1_HEAD_KEYS = ("hidden", "layers", "embedding", "block")


# ----------------------------------------------------------------------------
# The latent basis and the Gaussian-residual parametrization.


class TorchBasis(nn.Module):
    """The core's basis U as torch constants: `to_latent` [B, C, H, W] → [B, C, H·W] and back.

    The matrices and the coefficient order come from `grouplat.basis` (one source of truth).
    """

    d_h: torch.Tensor
    d_w: torch.Tensor
    order: torch.Tensor
    inverse: torch.Tensor

    def __init__(self, space: LatentSpace) -> None:
        super().__init__()
        self.height, self.width = space.height, space.width
        self.dct = space.basis.name == "dct"
        order = np.asarray(space.basis.order)
        for name, value in (
            ("d_h", torch.tensor(dct_matrix(space.height), dtype=torch.float32)),
            ("d_w", torch.tensor(dct_matrix(space.width), dtype=torch.float32)),
            ("order", torch.as_tensor(order)),
            ("inverse", torch.as_tensor(np.argsort(order))),
        ):
            self.register_buffer(name, value, persistent=False)

    def to_latent(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        coefficients = self.d_h @ images @ self.d_w.T if self.dct else images
        return coefficients.reshape(b, c, h * w)[..., self.order]

    def from_latent(self, latents: torch.Tensor) -> torch.Tensor:
        b, c = latents.shape[:2]
        grid = latents[..., self.inverse].reshape(b, c, self.height, self.width)
        return self.d_h.T @ grid @ self.d_w if self.dct else grid


class GaussianResidual(nn.Module):
    """`Uᵀf = u_g + r ⊙ Uᵀnet`: the network adds what is not Gaussian (docs/design.md §1, trap 1).

    `u_g` is the exact velocity for per-coefficient Gaussian data with the data's own mean and
    std (`grouplat.oracle.gaussian_velocity`), and `r = σ/sqrt(α²σ² + (1−α)²)` is the std of
    what remains, so an untrained network is already the Gaussian predictor and the network's
    output has unit scale for every coefficient at every level (EDM's c_skip / c_out, per
    coefficient). The Gaussian part is also what the GEI solvers integrate exactly, so what they
    integrate numerically is only the network's smooth share. Levels of −1 (hidden groups) read
    as 0; those groups' outputs are never used.
    """

    group_of: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor

    def __init__(self, net: nn.Module, space: LatentSpace, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.net = net
        self.basis = TorchBasis(space)
        self.register_buffer("group_of", torch.as_tensor(space.group_of), persistent=False)
        mean = np.broadcast_to(np.asarray(mean, np.float32), space.latent_shape)
        var = np.broadcast_to(np.asarray(std, np.float32), space.latent_shape) ** 2
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("var", torch.tensor(var), persistent=False)

    def forward(self, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        alpha = levels.clamp(0, 1)[:, None, self.group_of].to(torch.float32)  # [B, 1, H·W]
        x_bar = self.basis.to_latent(x.float())
        u = gaussian_velocity(x_bar, alpha, self.mean, self.var)
        scale = gaussian_residual_scale(alpha, self.var)
        residual = self.basis.to_latent(self.net(x, levels).float())
        return self.basis.from_latent(u + scale * residual).to(x.dtype)


class S1Head(nn.Module):
    """S1's velocity from S1 alone: a small MLP on S1's coefficients (docs/design.md, "S1 head").

    With hidden groups, every other group is hidden while S1 is active, so S1's exact velocity is
    a function of its C·|S1| coefficients and α_1 alone — a small point-data problem inside the
    image model, which `fit_s1_head` learns from far more samples than the image network's share
    of S1's phase gives it. Outside S1's phase S1's output is never used (α_1 = 1, its rate is
    0), so S1's output is always the head's; the wrapped network's other groups pass through.

    The head is `GaussianResidual`'s parametrization with S1's full covariance instead of
    per-coefficient stds: in S1's eigen-coordinates `y = x̄_S1 R` (data variances λ) the Gaussian
    velocity is per coordinate, and the MLP adds `sqrt(λ / (α²λ + (1−α)²))` times its output,
    whose input is `y_t` standardized under that Gaussian. S1's statistics are persistent buffers,
    so they are saved (and fingerprinted) with the weights.
    """

    s1_mean: torch.Tensor
    s1_rotation: torch.Tensor
    s1_variance: torch.Tensor
    s1_first: torch.Tensor
    s1_first_inverse: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        space: LatentSpace,
        hidden: int = 512,
        layers: int = 4,
        embedding: int | None = None,  # the levels' embedding width (PointMLP; default `hidden`)
        block: str = "shift",  # the MLP's residual block (PointMLP)
    ) -> None:
        super().__init__()
        self.net = net
        self.basis = TorchBasis(space)
        s1 = np.asarray(space.indices(1))
        self.channels, self.s1_size = space.channels, len(s1)
        size = space.channels * self.s1_size
        self.mlp = PointMLP(1, (1, size), 1, hidden=hidden, layers=layers, embedding=embedding, block=block)
        s1_first = np.concatenate([s1, np.setdiff1d(np.arange(space.latent_shape[1]), s1)])
        for name, value in (("s1_first", s1_first), ("s1_first_inverse", np.argsort(s1_first))):
            self.register_buffer(name, torch.as_tensor(value), persistent=False)
        self.register_buffer("s1_mean", torch.zeros(size))
        self.register_buffer("s1_rotation", torch.eye(size))
        self.register_buffer("s1_variance", torch.ones(size))

    def set_statistics(self, s1: np.ndarray) -> None:
        """S1's mean and covariance (as eigenvectors and eigenvalues) from samples [N, C·|S1|]."""
        s1 = np.asarray(s1, np.float64)
        variance, rotation = np.linalg.eigh(np.cov(s1, rowvar=False))
        for buffer, value in ((self.s1_mean, s1.mean(axis=0)), (self.s1_rotation, rotation)):
            buffer.copy_(torch.as_tensor(value, dtype=torch.float32))
        self.s1_variance.copy_(torch.as_tensor(np.maximum(variance, 1e-10), dtype=torch.float32))

    def covariance(self) -> np.ndarray:
        """S1's covariance R diag(λ) Rᵀ [C·|S1|, C·|S1|] (float64): the solvers' Gaussian part for S1."""
        rotation = self.s1_rotation.double().cpu().numpy()
        return (rotation * self.s1_variance.double().cpu().numpy()) @ rotation.T

    def s1_codes(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, H·W] latent coefficients → S1's [B, C·|S1|]."""
        return latents[..., self.s1_first[: self.s1_size]].flatten(1)

    def s1_velocity(self, s1: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """S1's velocity [B, C·|S1|] at S1 state `s1` [B, C·|S1|] and level `alpha` [B, 1]."""
        y = s1 @ self.s1_rotation
        mean = self.s1_mean @ self.s1_rotation
        spread = (alpha**2 * self.s1_variance + (1 - alpha) ** 2).sqrt()
        residual = self.mlp(((y - alpha * mean) / spread)[:, None, None, :], alpha).flatten(1)
        u = gaussian_velocity(y, alpha, mean, self.s1_variance)
        return (u + gaussian_residual_scale(alpha, self.s1_variance) * residual) @ self.s1_rotation.T

    def forward(self, x: torch.Tensor, levels: torch.Tensor, image_network: bool = True) -> torch.Tensor:
        """The velocity: S1's from the head, the other groups' from the wrapped image network, or
        zeros for them with `image_network=False` (`S1HeadAlone`)."""
        state = self.basis.to_latent(x.float())
        rest = self.s1_first[self.s1_size :]
        if image_network:
            others = self.basis.to_latent(self.net(x, levels).float())[..., rest]
        else:
            others = torch.zeros_like(state[..., rest])
        s1 = self.s1_velocity(self.s1_codes(state), levels[:, :1].clamp(0, 1).float())
        latent = torch.cat([s1.reshape(-1, self.channels, self.s1_size), others], dim=2)[
            ..., self.s1_first_inverse
        ]
        return self.basis.from_latent(latent).to(x.dtype)


class S1HeadAlone(nn.Module):
    """A headed model's velocity where every group but S1 is hidden: S1's from the head, zeros
    for the rest, without the image network (1–5% of its cost on shapes32).

    While S1 is active every other group is hidden, and a hidden group's velocity is never used,
    so on those rows this equals the whole network in everything a solve reads
    (`grouplat.s1phase.S1PhaseVelocity` sends them here): S1's steps cost almost nothing.
    """

    def __init__(self, head: S1Head) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return self.head(x, levels, image_network=False)


def build_network(
    config: dict[str, Any],
    space: LatentSpace | None = None,  # the model's latent space (for residual="gaussian")
    mean: np.ndarray | None = None,  # per-coefficient data mean [C, H·W] (for residual="gaussian")
    std: np.ndarray | None = None,  # per-coefficient data std [C, H·W] (for residual="gaussian")
) -> nn.Module:
    """Rebuild a network from its JSON config (`{"arch": "unet" | "mlp", ...keyword args}`).

    `"residual": "gaussian"` wraps it in `GaussianResidual`, which needs the latent space and
    the data statistics (the checkpoint stores both); `"s1_head": {"hidden": H, "layers": L}`
    then wraps that in `S1Head` (its statistics and weights are in the state dict). The checkpoint
    stores exactly this config, so export and serving rebuild the same module.
    """
    config = dict(config)
    full = dict(config)
    arch = config.pop("arch", None)
    residual = config.pop("residual", "none")
    s1_head = config.pop("s1_head", None)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown network architecture {arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    if residual not in RESIDUALS:
        raise ValueError(f"unknown network residual {residual!r}: expected one of {', '.join(RESIDUALS)}")
    try:
        net = ARCHITECTURES[arch](**config)
    except TypeError as error:
        raise ValueError(f"bad {arch} network config {config}: {error}") from None
    if residual == "gaussian":
        if space is None or mean is None or std is None:
            raise ValueError("a network with residual='gaussian' needs the latent space and data mean/std")
        net = GaussianResidual(net, space, mean, std)
    if s1_head is not None:
        if space is None or not isinstance(s1_head, dict) or set(s1_head) - set(S1_HEAD_KEYS):
            raise ValueError(
                f"an S1 head needs the latent space and a config with {S1_HEAD_KEYS}, got {s1_head!r}"
            )
        net = S1Head(net, space, **s1_head)
    net.config = full  # type: ignore[assignment]
    return net


def numpy_velocity(net: nn.Module, max_batch: int = 256) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Wrap a network as the core solvers' velocity callable (numpy in and out, no gradients)."""
    device = next(net.parameters()).device

    def velocity(x_t: np.ndarray, levels: np.ndarray) -> np.ndarray:
        outputs = []
        with torch.no_grad():
            for start in range(0, len(x_t), max_batch):
                x = torch.as_tensor(np.asarray(x_t[start : start + max_batch], np.float32), device=device)
                a = torch.as_tensor(np.asarray(levels[start : start + max_batch], np.float32), device=device)
                outputs.append(net(x, a).float().cpu().numpy())
        return np.concatenate(outputs)

    return velocity
