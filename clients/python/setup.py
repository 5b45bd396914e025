"""Build hook of the semshare_client package (metadata: pyproject.toml).

build_py compiles the API definition into the built package with grpc_tools.protoc:
semshare_client/_generated/semshare_pb2.py and semshare_pb2_grpc.py. The proto is
$SEMSHARE_PROTO, else proto/semshare/v1/semshare.proto of the repository this folder lives in
(`pip install ./clients/python` builds in place, so ../../proto is there); a missing proto stops
the build with a message naming the path. The stubs are never committed and never generated at
import.
"""

import os
import pathlib
import re

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO_REL = pathlib.Path("semshare") / "v1" / "semshare.proto"


def proto_path() -> pathlib.Path:
    env = os.environ.get("SEMSHARE_PROTO")
    return pathlib.Path(env).resolve() if env else HERE.parent.parent / "proto" / PROTO_REL


def compile_stubs(out_dir: pathlib.Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    proto = proto_path()
    if not proto.is_file():
        raise SystemExit(f"semshare-client: the API definition {proto} is missing; build from "
                         "the semshare repository or set SEMSHARE_PROTO to semshare.proto")
    include_root = proto.parent.parent.parent
    if proto != (include_root / PROTO_REL).resolve() and proto != include_root / PROTO_REL:
        raise SystemExit(f"semshare-client: {proto} must be at <root>/{PROTO_REL}")
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    tmp = out_dir / "_protoc"
    tmp.mkdir(parents=True, exist_ok=True)
    rc = protoc.main(["grpc_tools.protoc", f"-I{include_root}", f"-I{well_known}",
                      f"--python_out={tmp}", f"--grpc_python_out={tmp}", str(PROTO_REL)])
    if rc != 0:
        raise SystemExit(f"semshare-client: grpc_tools.protoc failed ({rc}) on {proto}")
    gen = tmp / "semshare" / "v1"
    (out_dir / "semshare_pb2.py").write_text((gen / "semshare_pb2.py").read_text())
    # The gRPC module imports its messages as the proto package (semshare.v1); inside this
    # package they are a sibling module.
    grpc_src = re.sub(r"^from semshare\.v1 import semshare_pb2 as",
                      "from . import semshare_pb2 as", (gen / "semshare_pb2_grpc.py").read_text(),
                      flags=re.M)
    if "from . import semshare_pb2 as" not in grpc_src:
        raise SystemExit("semshare-client: unexpected import in the generated gRPC module")
    (out_dir / "semshare_pb2_grpc.py").write_text(grpc_src)
    (out_dir / "__init__.py").write_text(f'"""Generated from {PROTO_REL} at build time."""\n')
    for p in sorted(tmp.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    tmp.rmdir()


class BuildPyWithStubs(build_py):
    def run(self):
        super().run()
        compile_stubs(pathlib.Path(self.build_lib) / "semshare_client" / "_generated")


setup(cmdclass={"build_py": BuildPyWithStubs})
