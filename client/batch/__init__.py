"""Batch jobs: encode, decode or mix whole data sets through grouplat servers, resumable and exact.

    grouplat batch encode photos/ --out latents/ --server a:8001 --server b:8001 --concurrency 8
    grouplat batch decode latents/ --out decoded/              # or --out decoded.zip
    grouplat batch mix photos/ --reference ref.png --groups 1 --out mixed/
    grouplat batch encode photos/ --out latents/ --engine ray --ray-address auto   # on a Ray cluster

`grouplat.client.batch.job` holds the job (sources, plan, shards, manifest, the pipelined local
runner; it needs pyarrow), `grouplat.client.batch.ray_engine` the Ray Data engine (it needs
ray[data]), `grouplat.client.batch.cli` the command line. This package imports neither pyarrow nor
ray, so `grouplat --help` works without them.
"""
