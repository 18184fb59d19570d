"""grouplat.client: call a grouplat Triton server over gRPC (no torch: numpy, grpcio, protobuf, tritonclient).

    from grouplat.client import Client, save_image
    with Client("localhost:8001") as client:
        z = client.encode(["a.png", "b.png"])           # → Latents (fingerprint, layout, settings)
        z.save("ab.latent")                             # grouplat.v1.LatentCode bytes
        images = client.mix("a.png", "b.png", groups=1) # S1 (identity, pose) of b into a
        save_image(images[0], "mixed.png")

`AsyncClient` (grouplat.client.aio) has the same methods, awaitable. The CLI is grouplat.client.cli.
"""

from grouplat.client.aio import AsyncClient
from grouplat.client.client import (
    DEFAULT_SERVER,
    SERVER_ENV,
    Client,
    ClientError,
    DeadlineExceededError,
    InvalidRequestError,
    ModelMismatchError,
    RetryPolicy,
    ServedModel,
    ServerError,
    ServerUnavailableError,
    parse_endpoints,
)
from grouplat.client.images import grid, load_image, save_image, to_model_images, to_pil, to_uint8
from grouplat.client.latents import Latents, Settings

__all__ = [
    "DEFAULT_SERVER",
    "SERVER_ENV",
    "AsyncClient",
    "Client",
    "ClientError",
    "DeadlineExceededError",
    "InvalidRequestError",
    "Latents",
    "ServedModel",
    "ModelMismatchError",
    "RetryPolicy",
    "ServerError",
    "ServerUnavailableError",
    "Settings",
    "grid",
    "load_image",
    "parse_endpoints",
    "save_image",
    "to_model_images",
    "to_pil",
    "to_uint8",
]
