"""`grouplat bench`: the latency / throughput table and the ratios P1–P4, in one process tree.

For each net — the demo model (`--checkpoint`, else the shapes32 network with random weights) and
the ffhq64-sized network (random weights: fine for timing) — it measures, interleaved round by
round so that a change in the machine's load hits every figure alike:

- the bare engine forward at batch 1 (ONNX Runtime, with the served threads / spinning);
- the ODE loop in-process: `grouplat.decode` over the same engine, no server;
- the same loop in PyTorch eager (`numpy_velocity(net)`, the researcher's baseline);
- served encode / decode / mix at batch 1 over gRPC, for each serving variant (default: velocity
  calls in-process and through BLS), each variant on its own embedded tritonserver;
- throughput and p50 / p90 / p99 latency with 1, 4 and 8 closed-loop gRPC clients.

It prints markdown tables of medians and the ratios, and writes everything as JSON:

    P1  served decode latency at batch 1 ÷ (NFE × bare forward)      goal ≤ 1.10
    P2  PyTorch eager ODE loop ÷ in-process engine ODE loop          goal ≥ 2
    P3  throughput at 8 clients ÷ 1 client, with p99 ≤ 2 × p50       goal ≥ 1.5
    P4  NFE for round-trip PSNR ≥ 40 dB, Euler vs Heun (needs a trained --checkpoint)

NFE = steps × network evaluations per step (Heun: 2). `--variant NAME:key=value,…` adds a serving
variant (any `ServingOptions` field), to tune the defaults, e.g.
`--variant bls2:velocity_call=bls,velocity_instances=2`.
"""

from grouplat.tools.bench.load import parse_variant
from grouplat.tools.bench.nets import round_trip_nfe
from grouplat.tools.bench.report import headline

__all__ = ["headline", "parse_variant", "round_trip_nfe"]
