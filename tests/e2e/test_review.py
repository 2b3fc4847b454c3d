"""The human review tier, end to end: a real gateway and agent on loopback with tokens.

Rows the cloud answered less surely than the policy's ``review_threshold`` reach the
gateway's review queue; a reviewer labels them over gRPC; the app that asked for a
better answer gets the label from the agent's Answers service; bad labels get clear
statuses and store nothing; export --labelled and policy tune --field use the labels.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import aiohttp
import grpc
import numpy as np
import pytest
from review_helpers import (
    AGENT,
    OPERATOR,
    REVIEWER,
    VIEWER,
    answer_of,
    ask_better,
    queue_of,
    review_setup,
)

from edgecloud.core.auth import call_metadata
from edgecloud.protos.answers.v1 import answers_pb2 as apb
from edgecloud.protos.fleet.v1 import fleet_pb2 as fpb
from edgecloud.protos.fleet.v1 import fleet_pb2_grpc as fpb_grpc


@pytest.mark.e2e
async def test_reviewers_label_queued_rows_and_the_app_gets_the_labels(
        start_gateway, start_agent, tmp_path, digits_dir, digits_test, onnx_reference):
    """Three fast_then_better rows reach the queue (oldest first, with both models' top
    answers); a reviewer's labels reach the app through Answers.Get (source reviewer,
    answered by the reviewer's name); every bad label gets its status and stores nothing;
    a viewer reads the queue but cannot label; a reviewer cannot roll out."""
    tokens, policy = review_setup(tmp_path, digits_dir)
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry, tokens_file=tokens)
    agent = await start_agent(gateway.address, fleet=False, agent_id="agent-0",
                              token_file=tmp_path / "agent.token", policies=[policy])
    x, _ = digits_test
    rows = x[:3]
    ids = await ask_better(agent.address, rows)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        review = fpb_grpc.ReviewServiceStub(channel)
        admin = fpb_grpc.AdminServiceStub(channel)
        queue = await queue_of(review, REVIEWER, 3)
        assert queue.waiting == 3
        items = list(queue.items)
        # Oldest kept first: a row is kept when the cloud answers it, and the three
        # escalations run in the background, so they may finish in any order.
        assert sorted(item.example.answer_id for item in items) == sorted(ids)
        assert [item.example.at for item in items] == sorted(item.example.at for item in items)
        edge, cloud = onnx_reference("edge", rows), onnx_reference("cloud", rows)
        row_of = {answer_id: i for i, answer_id in enumerate(ids)}
        for item in items:
            i = row_of[item.example.answer_id]
            assert item.classes == 10 and item.example.reason == "review"
            assert item.edge_class == int(edge[i].argmax())
            assert item.cloud_class == int(cloud[i].argmax())
            np.testing.assert_array_equal(
                np.frombuffer(item.example.inputs[0].data, np.float32), rows[i])
        viewer_queue = await review.ListReviews(fpb.ListReviewsRequest(),
                                                metadata=call_metadata(VIEWER))
        assert viewer_queue.waiting == 3
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await review.LabelReview(fpb.LabelReviewRequest(review_id=items[0].review_id,
                                                            label=1),
                                     metadata=call_metadata(VIEWER))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.SetRollout(fpb.RolloutRequest(action="pause", name="digits"),
                                   metadata=call_metadata(REVIEWER))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

        labels = [(int(cloud[row_of[item.example.answer_id]].argmax()) + 1) % 10
                  for item in items]
        for item, label in zip(items[:2], labels[:2], strict=True):
            given = await review.LabelReview(
                fpb.LabelReviewRequest(review_id=item.review_id, label=label),
                metadata=call_metadata(REVIEWER))
            assert (given.label, given.reviewer, given.answer_id) == (
                label, "rita", item.example.answer_id)
        # An operator may label too.
        await review.LabelReview(fpb.LabelReviewRequest(review_id=items[2].review_id,
                                                        label=labels[2]),
                                 metadata=call_metadata(OPERATOR))

        bad = [
            (items[0].review_id, 3, grpc.StatusCode.FAILED_PRECONDITION, "already labelled"),
            ("agent-0.999.0123456789abcdef", 3, grpc.StatusCode.NOT_FOUND, "no review row"),
            ("not an id", 3, grpc.StatusCode.NOT_FOUND, "no review row"),
        ]
        for review_id, label, code, words in bad:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await review.LabelReview(fpb.LabelReviewRequest(review_id=review_id,
                                                                label=label),
                                         metadata=call_metadata(REVIEWER))
            assert err.value.code() == code and words in err.value.details()
        assert (await review.ListReviews(fpb.ListReviewsRequest(),
                                         metadata=call_metadata(REVIEWER))).waiting == 0
        stored = sorted(p.name for p in (registry / "reviews" / "labels" / "agent-0").iterdir())
        assert stored == sorted(f"{item.review_id}.json" for item in items)
        assert json.loads((registry / "reviews" / "labels" / "agent-0" /
                           f"{items[0].review_id}.json").read_text())["label"] == labels[0]

    for item, label, who in zip(items, labels, ("rita", "rita", "operator"), strict=True):
        got = await answer_of(agent.address, item.example.answer_id, "reviewer")
        assert got.source == "reviewer" and got.state == apb.ANSWER_STATE_ANSWERED
        assert list(got.labels) == [label] and list(got.classes) == [label]
        assert got.answered_by == who

    # The labelled rows are exported with their labels, and the field tuner uses them.
    (tmp_path / "operator.token").write_text(OPERATOR + "\n")
    out = tmp_path / "labelled"
    exported = await edgecloud("examples", "export", "--gateway", gateway.address,
                               "--token-file", tmp_path / "operator.token", "--task", "digits",
                               "--labelled", "--out", out)
    assert "exported 3 labelled rows of digits" in exported
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    given = {item.review_id: (label, who, row_of[item.example.answer_id]) for item, label, who
             in zip(items, labels, ("rita", "rita", "operator"), strict=True)}
    assert sorted((r["record_id"], r["label"], r["reviewer"]) for r in index) == sorted(
        (review_id, label, who) for review_id, (label, who, _) in given.items())
    with np.load(out / "examples.npz") as data:  # one row per index line, in its order
        np.testing.assert_array_equal(
            data["pixels"], rows[[given[r["record_id"]][2] for r in index]])
    tuned = await edgecloud("policy", "tune", "--field", out / "index.jsonl",
                            "--out", tmp_path / "tuned.yaml", "--target-escalation", "0.5",
                            "--name", "digits")
    assert "3 of 3 rows carry human labels" in " ".join(tuned.split())


async def edgecloud(*args) -> str:
    """Run the edgecloud command; its output (it must succeed)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgecloud", *map(str, args), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, output.decode()
    return output.decode()


