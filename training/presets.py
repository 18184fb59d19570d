"""`grouplat train --preset NAME`: TrainConfig overrides for the demo, the toy and the paper's recipe.

Measured when they were chosen: shapes32 (1.76 M parameters, 0.84 GFLOPs per forward) trains at
~75 img/s on 2 idle CPU cores (~35 img/s with other jobs on them) and ~700–950 img/s on one H200;
ffhq64 (61.8 M parameters, 83.7 GFLOPs per forward) at ~440 img/s (fp32, cuDNN's TF32) and ~575
img/s (bf16) end to end on one H200, ~0.5 img/s on 2 busy CPU cores at batch 8.

Presets leave `schedule` unset: its default is the paper's 0.6,0.8,0.9 for 4 groups and even cuts
otherwise, so `--groups` alone may change the number of groups.
"""

from __future__ import annotations

from typing import Any

# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    # The demo model: procedural shapes at 32×32 on a CPU. Uniform weighting: with the paper's α'²,
    # after 3000 steps the finest group's error was 0.27 of the Gaussian predictor's (uniform: 0.09)
    # and samples kept grain (docs/design.md, known trap 1). The shipped models/shapes32 is this
    # preset as it stands (1800 steps × 64 = 115k images, ~40 min on 2 cores), then `grouplat
    # fit-s1` (a 1024-wide S1 head fitted on the same images' S1, ~24 min on 2 cores); phase-first
    # training times and the Gaussian-residual network (--times phase, residual) did not give better samples
    # (docs/recipe.md). Longer runs keep improving: grids every 1000 steps show it.
    "shapes32": dict(
        data="shapes:32", basis="dct", groups="30,100,500", weighting="uniform",  # schedule: 0.6,0.8,0.9
        network=dict(arch="unet", model_channels=32, channel_mult=[1, 2, 2], num_blocks=2,
                     attn_resolutions=[8], dropout=0.0),
        batch=64, lr=1e-3, steps=1_800, warmup=200, grad_clip=1.0,  # ~15× the typical gradient norm
        ema_halflife_kimg=10.0, ema_rampup=0.05,
        log_every=50, checkpoint_every=1000, sample_every=1000,
    ),
    # The same network, data and budget with one group: the paper's scalar-schedule baseline.
    "shapes32-scalar": dict(
        data="shapes:32", basis="dct", groups="-", schedule="-", weighting="uniform",
        network=dict(arch="unet", model_channels=32, channel_mult=[1, 2, 2], num_blocks=2,
                     attn_resolutions=[8], dropout=0.0),
        batch=64, lr=1e-3, steps=1_800, warmup=200, grad_clip=1.0,
        ema_halflife_kimg=10.0, ema_rampup=0.05,
        log_every=50, checkpoint_every=1000, sample_every=1000,
    ),
    # Fig. 2b: pixel groups, the image's quadrants generated one after the other (S1 top-left). A
    # smaller network: the figure shows the ordering, not fine detail.
    "shapes32-quadrants": dict(
        data="shapes:32", basis="pixel", groups="quadrants", weighting="uniform",
        network=dict(arch="unet", model_channels=16, channel_mult=[1, 2, 2], num_blocks=1,
                     attn_resolutions=[8], dropout=0.0),
        batch=64, lr=1e-3, steps=2_000, warmup=100, grad_clip=1.0,
        ema_halflife_kimg=10.0, ema_rampup=0.05,
        log_every=50, checkpoint_every=500, sample_every=1000,
    ),
    # Fig. 2a: a 2-D Gaussian mixture, x generated before y (pixel basis, one coordinate per group).
    # 10k steps put 99.7 % of samples within 3.75σ of a mode (3k steps: 82 %); ~5 min on 2 cores.
    "gmm2d": dict(
        data="gmm2d", basis="pixel", groups="elements",  # schedule: 0.5
        network=dict(arch="mlp", hidden=256, layers=4),
        batch=256, lr=3e-3, steps=10_000, warmup=100, grad_clip=1.0,
        ema_halflife_kimg=50.0, ema_rampup=0.05,
        log_every=100, checkpoint_every=2000, sample_every=2000,
    ),
    # The paper's recipe: EDM's DDPM++ at 64×64 (its FFHQ-64 settings), batch 256, lr 2e-4. For GPUs;
    # needs --data zip:PATH or folder:PATH.
    "ffhq64": dict(
        data=None, resolution=64, xflip=True, basis="dct", groups="30,100,500",  # schedule: 0.6,0.8,0.9
        weighting="paper",
        network=dict(arch="unet", model_channels=128, channel_mult=[1, 2, 2, 2], num_blocks=4,
                     attn_resolutions=[16], dropout=0.05),
        batch=256, lr=2e-4, steps=400_000, warmup=10_000,
        ema_halflife_kimg=500.0, ema_rampup=0.05,
        log_every=100, checkpoint_every=10_000, sample_every=10_000, sample_count=64,
    ),
}
# fmt: on
