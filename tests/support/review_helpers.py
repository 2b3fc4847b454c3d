"""The review tier's test helpers: tokens with every role, a policy that sends every
escalated row to review, fast_then_better requests, and polls of the queue and answers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import yaml

from edgecloud.core import codec
from edgecloud.core.auth import call_metadata
from edgecloud.core.tensors import InferRequest
from edgecloud.protos.answers.v1 import answers_pb2 as apb
from edgecloud.protos.answers.v1 import answers_pb2_grpc as apb_grpc
from edgecloud.protos.fleet.v1 import fleet_pb2 as fpb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as fpb_grpc
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

OPERATOR = "op-secret-0123456789"
REVIEWER = "rev-secret-0123456789"
VIEWER = "view-secret-0123456789"
AGENT = "ag-secret-0123456789"
BETTER = {"answer": "fast_then_better", "confidence_threshold": 1.0}
"""Every row escalated behind the fast answer (no row meets a threshold of 1)."""


def review_setup(tmp_path: Path, digits_dir: Path) -> tuple[Path, Path]:
    """A tokens file with every role, and the digits policy with review_threshold 1.0 (every
    row the cloud answers goes to review)."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({
        "operators": [OPERATOR], "reviewers": {REVIEWER: "rita"}, "viewers": [VIEWER],
        "agents": {AGENT: "agent-0"}}))
    (tmp_path / "agent.token").write_text(AGENT + "\n")
    policy = yaml.safe_load((digits_dir / "policy.yaml").read_text())
    policy["review_threshold"] = 1.0
    path = tmp_path / "review-policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return tokens, path


async def ask_better(agent_address: str, rows: np.ndarray) -> list[str]:
    """One fast_then_better request per row over gRPC; the answer ids."""
    ids = []
    async with grpc.aio.insecure_channel(agent_address) as channel:
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        for i in range(len(rows)):
            reply = await v2.ModelInfer(codec.encode_infer_request(InferRequest(
                model_name="digits", inputs={"pixels": rows[i:i + 1]}, parameters=BETTER)),
                timeout=10)
            ids.append(reply.parameters["answer_id"].string_param)
    return ids


async def queue_of(review: fpb_grpc.ReviewServiceStub, token: str, count: int,
                   timeout_s: float = 30.0) -> fpb.ListReviewsReply:
    """List the queue until it holds ``count`` rows."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await review.ListReviews(fpb.ListReviewsRequest(task="digits"),
                                         metadata=call_metadata(token), timeout=10)
        if reply.waiting == count or time.monotonic() > deadline:
            return reply
        await asyncio.sleep(0.1)


async def answer_of(agent_address: str, answer_id: str, source: str,
                    timeout_s: float = 30.0) -> apb.Answer:
    """Get the answer until its source is ``source``."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(agent_address) as channel:
        answers = apb_grpc.AnswersStub(channel)
        while True:
            got = await answers.Get(apb.GetAnswerRequest(answer_id=answer_id), timeout=10)
            if got.source == source or time.monotonic() > deadline:
                return got
            await asyncio.sleep(0.1)
