"""Export: checkpoint → velocity engine (ONNX, TensorRT) → Triton model repository."""
