"""`grouplat export CKPT --repository DIR`: checkpoint → engine → Triton model repository."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from grouplat.settings import (
    DEFAULT_ENCODE_GROUP_STEPS,
    DEFAULT_ENCODE_STEPS,
    DEFAULT_GROUP_STEPS,
    DEFAULT_STEPS,
    HEADED_ENCODE_GROUP_STEPS,
    HEADED_GROUP_STEPS,
)
from grouplat.solvers import SOLVERS


def register(subparsers: Any) -> None:
    from grouplat.export.repository import ENGINES, ServingOptions
    from grouplat.serving.contract import CALL_MODES

    d = ServingOptions()
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to a Triton model repository",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="checkpoint directory (or a run directory: its newest checkpoint)")
    p.add_argument("--repository", required=True, help="model repository to write or add a version to")
    p.add_argument(
        "--engine",
        choices=ENGINES,
        default=d.engine,
        help="python: ONNX Runtime inside the "
        "embedded server; onnx / tensorrt: native backends of the NGC container; torch: the PyTorch "
        "network in the Python backend (CUDA graphs on a GPU; in-process, the orchestrators run it and keep "
        "the ODE state on its device)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default=None,
        help="where the velocity engine runs (instance kinds, ONNX Runtime providers); default: gpu for "
        "tensorrt or when this host has one (ONNX Runtime's CUDA provider or torch.cuda), else cpu",
    )
    p.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), default=d.precision, help="torch engine: autocast"
    )
    p.add_argument(
        "--velocity-call",
        choices=CALL_MODES,
        default=d.velocity_call,
        help="how encode/decode/mix call the engine: in-process (ONNX Runtime; with --engine torch "
        "the torch engine, the whole ODE on its device), or BLS through the velocity model",
    )
    p.add_argument(
        "--steps",
        type=int,
        help="default ODE steps per request, both directions unless --encode-steps; default: the model's "
        f"(a decode of {DEFAULT_STEPS} {list(DEFAULT_GROUP_STEPS)} and an encode of {DEFAULT_ENCODE_STEPS} "
        f"{list(DEFAULT_ENCODE_GROUP_STEPS)} for 4 groups; with an S1 head, whose steps run on the head "
        f"alone, {sum(HEADED_GROUP_STEPS)} {list(HEADED_GROUP_STEPS)} and {sum(HEADED_ENCODE_GROUP_STEPS)} "
        f"{list(HEADED_ENCODE_GROUP_STEPS)})",
    )
    p.add_argument(
        "--encode-steps",
        type=int,
        help="default ODE steps per encode (mix: its two encodes); default: see --steps",
    )
    p.add_argument("--solver", choices=SOLVERS, default=d.solver, help="default solver")
    p.add_argument(
        "--generate-schedule",
        help="default generation (decode) schedule (cut points); default: the measured split for 4 groups "
        "(see --steps), else the training schedule",
    )
    p.add_argument(
        "--encode-schedule",
        help="default encode schedule (cut points); default: the measured split for 4 groups "
        "(see --steps), else the generation schedule",
    )
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="velocity engine's max batch")
    p.add_argument("--request-batch", type=int, default=d.request_batch, help="max images per request")
    p.add_argument("--threads", type=int, default=d.threads, help="ONNX Runtime intra-op threads")
    p.add_argument("--spinning", action="store_true", help="let ONNX Runtime threads spin-wait")
    p.add_argument("--queue-delay-us", type=int, default=d.queue_delay_us, help="dynamic batching delay")
    p.add_argument(
        "--instances", type=int, default=d.orchestrator_instances, help="instances of each orchestrator"
    )
    p.add_argument(
        "--max-cost",
        type=int,
        default=d.max_cost,
        help="per-request budget: network evaluations × images (mix counts three solves)",
    )
    p.add_argument(
        "--cache-bytes",
        type=int,
        default=d.cache_bytes,
        help="the step loop's cache of phase-end states per orchestrator instance (a repeated latent "
        "is answered from it); 0 turns it off, e.g. to benchmark decodes with perf_analyzer's "
        "repeated inputs",
    )
    p.add_argument("--version", type=int, help="version number to write (default: the next one)")
    p.add_argument("--force", action="store_true", help="overwrite an existing version")
    p.set_defaults(handler=run)


def host_device() -> str:
    """gpu when this host can run the engine on one (ONNX Runtime's CUDA provider, or torch.cuda)."""
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return "gpu"
    except ImportError:
        pass
    try:
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def run(args: argparse.Namespace) -> int:
    from grouplat.export.engine import ParityError, export_engines, model_info
    from grouplat.export.repository import ServingOptions, write_repository
    from grouplat.export.tensorrt import TensorRTUnavailable, build_plan, write_record
    from grouplat.training.checkpoint import load_checkpoint

    started = time.perf_counter()
    options = ServingOptions(
        engine=args.engine,
        device=args.device or ("gpu" if args.engine == "tensorrt" else host_device()),
        precision=args.precision,
        velocity_call=args.velocity_call,
        generate_schedule=args.generate_schedule,
        encode_schedule=args.encode_schedule,
        steps=args.steps,
        encode_steps=args.encode_steps,
        solver=args.solver,
        max_batch=args.max_batch,
        request_batch=args.request_batch,
        queue_delay_us=args.queue_delay_us,
        threads=args.threads,
        spinning=args.spinning,
        orchestrator_instances=args.instances,
        max_cost=args.max_cost,
        cache_bytes=args.cache_bytes,
    )
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        info = model_info(checkpoint)
        options.check(info.space.k)
        onnx_model, s1_head, error = export_engines(checkpoint.network, info)
        plan, record = None, None
        if args.engine == "tensorrt":
            plan, record = build_plan(onnx_model, info, args.max_batch)
        version = write_repository(
            args.repository,
            info,
            onnx_model,
            options,
            args.version,
            args.force,
            plan,
            checkpoint.path,
            s1_head,
        )
        if record is not None:
            write_record(Path(args.repository) / "velocity" / str(version), record)
    except (ValueError, FileExistsError, ParityError, TensorRTUnavailable) as problem:
        print(f"grouplat export: {problem}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    print(
        f"grouplat: exported {checkpoint.path} (fingerprint {info.fingerprint[:12]}…) as version {version} "
        f"of {args.repository} [{args.engine} on {options.device}, ONNX parity {error:.1e}, {seconds:.1f} s]"
    )
    return 0
