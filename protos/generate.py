"""Regenerate the Python modules beside the ``.proto`` files.

Run from anywhere: ``python -m protos.generate``. The generated ``_pb2.py``,
``_pb2.pyi`` and ``_pb2_grpc.py`` files are committed; ``tests/protos`` fails
when they differ from what this script writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_FILES = (
    "protos/inference/grpc_predict_v2.proto",
    "protos/fleet/v1/fleet.proto",
)


def generate(root: Path, out: Path) -> None:
    """Compile every proto under ``root`` into ``out`` (both repository roots)."""
    from grpc_tools import protoc  # imported here: only needed to regenerate

    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(root / p) for p in PROTO_FILES),
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    generate(root, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
