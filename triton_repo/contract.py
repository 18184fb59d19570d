"""The Triton contract: model, tensor and parameter names every part of grouplat agrees on.

Export writes configs with these names, the orchestrators read requests by them, the client and
the tools call them. `proto/README.md` documents the same contract for callers in other
languages. Standard library only: the client imports it without numpy-heavy or torch deps.
"""

from __future__ import annotations

# ---- models -------------------------------------------------------------------------------
VELOCITY = "velocity"  # the engine: X_T, LEVELS → U
ENCODE, DECODE, MIX = "encode", "decode", "mix"  # the Python-backend orchestrators
DECODE_STREAM, MIX_STREAM = "decode_stream", "mix_stream"  # decoupled: a preview per phase, then the image
STREAMS = {DECODE_STREAM: DECODE, MIX_STREAM: MIX}  # stream model → the operation it runs
ORCHESTRATORS = (ENCODE, DECODE, MIX, DECODE_STREAM, MIX_STREAM)
MODELS = (*ORCHESTRATORS, VELOCITY)

# ---- tensors ------------------------------------------------------------------------------
X_T, LEVELS, U = "X_T", "LEVELS", "U"  # velocity: [B, C, H, W], [B, k] → [B, C, H, W] (FP32)
S1_HEAD_FILE = "s1_head.onnx"  # beside a headed model's velocity: S1's phase alone (S1PhaseVelocity)
IMAGE, LATENT = "IMAGE", "LATENT"  # [B, C, H, W] in [-1, 1]; [B, C, H·W] (FP32)
IMAGE_A, IMAGE_B, GROUPS = "IMAGE_A", "IMAGE_B", "GROUPS"  # mix: two images, BOOL [B, k]
FINGERPRINT = "FINGERPRINT"  # optional decode input, BYTES [B, 1]: the latent's model
PHASE = "PHASE"  # stream outputs, INT32 [B, 1]: groups decoded so far (k: the final image)
INPUTS = {ENCODE: (IMAGE,), DECODE: (LATENT,), MIX: (IMAGE_A, IMAGE_B, GROUPS)}
OPTIONAL_INPUTS = {ENCODE: (), DECODE: (FINGERPRINT,), MIX: ()}
OUTPUTS = {ENCODE: LATENT, DECODE: IMAGE, MIX: IMAGE}
for _stream, _operation in STREAMS.items():
    INPUTS[_stream], OPTIONAL_INPUTS[_stream], OUTPUTS[_stream] = (
        INPUTS[_operation],
        OPTIONAL_INPUTS[_operation],
        OUTPUTS[_operation],
    )

# ---- request parameters: grouplat.settings.REQUEST_PARAMETERS (read and written there only) ----

# ---- config parameters (every model's config.pbtxt `parameters`, string values) ------------
FINGERPRINT_PARAM = "fingerprint"  # sha256 hex of the model
SPACE_PARAM = "space"  # JSON LatentSpace description
TRAIN_SCHEDULE_PARAM = "train_schedule"
GENERATE_SCHEDULE_PARAM = "generate_schedule"  # the default generation (decode) schedule
ENCODE_SCHEDULE_PARAM = "encode_schedule"  # the default encode schedule; absent: generate_schedule
ENCODE_STEPS_PARAM = "encode_steps"  # the default encode steps; absent: steps
HIDE_PARAM = "hide"  # "1": hidden groups
STEPS_PARAM, SOLVER_PARAM, SPACING_PARAM = "steps", "solver", "spacing"  # the request defaults
# a version's own generation defaults (each version's entry in VERSIONS_PARAM, and the newest's on top)
DEFAULT_PARAMS = (
    GENERATE_SCHEDULE_PARAM,
    ENCODE_SCHEDULE_PARAM,
    STEPS_PARAM,
    ENCODE_STEPS_PARAM,
    SOLVER_PARAM,
)
OPERATION_PARAM = "operation"  # which orchestrator (encode / decode / mix)
VELOCITY_CALL_PARAM = "velocity_call"  # inprocess | bls
VELOCITY_MODEL_PARAM = "velocity_model"
VELOCITY_MAX_BATCH_PARAM = "velocity_max_batch"
THREADS_PARAM, SPINNING_PARAM = "threads", "spinning"  # ONNX Runtime settings
DEVICE_PARAM = "device"  # cpu | gpu: where the velocity engine runs
PRECISION_PARAM = "precision"  # fp32 | bf16 | fp16: the torch engine's autocast
MAX_COST_PARAM = "max_cost"  # per request: network evaluations × images
SCHEDULING_PARAM = (
    "scheduling"  # step (one loop owns every request's steps) | request (one solve per execute)
)
CACHE_BYTES_PARAM = "cache_bytes"  # the step loop's phase cache, per model instance
VERSION_PARAM = "grouplat_version"
VERSIONS_PARAM = "versions"  # JSON: every served version → its fingerprint, space, schedules, defaults

CALL_MODES = ("inprocess", "bls")  # how an orchestrator calls the velocity engine
