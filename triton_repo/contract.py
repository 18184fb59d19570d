"""The Triton contract: model, tensor and parameter names every part of grouplat agrees on.

Export writes configs with these names, the orchestrators read requests by them, the client and
the tools call them. `proto/README.md` documents the same contract for callers in other
languages. Standard library only: the client imports it without numpy-heavy or torch deps.
"""

from __future__ import annotations

# ---- models -------------------------------------------------------------------------------
VELOCITY = "velocity"  # the engine: X_T, LEVELS → U
ENCODE, DECODE, MIX = "encode", "decode", "mix"  # the Python-backend orchestrators
ORCHESTRATORS = (ENCODE, DECODE, MIX)
MODELS = (*ORCHESTRATORS, VELOCITY)

# ---- tensors ------------------------------------------------------------------------------
X_T, LEVELS, U = "X_T", "LEVELS", "U"  # velocity: [B, C, H, W], [B, k] → [B, C, H, W] (FP32)
IMAGE, LATENT = "IMAGE", "LATENT"  # [B, C, H, W] in [-1, 1]; [B, C, H·W] (FP32)
IMAGE_A, IMAGE_B, GROUPS = "IMAGE_A", "IMAGE_B", "GROUPS"  # mix: two images, BOOL [B, k]
FINGERPRINT = "FINGERPRINT"  # optional decode input, BYTES [B, 1]: the latent's model
INPUTS = {ENCODE: (IMAGE,), DECODE: (LATENT,), MIX: (IMAGE_A, IMAGE_B, GROUPS)}
OPTIONAL_INPUTS = {ENCODE: (), DECODE: (FINGERPRINT,), MIX: ()}
OUTPUTS = {ENCODE: LATENT, DECODE: IMAGE, MIX: IMAGE}

# ---- request parameters (Triton request parameters; strings or integers) -------------------
STEPS, SOLVER, SCHEDULE = "steps", "solver", "schedule"
REQUEST_PARAMETERS = (STEPS, SOLVER, SCHEDULE)

# ---- config parameters (every model's config.pbtxt `parameters`, string values) ------------
FINGERPRINT_PARAM = "fingerprint"  # sha256 hex of the model
SPACE_PARAM = "space"  # JSON LatentSpace description
TRAIN_SCHEDULE_PARAM = "train_schedule"
GENERATE_SCHEDULE_PARAM = "generate_schedule"  # the default generation schedule
HIDE_PARAM = "hide"  # "1": hidden groups
STEPS_PARAM, SOLVER_PARAM, SPACING_PARAM = "steps", "solver", "spacing"  # the request defaults
OPERATION_PARAM = "operation"  # which orchestrator (encode / decode / mix)
VELOCITY_CALL_PARAM = "velocity_call"  # inprocess | bls
VELOCITY_MODEL_PARAM = "velocity_model"
VELOCITY_MAX_BATCH_PARAM = "velocity_max_batch"
THREADS_PARAM, SPINNING_PARAM = "threads", "spinning"  # ONNX Runtime settings
MAX_COST_PARAM = "max_cost"  # per request: network evaluations × images
VERSION_PARAM = "grouplat_version"
VERSIONS_PARAM = "versions"  # JSON: every served version → its fingerprint, space, schedules, defaults

CALL_MODES = ("inprocess", "bls")  # how an orchestrator calls the velocity engine
