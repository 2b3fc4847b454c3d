"""Hard examples on the wire: the one converter between ``fleet.v1.HardExample`` and
:class:`~core.hard_examples.KeptExample`, used by the agent, the gateway and the
export command alike."""

from __future__ import annotations

from edgecloud.core.hard_examples import HardExample, InputRow, KeptExample, float32_values
from edgecloud.protos.fleet.v1 import fleet_pb2 as pb


def example_to_pb(kept: KeptExample) -> pb.HardExample:
    """Domain record -> wire message."""
    e = kept.example
    return pb.HardExample(
        agent_id=kept.agent_id, record_id=kept.record_id, seq=kept.seq, task=e.task,
        model_version=e.model_version, policy_version=e.policy_version,
        inputs=[pb.TensorBlob(name=r.name, datatype=r.datatype, shape=r.shape, data=r.data)
                for r in e.inputs],
        edge_scores=e.edge_scores, cloud_scores=e.cloud_scores or (),
        has_cloud_answer=e.cloud_scores is not None,
        cloud_model_version=e.cloud_model_version, route=e.route, reason=e.reason,
        confidence=e.confidence, at=e.at, answer_id=e.answer_id, answer_row=e.answer_row,
    )


def example_from_pb(message: pb.HardExample) -> KeptExample:
    """Wire message -> domain record (not checked: see :meth:`KeptExample.problem`).

    A message from an agent older than record ids (no ``record_id``) becomes
    record 0 of its agent with an id from its content, so its resends are
    still kept once; its cloud scores, if any, are the cloud's answer.
    """
    legacy = not message.record_id
    example = HardExample(
        task=message.task, model_version=message.model_version,
        policy_version=message.policy_version,
        inputs=tuple(InputRow(t.name, t.datatype, tuple(t.shape), t.data)
                     for t in message.inputs),
        edge_scores=float32_values(message.edge_scores),
        cloud_scores=(float32_values(message.cloud_scores)
                      if message.has_cloud_answer or (legacy and message.cloud_scores)
                      else None),
        cloud_model_version=message.cloud_model_version, route=message.route,
        reason=message.reason, confidence=message.confidence, at=message.at,
        answer_id=message.answer_id, answer_row=message.answer_row,
    )
    if legacy:
        return KeptExample.new(message.agent_id, 0, example)
    return KeptExample(message.record_id, message.agent_id, message.seq, example)
