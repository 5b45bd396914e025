"""Protobuf and gRPC stubs for proto/semshare/v1/semshare.proto, generated on first import.

Nothing generated is committed: the stubs are compiled by grpc_tools.protoc into a cache
directory named by a hash of the proto (and of the grpcio-tools and protobuf versions, whose
generated code they must match), so they always match the proto they were built from. A changed
proto gets a new directory; an old one is simply never used again.

Where things are (environment overrides first):
  SEMSHARE_PROTO        the .proto file (default: ../../../proto/semshare/v1/semshare.proto, i.e.
                        the repository this package lives in)
  SEMSHARE_STUB_CACHE   the cache root (default: $XDG_CACHE_HOME/semshare/python-stubs, else
                        ~/.cache/semshare/python-stubs)

Concurrency: several processes may import at once (parallel tests); each compiles into a
private temporary directory and renames it into place, so a reader never sees a half-written
directory.
"""

import hashlib
import importlib
import os
import pathlib
import shutil
import sys
import tempfile

_PROTO_REL = pathlib.Path("semshare") / "v1" / "semshare.proto"


def proto_path() -> pathlib.Path:
    env = os.environ.get("SEMSHARE_PROTO")
    if env:
        return pathlib.Path(env)
    # clients/python/semshare_client/_stubs.py -> repository root is three levels up.
    return pathlib.Path(__file__).resolve().parents[3] / "proto" / _PROTO_REL


def _cache_root() -> pathlib.Path:
    env = os.environ.get("SEMSHARE_STUB_CACHE")
    if env:
        return pathlib.Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(xdg) / "semshare" / "python-stubs"


def _key(proto_bytes: bytes) -> str:
    import google.protobuf
    import grpc_tools

    h = hashlib.sha256(proto_bytes)
    # The generated code checks the protobuf runtime version; a different grpcio-tools or
    # protobuf gets its own stubs.
    h.update(b"\0" + getattr(grpc_tools, "__version__", "?").encode())
    h.update(b"\0" + google.protobuf.__version__.encode())
    return h.hexdigest()[:24]


def _compile(proto: pathlib.Path, out_dir: pathlib.Path) -> None:
    from grpc_tools import protoc
    import grpc_tools

    # The proto's include root: the directory above semshare/v1.
    include_root = proto.parent.parent.parent
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{include_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(_PROTO_REL),
    ]
    if proto.resolve() != (include_root / _PROTO_REL).resolve():
        raise ImportError(f"{proto} must be at <root>/{_PROTO_REL} (its package is semshare.v1)")
    rc = protoc.main(args)
    if rc != 0:
        raise ImportError(f"grpc_tools.protoc failed ({rc}) on {proto}")
    # Regular packages, so that `semshare.v1` resolves to this directory only.
    for pkg in (out_dir / "semshare", out_dir / "semshare" / "v1"):
        (pkg / "__init__.py").touch()


def load():
    """(semshare_pb2, semshare_pb2_grpc), compiled into the cache on first use."""
    proto = proto_path()
    try:
        proto_bytes = proto.read_bytes()
    except OSError as e:
        raise ImportError(
            f"cannot read the API definition {proto} ({e}); set SEMSHARE_PROTO to "
            "proto/semshare/v1/semshare.proto") from e
    final = _cache_root() / _key(proto_bytes)
    if not (final / "semshare" / "v1" / "semshare_pb2_grpc.py").is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
        try:
            _compile(proto, tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                # Another process finished first; its directory is identical.
                if not (final / "semshare" / "v1" / "semshare_pb2_grpc.py").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    loaded = sys.modules.get("semshare.v1.semshare_pb2")
    if loaded is not None:
        if pathlib.Path(loaded.__file__).resolve().parent != (final / "semshare" / "v1").resolve():
            raise ImportError("another semshare.v1 module is already imported in this process")
    elif str(final) not in sys.path:
        sys.path.insert(0, str(final))
    pb2 = importlib.import_module("semshare.v1.semshare_pb2")
    pb2_grpc = importlib.import_module("semshare.v1.semshare_pb2_grpc")
    return pb2, pb2_grpc
