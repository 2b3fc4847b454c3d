"""Hard examples: rows the router marked hard, as the agent keeps them and the gateway stores them.

One record type for every part that handles them: the agent's ledger, the
gateway's store and the export command. A record has a stable id made of the
agent's id, the record's sequence number in that agent's ledger and a hash
of its content (``AGENT_ID.SEQ.HASH``): a record sent twice has the same id
twice, so the gateway keeps it once, and two ledgers that reuse a sequence
number (a wiped data directory) still give different ids. Ledgers number
their records from 1; sequence number 0 marks a record from an agent older
than ids, named by its content alone.

The content hash covers everything but the id, in one canonical form that
both sides compute, so the gateway can check that a record is what its id
says. Scores are kept as float32 values (the wire carries float32), so the
hash is the same before and after the trip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecloud.core.codec import tensor_from_raw, tensor_to_raw
from edgecloud.core.errors import InvalidInput

HASH_DIGITS = 16
"""Hex digits of the content hash in a record id."""
AGENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
"""What an agent id may look like (it names files and directories on the gateway)."""
_HASH_RE = re.compile(rf"^[0-9a-f]{{{HASH_DIGITS}}}$")
_MAX_SEQ = 2**63 - 1
_ANSWER_ID_RE = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class InputRow:
    """One input tensor of one row: v2 raw bytes (little-endian; BYTES length-prefixed)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes

    @classmethod
    def of(cls, name: str, array: np.ndarray) -> InputRow:
        """The row ``array`` (batch dimension included) as raw bytes."""
        datatype, data = tensor_to_raw(name, array)
        return cls(name, datatype, tuple(int(d) for d in array.shape), data)

    def array(self) -> np.ndarray:
        """The row as a numpy array; InvalidInput when the bytes do not fit the shape."""
        return tensor_from_raw(f"input '{self.name}'", self.datatype, self.shape, self.data)


def float32_values(values: Any) -> tuple[float, ...]:
    """Scores as the wire carries them: each value rounded to float32."""
    return tuple(np.asarray(values, dtype=np.float32).ravel().astype(np.float64).tolist())


