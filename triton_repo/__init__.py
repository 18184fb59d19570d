"""The serving side (`grouplat.serving`): everything that knows Triton.

- `contract`: model, tensor and parameter names (the one home of the Triton contract);
- `configs`: config.pbtxt generation with Triton's model-config protobuf;
- `orchestration`, `engines`: the library behind the Python-backend models;
- `server`: the embedded `tritonserver` (`grouplat serve`);
- `velocity/model.py`, `orchestrator/model.py`: the thin adapters export copies into a repository.

It imports the method core (`grouplat`), never the tools, training or the client.
"""
