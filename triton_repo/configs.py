"""config.pbtxt of every model, built as Triton's own `ModelConfig` protobuf (from tritonclient).

    velocity                X_T [-1,C,H,W], LEVELS [-1,k] → U [-1,C,H,W]
    encode / decode / mix   the Python-backend orchestrators (contract.INPUTS / OUTPUTS)

Every config carries the model's parameters (fingerprint, space, schedules, defaults), so that
clients read them through ModelConfig.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from grouplat.modelinfo import ModelInfo
from grouplat.serving import contract as c
from grouplat.serving.engines import DEVICES
from grouplat.settings import DEFAULT_SOLVER, default_steps
from grouplat.solvers import SOLVERS

ENGINES = ("python", "onnx", "tensorrt", "torch")
FP32, BOOL, BYTES, INT32 = (
    mc.DataType.TYPE_FP32,
    mc.DataType.TYPE_BOOL,
    mc.DataType.TYPE_STRING,
    mc.DataType.TYPE_INT32,
)


@dataclass(frozen=True)
class ServingOptions:
    """What the configs say beyond the model itself; each has a CLI flag in `grouplat export`."""

    engine: str = "python"  # python: ORT in the Python backend; onnx / tensorrt: native; torch: PyTorch
    device: str = "cpu"  # cpu | gpu: where the velocity engine runs (instance kinds, ORT providers)
    precision: str = "fp32"  # torch engine: fp32 | bf16 | fp16 autocast
    velocity_call: str = "inprocess"  # how orchestrators call the engine: inprocess or bls
    generate_schedule: str | None = None  # default decode schedule; None: the measured one for k=4
    encode_schedule: str | None = None  # default encode schedule; None: the measured one for k=4
    steps: int | None = None  # default steps per request (a decode's); None: the model's (settings)
    encode_steps: int | None = None  # an encode's default steps; None: `steps` if given, else the model's
    solver: str = DEFAULT_SOLVER
    max_batch: int = 64  # velocity engine's max batch (BLS merges steps of several requests)
    request_batch: int = 8  # orchestrators' max images per request
    queue_delay_us: int = 500  # dynamic batching delay of every model
    threads: int = 1  # ONNX Runtime intra-op threads per instance
    spinning: bool = False  # ONNX Runtime spin-waiting (hurts when instances share cores)
    velocity_instances: int = 1
    # One: its step loop batches every request's steps, so a small request runs beside a long one
    # (docs/BENCHMARKS.md: 8 mixed clients, per-step p99/p50 1.09 with one instance, 2.29 with two)
    orchestrator_instances: int = 1
    max_cost: int = 4096  # per request: network evaluations × images (mix counts three solves)
    scheduling: str = "step"  # step: one loop batches every request's steps; request: one solve per execute
    cache_bytes: int = 64 << 20  # the step loop's phase-end cache per model instance (0: off)

    def resolved(self, info: ModelInfo) -> ServingOptions:
        """These options with the model's default steps where they are None
        (`grouplat.settings.default_steps`: more for a model with an S1 head)."""
        decode, encode = default_steps(info.space.k, info.headed)
        if self.steps is not None:
            decode = encode = self.steps
        return replace(self, steps=decode, encode_steps=self.encode_steps or encode)

    def check(self, k: int) -> None:
        """Raises ValueError for options that cannot work together (or for this model's k groups)."""
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}: expected one of {', '.join(ENGINES)}")
        if self.velocity_call not in c.CALL_MODES:
            raise ValueError(
                f"unknown velocity call {self.velocity_call!r}: expected {' or '.join(c.CALL_MODES)}"
            )
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}: expected one of {', '.join(SOLVERS)}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}: expected one of {', '.join(DEVICES)}")
        if self.engine == "tensorrt" and self.device != "gpu":
            raise ValueError("a TensorRT engine runs on a GPU only: use --device gpu (or --engine onnx)")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"unknown precision {self.precision!r}: expected fp32, bf16 or fp16")
        if self.velocity_call == "inprocess" and self.engine == "tensorrt":
            raise ValueError(
                "in-process velocity calls run ONNX Runtime or torch; use --velocity-call bls with tensorrt"
            )
        if min(self.steps or k, self.encode_steps or self.steps or k) < k:
            raise ValueError(f"default steps and encode steps must be at least the number of groups ({k})")
        if self.scheduling not in ("step", "request"):
            raise ValueError(f"unknown scheduling {self.scheduling!r}: expected step or request")
        if self.cache_bytes < 0:
            raise ValueError(f"cache bytes must be 0 (no cache) or more, got {self.cache_bytes}")


