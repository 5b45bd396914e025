"""Protobuf and gRPC stubs of proto/semshare/v1/semshare.proto.

Generated when the package is built (clients/python/setup.py runs grpc_tools.protoc into
semshare_client/_generated/), so they match the proto the package was built from; nothing is
compiled at import. Install the package with `pip install ./clients/python` (scripts/setup does,
into the repository's .venv).
"""


def load():
    """(semshare_pb2, semshare_pb2_grpc) of the installed package."""
    try:
        from semshare_client._generated import semshare_pb2, semshare_pb2_grpc
    except ImportError as e:
        raise ImportError(
            "semshare_client has no generated stubs: install the package "
            "(pip install ./clients/python) instead of importing it from the source tree") from e
    return semshare_pb2, semshare_pb2_grpc
