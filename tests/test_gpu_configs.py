"""The GPU deployment path, as far as a CPU host can check it: the configs of every engine ×
device combination are ones the Triton backends accept, and a GPU that is asked for but absent
is a clear error — never a silent run on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_oracle, oracle_repository_at
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

import grouplat
from grouplat.export.oracle import oracle_info, oracle_onnx
from grouplat.export.repository import ServingOptions
from grouplat.serving import contract as c
from grouplat.serving.configs import orchestrator_config, velocity_config
from grouplat.serving.engines import OnnxVelocity
from grouplat.serving.server import EmbeddedServer

INFO = oracle_info(make_oracle(), grouplat.Schedule.from_cuts(grouplat.PAPER_TRAIN))
GPU, CPU = mc.ModelInstanceGroup.Kind.KIND_GPU, mc.ModelInstanceGroup.Kind.KIND_CPU


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


@pytest.mark.parametrize("engine", ["python", "onnx", "tensorrt", "torch"])
@pytest.mark.parametrize("device", ["cpu", "gpu"])
@pytest.mark.parametrize("call", ["inprocess", "bls"])
def test_every_engine_and_device_gets_a_config_its_backend_accepts(
    engine: str, device: str, call: str
) -> None:
    options = ServingOptions(engine=engine, device=device, velocity_call=call)
    if engine == "tensorrt" and (device == "cpu" or call == "inprocess"):
        with pytest.raises(ValueError, match="GPU only|bls"):
            options.check(INFO.space.k)
        return
    options.check(INFO.space.k)
    velocity = parse(velocity_config(INFO, options, {c.DEVICE_PARAM: device}))
    kinds = {group.kind for group in velocity.instance_group}
    assert kinds == {GPU if device == "gpu" else CPU}  # Triton's TensorRT backend refuses KIND_CPU
    assert (velocity.backend, velocity.platform) == {
        "python": ("python", ""),
        "onnx": ("", "onnxruntime_onnx"),
        "tensorrt": ("", "tensorrt_plan"),
        "torch": ("python", ""),
    }[engine]
    # a device-resident BLS caller's inputs reach the torch engine in GPU memory, not copied out
    device_inputs = velocity.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
    assert device_inputs == (engine == "torch" and device == "gpu")
    for operation in c.ORCHESTRATORS:
        config = parse(orchestrator_config(INFO, options, operation, {}))
        assert config.backend == "python"
        # the orchestrator needs the GPU when the engine runs inside it, or (torch) the ODE state does
        expected = GPU if device == "gpu" and (call == "inprocess" or engine == "torch") else CPU
        assert {group.kind for group in config.instance_group} == {expected}
        assert config.model_transaction_policy.decoupled == (operation in c.STREAMS)


def test_asking_for_a_gpu_without_one_is_a_clear_error(tmp_path: Path) -> None:
    onnx_model = oracle_onnx(make_oracle()).SerializeToString()
    with pytest.raises(RuntimeError, match="no CUDA provider.*onnxruntime-gpu"):
        OnnxVelocity(onnx_model, device="gpu")
    assert OnnxVelocity(onnx_model).provider == "CPUExecutionProvider"
    repository = oracle_repository_at(tmp_path / "repo", ServingOptions(device="gpu"))
    with pytest.raises(RuntimeError, match="KIND_GPU but no GPUs are available"):
        EmbeddedServer(repository, startup_timeout=120).start()
    assert np.isfinite(
        OnnxVelocity(onnx_model)(np.zeros((1, 3, 16, 16), np.float32), np.zeros((1, 4), np.float32))
    ).all()


@pytest.mark.parametrize("call", ["bls", "inprocess"])
def test_the_torch_engine_serves_what_onnx_runtime_computes(tmp_path: Path, call: str) -> None:
    """`--engine torch` on the CPU (eager; CUDA graphs need a GPU), through the velocity model (BLS,
    the state passed by DLPack) or in-process: the orchestrators keep the ODE state in torch
    tensors either way; the served encode, decode and mix equal the same orchestrator over ONNX
    Runtime, computed here, within fp32 rounding."""
    import tritonclient.grpc as grpcclient
    from test_device_loop import requests
    from test_export import write_checkpoint

    from grouplat.cli import main
    from grouplat.export.engine import export_onnx, model_info
    from grouplat.serving.orchestration import Orchestrator
    from grouplat.settings import GenerationSettings
    from grouplat.training.checkpoint import load_checkpoint

    checkpoint = write_checkpoint(tmp_path / "checkpoint-0000001")
    args = ["export", str(checkpoint), "--repository", str(tmp_path / "repo"), "--engine", "torch",
            "--velocity-call", call, "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    assert (tmp_path / "repo" / "velocity" / "1" / "model.safetensors").is_file()
    assert "torch_engine" in (tmp_path / "repo" / c.DECODE / "1" / "model.py").read_text()
    loaded = load_checkpoint(checkpoint)
    info = model_info(loaded)
    settings = GenerationSettings("gei2m", 6, "0.6,0.8").check(info.space.k)
    reference = Orchestrator(info, OnnxVelocity(export_onnx(loaded.network, info)), settings)
    parameters = {"steps": 6, "solver": "gei2m", "schedule": "0.6,0.8"}
    with (
        EmbeddedServer(tmp_path / "repo") as server,
        grpcclient.InferenceServerClient(server.grpc_url) as client,
    ):
        for operation, inputs in requests(info).items():
            tensors = [
                grpcclient.InferInput(
                    name, list(v.shape), "BOOL" if v.dtype == bool else "FP32"
                ).set_data_from_numpy(v)
                for name, v in inputs.items()
            ]
            served = client.infer(operation, tensors, parameters=parameters).as_numpy(c.OUTPUTS[operation])
            expected = reference.run(operation, inputs, settings)
            np.testing.assert_allclose(served, expected, atol=2e-3, err_msg=operation)


def test_gpu_check_script_runs_quick_on_the_cpu(tmp_path: Path) -> None:
    """scripts/gpu_check.py is the one prepared call for a lent GPU; its --quick form runs here."""
    import json
    import subprocess
    import sys

    from test_export import write_checkpoint

    checkpoint = write_checkpoint(tmp_path / "checkpoint-0000001")
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    command = [
        sys.executable,
        str(script),
        "--quick",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["parity_vs_onnxruntime"]["fp32"] < 1e-4 and set(report["decode"]) == {"1", "2"}
    assert (
        report["decode_psnr_vs_onnxruntime"]["fp32"] > 80 > report["decode_psnr_vs_onnxruntime"]["bf16"] > 30
    )
    assert "skipped" in report["onnxruntime_gpu"] or report["onnxruntime_gpu"]["provider"]