def velocity_config(info: ModelInfo, options: ServingOptions, params: dict[str, str]) -> str:
    """The `velocity` model's config.pbtxt (the engine, with a zero-data warm-up)."""
    config = _base(
        c.VELOCITY,
        options.max_batch,
        options.velocity_instances,
        options.queue_delay_us,
        params,
        options.device,
    )
    if options.engine in ("python", "torch"):
        config.backend = "python"
        if options.engine == "torch" and options.device == "gpu":  # a device-resident caller's
            config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value = "no"  # inputs stay on the GPU
    else:
        config.platform = {"onnx": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}[options.engine]
        config.default_model_filename = {"onnx": "model.onnx", "tensorrt": "model.plan"}[options.engine]
    image = list(info.space.shape)
    _add(config.input, c.X_T, FP32, image)
    _add(config.input, c.LEVELS, FP32, [info.space.k])
    _add(config.output, c.U, FP32, image)
    warmup = config.model_warmup.add(name="zeros", batch_size=1)
    for name, dims in ((c.X_T, image), (c.LEVELS, [info.space.k])):
        warmup.inputs[name].CopyFrom(mc.ModelWarmup.Input(data_type=FP32, dims=dims, zero_data=True))
    return text_format.MessageToString(config)


def orchestrator_config(
    info: ModelInfo, options: ServingOptions, operation: str, params: dict[str, str]
) -> str:
    """The config.pbtxt of one Python-backend orchestrator (`encode`, `decode`, `mix`, or a
    decoupled stream: `decode_stream`, `mix_stream`, which also answer PHASE)."""
    # In-process calls put the engine inside the orchestrator, and with the torch engine the ODE
    # state lives on the GPU whatever the call: the orchestrator needs the GPU then; other BLS
    # callers only run numpy and stay on the CPU.
    on_gpu = options.device == "gpu" and (options.velocity_call == "inprocess" or options.engine == "torch")
    config = _base(
        operation,
        options.request_batch,
        options.orchestrator_instances,
        options.queue_delay_us,
        {**params, c.OPERATION_PARAM: operation},
        "gpu" if on_gpu else "cpu",
    )
    config.backend = "python"
    image, latent = list(info.space.shape), [info.space.channels, info.space.size]
    shapes = {c.IMAGE: image, c.IMAGE_A: image, c.IMAGE_B: image, c.LATENT: latent, c.GROUPS: [info.space.k]}
    for name in c.INPUTS[operation]:
        _add(config.input, name, BOOL if name == c.GROUPS else FP32, shapes[name])
    for name in c.OPTIONAL_INPUTS[operation]:
        _add(config.input, name, BYTES, [1], optional=True)
    output = c.OUTPUTS[operation]
    _add(config.output, output, FP32, shapes[output])
    if operation in c.STREAMS:
        config.model_transaction_policy.decoupled = True
        _add(config.output, c.PHASE, INT32, [1])
    return text_format.MessageToString(config)


def _base(
    name: str,
    max_batch: int,
    instances: int,
    queue_delay_us: int,
    params: dict[str, str],
    device: str = "cpu",
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, max_batch_size=max_batch)
    config.version_policy.all.SetInParent()  # every version loads: two models can serve side by side
    kind = mc.ModelInstanceGroup.Kind.KIND_GPU if device == "gpu" else mc.ModelInstanceGroup.Kind.KIND_CPU
    config.instance_group.add(count=instances, kind=kind)  # Triton's TensorRT backend refuses KIND_CPU
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


def _add(tensors, name: str, dtype: int, dims: list[int], optional: bool = False) -> None:  # type: ignore[no-untyped-def]
    tensor = tensors.add(name=name, data_type=dtype, dims=dims)
    if optional:  # inputs only (ModelOutput has no such field)
        tensor.optional = True