@dataclass(frozen=True, slots=True)
class HardExample:
    """One row, what the edge said about it, and what the cloud said, if it did."""

    task: str
    model_version: str
    policy_version: str
    inputs: tuple[InputRow, ...]
    edge_scores: tuple[float, ...]
    """The edge model's class scores for the row (float32 values)."""
    cloud_scores: tuple[float, ...] | None
    """The cloud's class scores, when the cloud answered the row."""
    cloud_model_version: str
    route: str
    """How the app was answered: ``cloud``, ``edge`` or ``edge_fallback``."""
    reason: str
    """Why the router marked the row hard (``low_confidence``, ``sampled``, ...)."""
    confidence: float
    at: float
    """Unix time in seconds at the agent when the row was answered."""
    answer_id: str = ""
    """The better answer the row belongs to, when the app asked for one."""
    answer_row: int = 0
    """The row's index in that answer's request."""

    @property
    def nbytes(self) -> int:
        """Bytes of input data: what upload limits count."""
        return sum(len(row.data) for row in self.inputs)

    def content_hash(self) -> str:
        """sha256 (hex) of the record's canonical form."""
        return hashlib.sha256(_canonical(self)).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (inputs base64)."""
        return {
            "task": self.task, "model_version": self.model_version,
            "policy_version": self.policy_version,
            "inputs": [{"name": r.name, "datatype": r.datatype, "shape": list(r.shape),
                        "data": base64.b64encode(r.data).decode("ascii")}
                       for r in self.inputs],
            "edge_scores": list(self.edge_scores),
            "cloud_scores": None if self.cloud_scores is None else list(self.cloud_scores),
            "cloud_model_version": self.cloud_model_version,
            "route": self.route, "reason": self.reason, "confidence": self.confidence,
            "at": self.at, **self._answer_fields(),
        }

    def _answer_fields(self) -> dict[str, Any]:
        """The better answer's id and row, only when there is one (so a record without
        one keeps the form, and the content hash, of records older than these fields)."""
        if not self.answer_id:
            return {}
        return {"answer_id": self.answer_id, "answer_row": self.answer_row}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HardExample:
        """Inverse of :meth:`to_dict`; InvalidInput when a field is missing or malformed."""
        try:
            cloud = data.get("cloud_scores")
            return cls(
                task=str(data["task"]), model_version=str(data.get("model_version", "")),
                policy_version=str(data.get("policy_version", "")),
                inputs=tuple(InputRow(str(i["name"]), str(i["datatype"]),
                                      tuple(int(d) for d in i["shape"]),
                                      base64.b64decode(i["data"], validate=True))
                             for i in data["inputs"]),
                edge_scores=float32_values(data.get("edge_scores") or ()),
                cloud_scores=None if cloud is None else float32_values(cloud),
                cloud_model_version=str(data.get("cloud_model_version", "")),
                route=str(data.get("route", "")), reason=str(data.get("reason", "")),
                confidence=float(data.get("confidence", 0.0)), at=float(data["at"]),
                answer_id=str(data.get("answer_id") or ""),
                answer_row=int(data.get("answer_row") or 0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"hard example record is malformed ({type(exc).__name__})") \
                from None


@dataclass(frozen=True, slots=True)
class KeptExample:
    """A hard example with its identity: whose ledger kept it, and as which record."""

    record_id: str
    agent_id: str
    seq: int
    example: HardExample

    @classmethod
    def new(cls, agent_id: str, seq: int, example: HardExample) -> KeptExample:
        """Give ``example`` its id as record ``seq`` of ``agent_id``'s ledger."""
        return cls(record_id(agent_id, seq, example.content_hash()), agent_id, seq, example)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: the example's fields and the identity."""
        return {"record_id": self.record_id, "agent_id": self.agent_id, "seq": self.seq,
                **self.example.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeptExample:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(str(data["record_id"]), str(data["agent_id"]), int(data["seq"]),
                       HardExample.from_dict(data))
        except (KeyError, TypeError, ValueError):
            raise InvalidInput("hard example record has no valid identity") from None

    def problem(self) -> str | None:
        """Why this record's id does not fit it (agent, sequence, content), or None."""
        if not AGENT_ID_RE.match(self.agent_id):
            return f"agent id {self.agent_id!r} is not valid"
        try:
            agent_id, seq, digest = parse_record_id(self.record_id)
        except InvalidInput as exc:
            return exc.message
        if agent_id != self.agent_id or seq != self.seq:
            return f"record id {self.record_id!r} is not record {self.seq} of {self.agent_id}"
        answer_id = self.example.answer_id
        if answer_id and not _ANSWER_ID_RE.fullmatch(answer_id):
            return f"answer id {answer_id[:40]!r} is not 32 lowercase hex digits"
        if not self.example.content_hash().startswith(digest):
            return f"record {self.record_id} does not match its content hash"
        return None


def record_id(agent_id: str, seq: int, content_hash: str) -> str:
    """``AGENT_ID.SEQ.HASH`` (the first :data:`HASH_DIGITS` hex digits of the hash)."""
    return f"{agent_id}.{seq}.{content_hash[:HASH_DIGITS]}"


def parse_record_id(value: str) -> tuple[str, int, str]:
    """``(agent_id, seq, hash)`` of a record id; InvalidInput naming the problem."""
    agent_id, _, rest = (value or "").rpartition(".")
    agent_id, _, seq = agent_id.rpartition(".")
    if (not AGENT_ID_RE.match(agent_id) or not seq.isdigit() or len(seq) > 19
            or not _HASH_RE.match(rest) or not 0 <= int(seq) <= _MAX_SEQ):
        raise InvalidInput(f"record id {value[:200]!r} is not AGENT_ID.SEQ.HASH")
    return agent_id, int(seq), rest


def _canonical(example: HardExample) -> bytes:
    """The bytes the content hash covers: every field, inputs by their own sha256."""
    document = {
        "task": example.task, "model_version": example.model_version,
        "policy_version": example.policy_version,
        "inputs": [[r.name, r.datatype, list(r.shape), hashlib.sha256(r.data).hexdigest()]
                   for r in example.inputs],
        "edge_scores": list(example.edge_scores),
        "cloud_scores": None if example.cloud_scores is None else list(example.cloud_scores),
        "cloud_model_version": example.cloud_model_version,
        "route": example.route, "reason": example.reason,
        "confidence": example.confidence, "at": example.at, **example._answer_fields(),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")
