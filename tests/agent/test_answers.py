"""Better answers by id: the store on a real SQLite file, and the agent's Answers service.

The store tests move an injected wall clock; the service tests run a real agent and a real
gateway on loopback, the agent's link to the gateway through a relay that can stall it,
so a pending answer is seen pending for as long as the test holds the link.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from fake_clock import FakeClock
from stalling_proxy import StallingProxy

from edgecloud.core import codec
from edgecloud.core.errors import InvalidInput, NotFound
from edgecloud.core.tensors import InferRequest
from edgecloud.edge_agent.answers import (
    MAX_WATCH_IDS,
    AnswerLimits,
    AnswerRecord,
    AnswerState,
    AnswerStore,
    new_answer_id,
)
from edgecloud.edge_agent.app import AgentApp
from edgecloud.edge_agent.settings import AgentSettings
from edgecloud.protos.answers.v1 import answers_pb2 as apb
from edgecloud.protos.answers.v1 import answers_pb2_grpc as apb_grpc
from edgecloud.protos.inference import grpc_predict_v2_pb2_grpc as pb_grpc

TASK = "digits"
DAY_S = 86400.0


def _record(clock: FakeClock, state: AnswerState = AnswerState.PENDING) -> AnswerRecord:
    return AnswerRecord(
        answer_id=new_answer_id(), task=TASK, state=state, source="edge",
        answered_by="digits:1", created_at=clock(),
        answered_at=None if state is AnswerState.PENDING else clock(),
        route=("edge", "edge"), better=("pending", "confident"), classes=(3, 7),
        confidence=(0.4, 0.97),
        outputs={"probabilities": np.arange(20, dtype=np.float32).reshape(2, 10) / 20},
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path, clock):
    opened = AnswerStore(tmp_path / "ledger.sqlite3", AnswerLimits(max_answers=5), clock=clock)
    opened.start()
    yield opened
    await opened.aclose()


async def test_a_record_is_found_at_once_and_after_reopening(tmp_path, clock, store):
    """A record is found as soon as it is added (before any write), and, written, is found
    the same by a store opened later on the same file."""
    record = _record(clock, AnswerState.ANSWERED)
    store.add(record)
    assert await store.get(record.answer_id) is record
    assert await store.flush_async() == 1
    again = AnswerStore(tmp_path / "ledger.sqlite3", clock=clock)
    try:
        found = await again.get(record.answer_id)
    finally:
        await again.aclose()
    assert found.to_dict() == record.to_dict()
    np.testing.assert_array_equal(found.outputs["probabilities"],
                                  record.outputs["probabilities"])


async def test_unknown_malformed_and_expired_ids(clock, store):
    """An unknown id is NotFound, a malformed one InvalidInput, and a record past the age
    limit is NotFound, in memory as on disk, and gone from the file after the next write."""
    with pytest.raises(NotFound):
        await store.get(new_answer_id())
    for bad in ("", "xyz", "A" * 32, new_answer_id() + "0", "../../etc/passwd"):
        with pytest.raises(InvalidInput, match="malformed"):
            await store.get(bad)
    old = _record(clock, AnswerState.ANSWERED)
    store.add(old)
    await store.flush_async()
    assert store.count() == 1
    clock.advance(DAY_S + 1)
    with pytest.raises(NotFound):
        await store.get(old.answer_id)
    store.add(_record(clock, AnswerState.ANSWERED))
    await store.flush_async()
    assert store.count() == 1


async def test_the_oldest_answers_go_first_past_the_count(clock, store):
    """With room for five answers, writing seven keeps the newest five."""
    records = [_record(clock, AnswerState.NOT_ESCALATED) for _ in range(7)]
    for record in records:
        store.add(record)
        await store.flush_async()
    assert store.count() == 5
    for record in records[:2]:
        with pytest.raises(NotFound):
            await store.get(record.answer_id)
    for record in records[2:]:
        assert (await store.get(record.answer_id)).answer_id == record.answer_id


async def test_an_answer_left_pending_is_final_when_the_file_is_opened(tmp_path, clock,
                                                                       store):
    """A pending record written by an agent that never stopped cleanly is final
    (cloud_failed, saying why) for the next agent; one that stops cleanly does the same
    to its own pending records."""
    pending = _record(clock)
    store.add(pending)
    await store.flush_async()
    next_agent = AnswerStore(tmp_path / "ledger.sqlite3", clock=clock)
    try:
        found = await next_agent.get(pending.answer_id)
        assert found.state is AnswerState.CLOUD_FAILED and "restarted" in found.detail
        mine = _record(clock)
        next_agent.add(mine)
    finally:
        await next_agent.aclose()
    third = AnswerStore(tmp_path / "ledger.sqlite3", clock=clock)
    try:
        found = await third.get(mine.answer_id)
        assert found.state is AnswerState.CLOUD_FAILED and "stopped" in found.detail
    finally:
        await third.aclose()


async def test_a_reviewer_label_is_the_answer_from_then_on(clock, store):
    """A reviewer's labels (one per row) make the answer final with source reviewer,
    answered by the reviewer; the wrong number of labels, or an unknown id, is refused."""
    record = _record(clock)
    store.add(record)
    clock.advance(5)
    labelled = await store.set_label(record.answer_id, [3, 1], "ana")
    assert (labelled.state, labelled.source, labelled.answered_by) == (
        AnswerState.ANSWERED, "reviewer", "ana")
    assert labelled.labels == (3, 1) and labelled.answered_at == clock()
    assert await store.get(record.answer_id) is labelled
    with pytest.raises(InvalidInput, match="2 rows"):
        await store.set_label(record.answer_id, [3], "ana")
    with pytest.raises(NotFound):
        await store.set_label(new_answer_id(), [3, 1], "ana")


async def test_watch_sends_the_state_then_each_change_until_final(clock, store):
    """Watch sends each record as it stands, then its changes, and ends once all are
    final; a repeated id is followed once; no ids, too many, or an unknown one is refused
    before anything is sent."""
    pending, done = _record(clock), _record(clock, AnswerState.ANSWERED)
    store.add(pending)
    store.add(done)
    watch = store.watch([pending.answer_id, done.answer_id, pending.answer_id])
    first = [await anext(watch), await anext(watch)]
    assert [r.state for r in first] == [AnswerState.PENDING, AnswerState.ANSWERED]
    nxt = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0)
    assert not nxt.done()
    answered = AnswerRecord(**{**{f: getattr(pending, f) for f in pending.__slots__},
                               "state": AnswerState.ANSWERED, "source": "cloud"})
    store.update(answered)
    assert await nxt is answered
    with pytest.raises(StopAsyncIteration):
        await anext(watch)
    for ids, error in (([], InvalidInput), ([new_answer_id()] * 2 + [new_answer_id()], NotFound),
                       ([new_answer_id() for _ in range(MAX_WATCH_IDS + 1)], InvalidInput)):
        with pytest.raises(error):
            await anext(store.watch(ids))


# -- the agent's Answers service, with a real gateway ------------------------------------


def _fast_then_better(x: np.ndarray) -> object:
    """A v2 request asking for the fast answer then a better one, every row escalated."""
    return codec.encode_infer_request(InferRequest(
        model_name=TASK, inputs={"pixels": x}, id="r1",
        parameters={"answer": "fast_then_better", "confidence_threshold": 1.0}))


def _http_get(address: str, answer_id: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/answers/{answer_id}",
                                    timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.e2e
async def test_get_watch_and_http_follow_an_answer_from_pending_to_the_cloud(
        start_gateway, start_agent, tmp_path, digits_test, onnx_reference):
    """With the link to the gateway held, a fast_then_better request is answered at the
    edge with an answer id; Get and GET /v2/answers/{id} say pending and Watch sends
    pending; once the link flows, Watch sends the cloud's answer (the cloud model's outputs,
    answered by digits:1) and ends. Unknown ids are NOT_FOUND (404), malformed ones
    INVALID_ARGUMENT (400). A new agent on the same data folder still has the answer."""
    gateway = await start_gateway()
    proxy = StallingProxy(gateway.address)
    data_dir = tmp_path / "agent-data"
    try:
        agent = await start_agent(await proxy.start(), fleet=False, data_dir=data_dir,
                                  http_listen="127.0.0.1:0")
        x, _ = digits_test
        rows = x[:3]
        proxy.flowing.clear()
        async with grpc.aio.insecure_channel(agent.address) as channel:
            v2 = pb_grpc.GRPCInferenceServiceStub(channel)
            answers = apb_grpc.AnswersStub(channel)
            reply = codec.decode_infer_response(await v2.ModelInfer(_fast_then_better(rows),
                                                                    timeout=10))
            params = reply.parameters
            assert params["route"] == "edge,edge,edge"
            assert params["better"] == "pending,pending,pending"
            np.testing.assert_allclose(reply.outputs["probabilities"],
                                       onnx_reference("edge", rows), rtol=1e-5, atol=1e-6)
            answer_id = params["answer_id"]
            got = await answers.Get(apb.GetAnswerRequest(answer_id=answer_id), timeout=10)
            assert got.state == apb.ANSWER_STATE_PENDING and got.task == TASK
            status, doc = await asyncio.to_thread(_http_get, agent.http_address, answer_id)
            assert status == 200 and doc["state"] == "pending"
            watch = answers.Watch(apb.WatchAnswersRequest(answer_ids=[answer_id]), timeout=30)
            first = await watch.read()
            assert first.state == apb.ANSWER_STATE_PENDING
            proxy.flowing.set()
            second = await watch.read()
            assert second.state == apb.ANSWER_STATE_ANSWERED
            assert (second.source, second.answered_by) == ("cloud", "digits:1")
            assert list(second.route) == ["cloud"] * 3 and second.answered_at > 0
            (out,) = second.outputs
            cloud = np.frombuffer(out.raw, dtype="<f4").reshape(list(out.shape))
            np.testing.assert_allclose(cloud, onnx_reference("cloud", rows), rtol=1e-5,
                                       atol=1e-6)
            assert list(second.classes) == np.argmax(cloud, axis=1).tolist()
            assert await watch.read() is grpc.aio.EOF
            status, doc = await asyncio.to_thread(_http_get, agent.http_address, answer_id)
            assert status == 200 and doc["state"] == "answered"
            np.testing.assert_allclose(np.array(doc["outputs"][0]["data"]), cloud)

            for bad, code, http in ((new_answer_id(), grpc.StatusCode.NOT_FOUND, 404),
                                    ("not-an-id", grpc.StatusCode.INVALID_ARGUMENT, 400)):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await answers.Get(apb.GetAnswerRequest(answer_id=bad), timeout=10)
                assert refused.value.code() == code
                status, doc = await asyncio.to_thread(_http_get, agent.http_address, bad)
                assert status == http and doc["error"]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await anext(aiter(answers.Watch(apb.WatchAnswersRequest(
                    answer_ids=[answer_id, new_answer_id()]), timeout=10)))
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        await agent.stop(grace_s=0.5)
        again = await start_agent(gateway.address, fleet=False, data_dir=data_dir)
        async with grpc.aio.insecure_channel(again.address) as channel:
            kept = await apb_grpc.AnswersStub(channel).Get(
                apb.GetAnswerRequest(answer_id=answer_id), timeout=10)
        assert kept.state == apb.ANSWER_STATE_ANSWERED and kept.answered_by == "digits:1"
        assert kept.outputs[0].raw == second.outputs[0].raw
    finally:
        proxy.flowing.set()
        await proxy.close()


@pytest.mark.e2e
async def test_an_answer_expires_on_the_agents_clock(start_gateway, tmp_path, digits_dir,
                                                     digits_test):
    """An agent whose wall clock is moved past the answers' age limit answers NOT_FOUND
    for an id it gave a moment before (by its clock, a day and a second before)."""
    gateway = await start_gateway()
    clock = FakeClock()
    agent = AgentApp(AgentSettings(
        listen="127.0.0.1:0", gateway=gateway.address, fleet=False,
        data_dir=tmp_path / "agent", models={TASK: digits_dir / "edge.onnx"},
        policies=[digits_dir / "policy.yaml"], agent_id="clocked"), wall_clock=clock)
    await agent.start()
    try:
        x, _ = digits_test
        async with grpc.aio.insecure_channel(agent.address) as channel:
            reply = codec.decode_infer_response(await pb_grpc.GRPCInferenceServiceStub(
                channel).ModelInfer(_fast_then_better(x[:1]), timeout=10))
            answer_id = reply.parameters["answer_id"]
            answers = apb_grpc.AnswersStub(channel)
            got = await answers.Get(apb.GetAnswerRequest(answer_id=answer_id), timeout=10)
            assert got.created_at == clock.now
            clock.advance(DAY_S + 1)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await answers.Get(apb.GetAnswerRequest(answer_id=answer_id), timeout=10)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await agent.stop(grace_s=0.5)
