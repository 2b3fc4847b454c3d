"""Artifacts and their manifests: what a model or policy version is.

A manifest is a JSON document describing one immutable artifact (its
content digest, size, signature of the model, a smoke-test sample). Its
canonical bytes (sorted keys, no spaces) are what the operator signs and
what travels to agents unchanged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from edgecloud.core.errors import EdgecloudError, FailedPrecondition, InvalidInput
from edgecloud.core.tensors import V2_TO_NUMPY, TensorSpec

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
VERSION_RE = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
HASH_CHUNK = 1 << 20
MAX_SAMPLE_RANK = 32
"""Most dimensions a sample tensor may have (as a request's tensor)."""


class TensorDoc(BaseModel):
    """A tensor's name, v2 datatype and shape (-1: any size)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    datatype: str
    shape: list[int]

    def spec(self) -> TensorSpec:
        """As a :class:`~core.tensors.TensorSpec`."""
        return TensorSpec(self.name, self.datatype, tuple(self.shape))


class SampleTensor(BaseModel):
    """A small concrete tensor: smoke-test input or expected output."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    datatype: str
    shape: list[Annotated[int, Field(ge=0)]] = Field(max_length=MAX_SAMPLE_RANK)
    """Concrete dimensions (a sample has no free ones)."""
    data: list = Field(description="Values, flattened row-major.")

    @field_validator("data")
    @classmethod
    def _numbers(cls, data: list) -> list:
        for index, value in enumerate(data):
            # null: how JSON writes a NaN (a sample of a model that answers NaN)
            if value is not None and not isinstance(value, bool | int | float):
                raise ValueError(f"value {index} is a {type(value).__name__}, not a number")
        return data

    @model_validator(mode="after")
    def _fits(self) -> SampleTensor:
        """Refused when parsed (so at publish), not when an agent or replica loads it."""
        try:
            self.array()
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
        return self

    def array(self) -> np.ndarray:
        """The values as a numpy array of the right dtype and shape.

        :class:`~core.errors.InvalidInput` names the tensor when the datatype is
        not one a sample can have, the count does not fit the shape, or a value
        does not fit the datatype.
        """
        dtype = V2_TO_NUMPY.get(self.datatype)
        if dtype is None or self.datatype == "BYTES":
            raise InvalidInput(f"sample tensor {self.name!r} has unsupported datatype "
                               f"{self.datatype!r}")
        try:
            with np.errstate(over="raise", invalid="raise"):
                values = np.asarray(self.data, dtype=dtype)
        except (ValueError, TypeError, OverflowError, FloatingPointError):
            raise InvalidInput(f"sample tensor {self.name!r} has values that do not fit "
                               f"{self.datatype}") from None
        if values.ndim != 1 or values.size != math.prod(self.shape):
            raise InvalidInput(f"sample tensor {self.name!r} has {values.size} values for "
                               f"shape {self.shape}")
        return values.reshape(self.shape)


class Manifest(BaseModel):
    """One artifact version: a model (edge or cloud) or a routing policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["model", "policy"]
    name: str = Field(pattern=NAME_RE)
    version: str = Field(pattern=VERSION_RE)
    target: Literal["edge", "cloud"] | None = None
    """Where a model runs; None for policies."""
    digest: str = Field(pattern=DIGEST_RE.pattern)
    size: int = Field(ge=0)
    created: str
    inputs: list[TensorDoc] = Field(default_factory=list)
    outputs: list[TensorDoc] = Field(default_factory=list)
    sample_input: list[SampleTensor] = Field(default_factory=list)
    """One row the agent runs as a smoke test before swapping."""
    expected_output: list[SampleTensor] = Field(default_factory=list)
    """What the sample should produce (checked with a tolerance); may be empty."""

    def canonical(self) -> bytes:
        """The exact bytes that are signed and sent to agents."""
        return canonical_json(self.model_dump(mode="json"))


def canonical_json(document: dict) -> bytes:
    """Sorted keys, no insignificant white space, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate manifest bytes; InvalidInput says what is wrong."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"manifest is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("manifest is not valid: it nests too deeply") from None
    if not isinstance(document, dict):
        raise InvalidInput("manifest must be a JSON object")
    try:
        return Manifest.model_validate(document)
    except RecursionError:
        raise InvalidInput("manifest is not valid: it nests too deeply") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'manifest'}: "
            f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise InvalidInput(f"invalid manifest: {problems}") from None


