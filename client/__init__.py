"""grouplat.client: call a grouplat Triton server over gRPC (no torch: numpy, grpcio, protobuf, tritonclient).

    from grouplat.client import Client, save_image
    with Client("localhost:8001") as client:
        z = client.encode(["a.png", "b.png"])           # → Latents (fingerprint, layout, settings)
        z.save("ab.latent")                             # grouplat.v1.LatentCode bytes
        images = client.mix("a.png", "b.png", groups=1) # S1 (identity, pose) of b into a
        save_image(images[0], "mixed.png")

Generation settings: `settings=Settings(...)` (grouplat.settings.GenerationSettings) or single
keywords (`steps=40`, `solver="gei2m"`, `schedule=...`) on any method; keywords win over the
object, which wins over the latents' own settings, which win over the model's defaults.

Versions: `Client(server, model_version="2")` pins one of several served model versions (default:
the newest); `Latents` record the version that made them and always go back to it (by fingerprint).

Previews: `client.decode_stream(z)` / `client.mix_stream(a, b, groups)` yield a `Preview(phase,
images, final)` per group phase (S1 first), the last equal to `decode` / `mix`.

`AsyncClient` (grouplat.client.aio) has the same methods, awaitable (the streams: async
iterators). Modules: `client` and `aio` (the two APIs), `plans` (each method, once), `served` (the
served model, settings resolution), `transport` and `runners` (deadline, retries, fail-over,
tritonclient calls, streams), `errors`, `latents`, `images`; `cli` the command line, `batch` the
batch jobs.
"""

from grouplat.client.aio import AsyncClient
from grouplat.client.client import Client
from grouplat.client.errors import (
    ClientError,
    DeadlineExceededError,
    InvalidRequestError,
    ModelMismatchError,
    ServerError,
    ServerUnavailableError,
)
from grouplat.client.images import grid, load_image, save_image, to_model_images, to_pil, to_uint8
from grouplat.client.latents import Latents, Settings
from grouplat.client.served import ServedModel
from grouplat.client.transport import DEFAULT_SERVER, SERVER_ENV, Preview, RetryPolicy, parse_endpoints

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
    "Preview",
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
