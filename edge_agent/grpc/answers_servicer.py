"""The agent's ``edgecloud.answers.v1.Answers`` service: better answers by id (thin shell).

Each method converts the request, awaits one call of the
:class:`~edge_agent.answers.AnswerStore` and converts the record; errors are
mapped by :func:`core.grpc_errors.rpc_boundary` (unknown or expired id:
``NOT_FOUND``; malformed id, too many ids: ``INVALID_ARGUMENT``).
"""

from __future__ import annotations

import grpc

from edgecloud.core.codec import tensor_to_raw
from edgecloud.core.grpc_errors import rpc_boundary
from edgecloud.core.grpc_server import add_servicer
from edgecloud.edge_agent.answers import AnswerRecord, AnswerState, AnswerStore
from edgecloud.protos.answers.v1 import answers_pb2 as pb
from edgecloud.protos.answers.v1 import answers_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Answers"].full_name

_STATES = {
    AnswerState.PENDING: pb.ANSWER_STATE_PENDING,
    AnswerState.ANSWERED: pb.ANSWER_STATE_ANSWERED,
    AnswerState.CLOUD_FAILED: pb.ANSWER_STATE_CLOUD_FAILED,
    AnswerState.NOT_ESCALATED: pb.ANSWER_STATE_NOT_ESCALATED,
}


def answer_to_pb(record: AnswerRecord) -> pb.Answer:
    """The record as an ``Answer`` message."""
    outputs = []
    for name, value in record.outputs.items():
        datatype, raw = tensor_to_raw(name, value)
        outputs.append(pb.AnswerTensor(name=name, datatype=datatype, shape=value.shape,
                                       raw=raw))
    return pb.Answer(
        answer_id=record.answer_id, task=record.task, state=_STATES[record.state],
        source=record.source, answered_by=record.answered_by,
        created_at=record.created_at, answered_at=record.answered_at or 0.0,
        route=record.route, better=record.better, classes=record.classes,
        confidence=record.confidence, outputs=outputs, labels=record.labels,
        detail=record.detail,
    )


class AnswersServicer(pb_grpc.AnswersServicer):
    """``Answers`` over an :class:`AnswerStore`."""

    def __init__(self, store: AnswerStore) -> None:
        self._store = store

    @rpc_boundary
    async def Get(self, request, context):
        return answer_to_pb(await self._store.get(request.answer_id))

    @rpc_boundary
    async def Watch(self, request, context):
        async for record in self._store.watch(list(request.answer_ids)):
            yield answer_to_pb(record)


def register(store: AnswerStore):
    """A registrar for :func:`core.grpc_server.create_server`."""

    def add(server: grpc.aio.Server) -> None:
        add_servicer(pb_grpc.add_AnswersServicer_to_server, AnswersServicer(store), server)

    return add
