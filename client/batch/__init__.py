"""Batch jobs: encode, decode or mix whole data sets through grouplat servers, resumable and exact.

    grouplat batch encode photos/ --out latents/ --server a:8001 --server b:8001 --concurrency 8
    grouplat batch decode latents/ --out decoded/              # or --out decoded.zip
    grouplat batch mix photos/ --reference ref.png --groups 1 --out mixed/
    grouplat batch encode photos/ --out latents/ --engine ray --ray-address auto   # on a Ray cluster

A job writes only inside --out (a .zip: and its job folder beside it), follows no symbolic link
there, and replaces no file it did not write (an error naming it) unless given --overwrite; re-running
the same job rewrites its own files.

`grouplat.client.batch.job` holds the entry point (`run`, `Task`) and names the job's parts:
`sources`, `task`, `store`, `worker`, `local` (the pipelined local engine), `archive` (they need
pyarrow), `files` (every file written, safely); `ray_engine` is the Ray Data engine (it needs
ray[data]), `cli` the command line. This package imports neither pyarrow nor ray, so
`grouplat --help` works without them.
"""