@pytest.mark.e2e
async def test_a_label_outside_the_tasks_classes_is_refused(start_gateway, start_agent,
                                                            tmp_path, digits_dir,
                                                            digits_test):
    """Labels below 0 or past the task's classes are INVALID_ARGUMENT and store nothing;
    the row stays in the queue and a good label then goes through."""
    tokens, policy = review_setup(tmp_path, digits_dir)
    registry = tmp_path / "registry"
    gateway = await start_gateway(registry=registry, tokens_file=tokens)
    agent = await start_agent(gateway.address, fleet=False, agent_id="agent-0",
                              token_file=tmp_path / "agent.token", policies=[policy])
    x, _ = digits_test
    await ask_better(agent.address, x[:1])
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        review = fpb_grpc.ReviewServiceStub(channel)
        (item,) = (await queue_of(review, REVIEWER, 1)).items
        for label in (10, -1, 2**31 - 1):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await review.LabelReview(fpb.LabelReviewRequest(review_id=item.review_id,
                                                                label=label),
                                         metadata=call_metadata(REVIEWER))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a class of task 'digits' (0 to 9)" in err.value.details()
        assert not (registry / "reviews" / "labels").exists()
        assert (await review.ListReviews(fpb.ListReviewsRequest(),
                                         metadata=call_metadata(REVIEWER))).waiting == 1
        await review.LabelReview(fpb.LabelReviewRequest(review_id=item.review_id, label=9),
                                 metadata=call_metadata(REVIEWER))