class Floor(BaseModel):
    """A task's signed minimum version: agents refuse edge model versions older than it.

    Signed with the operator's key like a manifest (its canonical bytes), so a
    gateway or a man in the middle cannot make one up, and an agent that has seen a
    floor never goes below it, even if it is later left out of an assignment.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["floor"] = "floor"
    name: str = Field(pattern=NAME_RE)
    """The task."""
    version: str = Field(pattern=VERSION_RE)
    """The oldest edge model version agents may run (see :func:`version_key`)."""
    created: str

    def canonical(self) -> bytes:
        """The exact bytes that are signed and sent to agents."""
        return canonical_json(self.model_dump(mode="json"))

    def allows(self, version: str) -> bool:
        """True when ``version`` is at or above the floor."""
        return version_key(version) >= version_key(self.version)


def version_key(version: str) -> tuple:
    """Sort key of a version: numeric parts compare as numbers (``1.10`` after ``1.9``),
    other parts as text, after numbers."""
    parts = re.split(r"[.+-]", version)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def build_floor(name: str, version: str) -> Floor:
    """A floor document for task ``name`` at ``version``; InvalidInput for bad names."""
    try:
        return Floor(name=name, version=version, created=now_iso())
    except ValidationError as exc:
        raise InvalidInput(f"invalid floor: {exc.errors()[0]['msg']}") from None


def parse_floor(data: bytes) -> Floor:
    """Parse and validate floor bytes; InvalidInput says what is wrong."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput("floor is not valid JSON") from None
    if not isinstance(document, dict):
        raise InvalidInput("floor must be a JSON object")
    try:
        return Floor.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'floor'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"invalid floor: {problems}") from None


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """``("sha256:<hex>", size)`` of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if progress is not None:
                progress(len(chunk))
    return "sha256:" + digest.hexdigest(), size


def sha256_bytes(data: bytes) -> str:
    """``"sha256:<hex>"`` of bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def now_iso() -> str:
    """Current UTC time, ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def sample_for(specs: tuple[TensorSpec, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """One deterministic row per input (free dimensions become 1), values in [0, 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        if spec.datatype == "BYTES":
            raise InvalidInput(f"input {spec.name!r} is BYTES; no smoke-test sample can be made")
        shape = tuple(1 if d < 0 else d for d in spec.shape)
        dtype = V2_TO_NUMPY[spec.datatype]
        if dtype.kind == "f":
            values = rng.random(shape)
        elif dtype.kind == "b":
            values = rng.random(shape) < 0.5
        else:
            values = rng.integers(0, 2, shape)
        out[spec.name] = np.asarray(values, dtype=dtype)
    return out


def sample_tensors(arrays: dict[str, np.ndarray], specs: tuple[TensorSpec, ...]) -> list[
        SampleTensor]:
    """Sample tensors for a manifest, typed as ``specs`` say."""
    return [
        SampleTensor(name=s.name, datatype=s.datatype, shape=list(arrays[s.name].shape),
                     data=arrays[s.name].ravel().tolist())
        for s in specs
    ]


def tensor_docs(specs: tuple[TensorSpec, ...]) -> list[TensorDoc]:
    """Tensor docs for a manifest."""
    return [TensorDoc(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in specs]


def build_model_manifest(path: Path, *, name: str, version: str, target: str,
                         progress: Callable[[int], None] | None = None) -> Manifest:
    """Describe an ONNX file: digest, signature, a sample row and its expected output."""
    from edgecloud.core.model import OnnxModel  # the ONNX Runtime import is only needed here

    model = OnnxModel.load(path, name=name, version=version)
    digest, size = sha256_file(path, progress)
    sample = sample_for(model.inputs)
    expected = model.run(sample)
    try:
        return Manifest(
            kind="model", name=name, version=version, target=target, digest=digest, size=size,
            created=now_iso(), inputs=tensor_docs(model.inputs),
            outputs=tensor_docs(model.outputs),
            sample_input=sample_tensors(sample, model.inputs),
            expected_output=sample_tensors(expected, model.outputs),
        )
    except ValidationError as exc:
        raise InvalidInput(f"cannot describe {path}: {exc.errors()[0]['msg']}") from None


def build_policy_manifest(document: bytes, *, name: str, version: str) -> Manifest:
    """Describe a policy document (its bytes are the artifact)."""
    try:
        return Manifest(kind="policy", name=name, version=version,
                        digest=sha256_bytes(document), size=len(document), created=now_iso())
    except ValidationError as exc:
        raise InvalidInput(f"invalid policy name or version: {exc.errors()[0]['msg']}") from None


def smoke_test(model, manifest: Manifest, *, require_sample: bool = True) -> None:
    """Run the manifest's sample on a loaded model before it serves anything.

    The outputs must be finite, have the shapes the manifest declares, and
    match its expected outputs when it has them. Raises
    :class:`~core.errors.FailedPrecondition` saying what failed. Without a
    sample the check fails, or is skipped when ``require_sample`` is false.
    """
    if not manifest.sample_input:
        if require_sample:
            raise FailedPrecondition("manifest has no sample input for the smoke test")
        return
    try:
        outputs = model.run({t.name: t.array() for t in manifest.sample_input})
    except EdgecloudError as exc:
        raise FailedPrecondition(
            f"smoke test: the model failed to run ({exc.message})"
        ) from None
    declared = {t.name: t for t in manifest.outputs}
    for spec in model.outputs:
        value = np.asarray(outputs[spec.name])
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise FailedPrecondition(
                f"smoke test: output {spec.name!r} has NaN or infinite values"
            )
        doc = declared.get(spec.name)
        if doc is not None and (value.ndim != len(doc.shape) or any(
                d >= 0 and d != g for d, g in zip(doc.shape, value.shape, strict=True))):
            raise FailedPrecondition(
                f"smoke test: output {spec.name!r} has shape {list(value.shape)}, "
                f"manifest says {doc.shape}"
            )
    for expected in manifest.expected_output:
        got = np.asarray(outputs.get(expected.name))
        want = expected.array()
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-4):
            raise FailedPrecondition(
                f"smoke test: output {expected.name!r} differs from the manifest's "
                "expected output"
            )
