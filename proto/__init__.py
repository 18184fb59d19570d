"""Wire formats (`grouplat.v1`): the latent code message and the Triton tensor contract (README.md).

`latent_pb2` (import it as `from grouplat.proto import latent_pb2`) is generated from
`latent.proto` by grpcio-tools 1.62.3 (protoc 25.1) and checked in, so installing grouplat needs no
grpcio-tools; the generated code runs on protobuf 4.21 … 6.x. After editing the .proto, regenerate
it with `python -m grouplat.proto.generate` (a test checks that the checked-in code is current).
"""

FORMAT_VERSION = 1  # LatentCode.format_version written (and the newest read) by this grouplat