@pytest.mark.e2e
async def test_the_consoles_label_endpoint_answers_as_the_grpc_call(
        start_gateway, start_agent, tmp_path, digits_dir, digits_test):
    """POST /console/api/review/ID/label takes {"label": N} from a reviewer: 200 once,
    then 409; a viewer gets 403, no token 401; a bad body 400 or 415; an unknown row 404;
    a class outside the task's 400. The queue JSON is open to viewers and reviewers, and
    an agent's label stream for another agent is refused."""
    tokens, policy = review_setup(tmp_path, digits_dir)
    gateway = await start_gateway(registry=tmp_path / "registry", tokens_file=tokens,
                                  http_listen="127.0.0.1:0")
    agent = await start_agent(gateway.address, fleet=False, agent_id="agent-0",
                              token_file=tmp_path / "agent.token", policies=[policy])
    x, _ = digits_test
    await ask_better(agent.address, x[:1])
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        (item,) = (await queue_of(fpb_grpc.ReviewServiceStub(channel), REVIEWER, 1)).items
        with pytest.raises(grpc.aio.AioRpcError) as err:
            stream = fpb_grpc.FleetServiceStub(channel).WatchLabels(
                fpb.WatchLabelsRequest(agent_id="agent-1"), metadata=call_metadata(AGENT))
            await stream.read()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    base = f"http://{gateway.http_address}/console/api"
    url = f"{base}/review/{item.review_id}/label"

    async def post(session, target: str, token: str | None, body, kind="application/json"):
        headers = {"Content-Type": kind, **({"Authorization": f"Bearer {token}"}
                                           if token else {})}
        async with session.post(target, data=json.dumps(body), headers=headers) as reply:
            return reply.status, await reply.json()

    async with aiohttp.ClientSession() as session:
        for token in (VIEWER, REVIEWER):
            async with session.get(f"{base}/review",
                                   headers={"Authorization": f"Bearer {token}"}) as reply:
                queue = await reply.json()
                assert reply.status == 200 and queue["waiting"] == 1
                assert queue["rows"][0]["inputs"][0]["image"]["rows"] == 8
        async with session.get(f"{base}/agents",
                               headers={"Authorization": f"Bearer {REVIEWER}"}) as reply:
            assert reply.status == 403
        assert (await post(session, url, VIEWER, {"label": 1}))[0] == 403
        assert (await post(session, url, None, {"label": 1}))[0] == 401
        assert (await post(session, url, REVIEWER, {"label": "1"}))[0] == 400
        assert (await post(session, url, REVIEWER, {"label": 1}, "text/plain"))[0] == 415
        status, body = await post(session, url, REVIEWER, {"label": 10})
        assert status == 400 and "not a class" in body["error"]
        status, body = await post(session, f"{base}/review/agent-0.9.0123456789abcdef/label",
                                  REVIEWER, {"label": 1})
        assert status == 404 and "no review row" in body["error"]
        status, body = await post(session, url, REVIEWER, {"label": 4})
        assert status == 200 and (body["label"], body["reviewer"]) == (4, "rita")
        status, body = await post(session, url, OPERATOR, {"label": 5})
        assert status == 409 and "already labelled by rita as class 4" in body["error"]


@pytest.mark.e2e
async def test_a_label_given_through_another_replica_reaches_the_agent(
        start_gateway, start_agent, tmp_path, digits_dir, digits_test):
    """Two replicas share a registry: the row an agent uploaded through one is in the other's
    queue, a reviewer labels it there, and the agent (streaming labels from the first)
    hands the label to the app's answer."""
    tokens, policy = review_setup(tmp_path, digits_dir)
    registry = tmp_path / "registry"
    first = await start_gateway(registry=registry, tokens_file=tokens,
                                review={"label_poll_ms": 100})
    second = await start_gateway(registry=registry, tokens_file=tokens)
    agent = await start_agent(first.address, fleet=False, agent_id="agent-0",
                              token_file=tmp_path / "agent.token", policies=[policy])
    x, _ = digits_test
    (answer_id,) = await ask_better(agent.address, x[:1])
    async with grpc.aio.insecure_channel(second.address) as channel:
        review = fpb_grpc.ReviewServiceStub(channel)
        (item,) = (await queue_of(review, REVIEWER, 1)).items
        await review.LabelReview(fpb.LabelReviewRequest(review_id=item.review_id, label=6),
                                 metadata=call_metadata(REVIEWER))
    got = await answer_of(agent.address, answer_id, "reviewer")
    assert (got.source, list(got.labels), got.answered_by) == ("reviewer", [6], "rita")
