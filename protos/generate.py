"""Regenerate the Python modules beside the ``.proto`` files.

Run ``make protos`` (or ``python -P -m edgecloud.protos.generate``). The
generated ``_pb2.py``, ``_pb2.pyi`` and ``_pb2_grpc.py`` files are committed;
``tests/protos`` fails when they differ from what this script writes.

The folder is ``protos/`` in the repository and ``edgecloud.protos`` once
installed, so protoc sees it under the virtual path ``edgecloud/protos``:
the generated modules then import each other as ``edgecloud.protos...``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PACKAGE_PATH = "edgecloud/protos"
"""Where the protos folder sits in the installed package (protoc's virtual path)."""

PROTO_FILES = (
    "inference/grpc_predict_v2.proto",
    "fleet/v1/fleet.proto",
    "answers/v1/answers.proto",
)
"""The contracts, relative to the protos folder."""

SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(protos_dir: Path, out: Path) -> None:
    """Compile every proto in ``protos_dir`` and write the modules under ``out``.

    ``out`` mirrors ``protos_dir`` (``out/inference/grpc_predict_v2_pb2.py``, ...).
    """
    from grpc_tools import protoc  # imported here: only needed to regenerate

    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PACKAGE_PATH}={protos_dir}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(f"{PACKAGE_PATH}/{p}" for p in PROTO_FILES),
        ]
        code = protoc.main(args)
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
        for proto in PROTO_FILES:
            stem = proto.removesuffix(".proto")
            for suffix in SUFFIXES:
                target = out / f"{stem}{suffix}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(tmp, PACKAGE_PATH, f"{stem}{suffix}"), target)


def main() -> int:
    """Regenerate in place: the folder this module was loaded from is the protos folder."""
    here = Path(__file__).resolve().parent
    generate(here, here)
    return 0


if __name__ == "__main__":
    sys.exit(main())
