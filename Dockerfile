# grouplat on a GPU host: the NGC Triton image whose server matches the embedded one (24.10 = 2.51).
#
#   grouplat export CKPT --repository models --engine onnx      # or --engine tensorrt, built on that GPU
#   docker build -t grouplat-serve .
#   docker run --gpus all --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 \
#       -v "$PWD/models:/models" grouplat-serve
#
# --shm-size: the Python backend passes tensors through /dev/shm, Docker's 64 MB default is too
# small for batches of latents. The orchestrators (encode / decode / mix) run grouplat's core in the
# Python backend; the velocity engine runs on the native onnxruntime or tensorrt backend.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

WORKDIR /opt/grouplat
COPY pyproject.toml README.md ./
COPY grouplat/ grouplat/
COPY export/ export/
COPY triton_repo/ triton_repo/
COPY training/ training/
COPY client/ client/
COPY proto/ proto/
# The core needs numpy < 2 (the Python-backend stub); onnxruntime-gpu runs in-process velocity calls.
RUN pip install --no-cache-dir "/opt/grouplat" "onnxruntime-gpu>=1.17,<1.21"

EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=none", \
     "--backend-config=python,shm-default-byte-size=16777216"]
