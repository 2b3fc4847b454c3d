"""The committed generated modules match the .proto files and the v2 wire format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgecloud.protos.generate import PROTO_FILES, SUFFIXES, generate

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"


def test_generated_modules_are_fresh(tmp_path: Path) -> None:
    """Regenerating from the .proto files gives exactly the committed modules."""
    generate(PROTOS, tmp_path)
    for proto in PROTO_FILES:
        stem = proto.removesuffix(".proto")
        for suffix in SUFFIXES:
            fresh = (tmp_path / f"{stem}{suffix}").read_text()
            committed = (PROTOS / f"{stem}{suffix}").read_text()
            assert fresh == committed, f"{stem}{suffix} is stale: run `make protos`"


FIELDS_SCRIPT = r"""
import json, sys
from google.protobuf import descriptor_pool
names = json.loads(sys.argv[1])
if sys.argv[2] == "ours":
    import edgecloud.protos.inference.grpc_predict_v2_pb2  # noqa: F401
else:
    import tritonclient.grpc.service_pb2  # noqa: F401
pool = descriptor_pool.Default()
out = {}
for name in names:
    msg = pool.FindMessageTypeByName(name)
    out[name] = sorted((f.name, f.number, f.type, f.label,
                        (f.message_type or f.enum_type).full_name
                        if (f.message_type or f.enum_type) else "") for f in msg.fields)
for name in ("inference.DataType", "inference.ModelInput.Format"):
    out[name] = sorted((v.name, v.number) for v in pool.FindEnumTypeByName(name).values)
print(json.dumps(out))
"""

MESSAGES = [
    "inference.ServerLiveResponse", "inference.ServerReadyResponse",
    "inference.ModelReadyRequest", "inference.ModelReadyResponse",
    "inference.ServerMetadataResponse", "inference.ModelMetadataRequest",
    "inference.ModelMetadataResponse", "inference.ModelMetadataResponse.TensorMetadata",
    "inference.ModelInferRequest", "inference.ModelInferRequest.InferInputTensor",
    "inference.ModelInferRequest.InferRequestedOutputTensor", "inference.ModelInferResponse",
    "inference.ModelInferResponse.InferOutputTensor", "inference.ModelStreamInferResponse",
    "inference.InferParameter", "inference.InferTensorContents",
    "inference.ModelConfigRequest", "inference.ModelConfigResponse",
]
PARTIAL_MESSAGES = ["inference.ModelConfig", "inference.ModelInput", "inference.ModelOutput"]
"""Triton's model configuration is large: we define the fields we fill, with its numbers."""
ENUMS = ["inference.DataType", "inference.ModelInput.Format"]


def _fields(which: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-P", "-c", FIELDS_SCRIPT, json.dumps(MESSAGES + PARTIAL_MESSAGES),
         which],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
    )
    return json.loads(result.stdout)


def test_v2_messages_match_the_stock_client() -> None:
    """Every v2 message we use has the field names, numbers and types of tritonclient's
    definitions (each side loaded in its own process: both register `inference.*`)."""
    ours, stock = _fields("ours"), _fields("stock")
    for name in MESSAGES:
        assert ours[name] == stock[name], name


def test_model_config_messages_are_part_of_tritons() -> None:
    """ModelConfig, ModelInput and ModelOutput hold a subset of Triton's fields with the
    same names, numbers and types, and the data type enum has Triton's numbers."""
    ours, stock = _fields("ours"), _fields("stock")
    for name in PARTIAL_MESSAGES:
        assert ours[name], name
        assert set(map(tuple, ours[name])) <= set(map(tuple, stock[name])), name
    for name in ENUMS:
        assert ours[name] == stock[name], name
