"""Python client of the semshare gRPC API (proto/semshare/v1/semshare.proto).

    from semshare_client import Client
    with Client("127.0.0.1:50051", api_key="...") as c:
        print(c.generate("Write a haiku about caches.", max_tokens=40).text)

`pb2` and `pb2_grpc` are the generated modules (stubs compiled from the proto on first import,
see _stubs.py).
"""

from semshare_client.client import Client, pb2, pb2_grpc

__all__ = ["Client", "pb2", "pb2_grpc"]
