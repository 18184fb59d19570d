# grouplat on a GPU host: the NGC Triton image whose server matches the embedded one (24.10 = 2.51).
#
#   grouplat export CKPT --repository models --engine onnx      # or --engine tensorrt, built on that GPU,
#                                                               # or --engine torch (build with EXTRAS=[train])
#   docker build -t grouplat-serve .
#   docker run --gpus all --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 \
#       -v "$PWD/models:/models" grouplat-serve
#
# On Kubernetes: deploy/ (Deployment with GPU, probes and /dev/shm, Service, HPA on Triton's queue time).
#
# --shm-size: the Python backend passes tensors through /dev/shm, Docker's 64 MB default is too
# small for batches of latents. The orchestrators (encode / decode / mix) run grouplat's core in the
# Python backend; the velocity engine runs on the native onnxruntime or tensorrt backend, or (torch)
# in the Python backend with CUDA graphs, the orchestrators keeping the ODE state on the GPU.
#
# Network: inside the container Triton listens on all interfaces (0.0.0.0), as a container must;
# what is reachable is decided by `-p`. To keep it on this host: `-p 127.0.0.1:8001:8001` (same for
# 8000, 8002). Triton's admin APIs (shared memory, model repository, trace, logging) answer only
# requests with the header `grouplat-admin-key: $GROUPLAT_ADMIN_KEY` (gRPC:
# `triton-grpc-protocol-grouplat-admin-key`); without -e GROUPLAT_ADMIN_KEY=… the key is random,
# so nobody can use them. For TLS on gRPC add --grpc-use-ssl=true --grpc-server-cert=…
# --grpc-server-key=… (Triton's HTTP endpoint has no TLS: publish it to loopback or behind a proxy).
FROM nvcr.io/nvidia/tritonserver:24.10-py3

WORKDIR /opt/grouplat
COPY pyproject.toml README.md ./
COPY grouplat/ grouplat/
COPY export/ export/
COPY triton_repo/ triton_repo/
COPY training/ training/
COPY client/ client/
COPY proto/ proto/
COPY tools/ tools/
COPY models/ models/
# The core needs numpy < 2 (the Python-backend stub); onnxruntime-gpu runs in-process velocity calls.
# EXTRAS=[train] adds PyTorch (CUDA) for `grouplat export --engine torch`: docker build --build-arg EXTRAS=[train] .
ARG EXTRAS=""
RUN pip install --no-cache-dir "/opt/grouplat${EXTRAS}" "onnxruntime-gpu>=1.17,<1.21"

EXPOSE 8000 8001 8002
# Every GPU of the host unless --gpus / the device plugin narrows it; compute + nvidia-smi only.
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
# Healthy once every model is loaded: Triton's /v2/health/ready on the HTTP port (python3 is in the
# image, curl need not be; no proxy for loopback). Kubernetes ignores this: deploy/ has its probes.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
ENV ADMIN_APIS=shared-memory,model-repository,trace,logging
# Shell form on purpose: the admin key comes from the environment (or is random).
CMD ["/bin/sh", "-c", "key=${GROUPLAT_ADMIN_KEY:-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n')}; exec tritonserver --model-repository=/models --model-control-mode=none --backend-config=python,shm-default-byte-size=16777216 --grpc-restricted-protocol=$ADMIN_APIS:grouplat-admin-key=$key --http-restricted-api=$ADMIN_APIS:grouplat-admin-key=$key"]
