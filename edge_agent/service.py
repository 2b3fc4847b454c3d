"""The agent's data plane: local model, routing decision, escalation.

For each request: run the task's edge model, score every row, ask the
task's :class:`~router.runtime.Router` for a plan, carry it out (send only
the plan's cloud rows to the gateway within the request's remaining
deadline, start the shadow rows' cloud calls behind the answer), and hand
the outcome back to the router, which says how each row was answered (a
failed escalation keeps the local answer with route ``edge_fallback``),
and hand the rows it marked hard to the hard-example ledger's memory buffer
(an append; the ledger writes them off the request path).
The router owns every routing decision; this module only carries plans out.
Nothing here imports grpc; the v2 servicer in ``core.v2_grpc`` calls
:meth:`EdgeService.infer`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import structlog

from edgecloud.core import __version__
from edgecloud.core.errors import (
    EdgecloudError,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    Unavailable,
)
from edgecloud.core.model import OnnxModel
from edgecloud.core.tensors import (
    InferRequest,
    InferResponse,
    ModelInfo,
    ParamValue,
    requested_outputs,
    signature_mismatch,
)
from edgecloud.edge_agent.escalation import CloudClient
from edgecloud.edge_agent.hard_examples import HardExampleLedger, HardRows
from edgecloud.edge_agent.metrics import AgentMetrics
from edgecloud.edge_agent.shadow_log import ShadowLog
from edgecloud.router import (
    REASONS,
    ROUTES,
    Escalation,
    Policy,
    Reason,
    RequestContext,
    Route,
    RouteOverride,
    Router,
    Routing,
    score_rows,
)

log = structlog.get_logger("edgecloud.agent")

SERVER_NAME = "edgecloud-agent"
METADATA_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class TaskVersion:
    """An edge model and the policy that routes its answers; swapped as one value."""

    model: OnnxModel
    policy: Policy
    scores_output: str
    model_digest: str = ""
    """sha256 of the model file, when known (fleet-delivered or hashed at start)."""
    policy_digest: str = ""
    """sha256 of the policy document, when fleet-delivered."""
    output_names: tuple[str, ...] = ()
    """The model's output names, in order."""


def bind_policy(model: OnnxModel, policy: Policy, model_digest: str = "",
                policy_digest: str = "") -> TaskVersion:
    """Check that ``policy`` can route ``model``'s answers and pair them."""
    names = [spec.name for spec in model.outputs]
    scores_output = policy.scores_output or names[0]
    if scores_output not in names:
        raise FailedPrecondition(
            f"policy {policy.name!r} scores output {scores_output!r}, but model "
            f"{model.name!r} has outputs {', '.join(names)}"
        )
    spec = next(s for s in model.outputs if s.name == scores_output)
    if len(spec.shape) != 2 or spec.datatype not in ("FP16", "FP32", "FP64"):
        raise FailedPrecondition(
            f"output {scores_output!r} of model {model.name!r} is {spec.datatype}"
            f"{list(spec.shape)}; class scores must be a float [N, classes] tensor"
        )
    return TaskVersion(model, policy, scores_output, model_digest, policy_digest,
                       tuple(names))


_ROUTE_NAMES = tuple(route.value for route in ROUTES)
_REASON_NAMES = tuple(reason.value for reason in REASONS)
_HARD_REASONS = frozenset({Reason.LOW_CONFIDENCE, Reason.NO_TIME, Reason.BUDGET_EXHAUSTED,
                           Reason.CLOUD_UNAVAILABLE, Reason.CLOUD_FAILED})
"""Rows kept as hard examples when answered: low confidence, escalated or not (no time,
no budget, no cloud), and rows whose escalation failed. Shadow-sampled rows are kept
when their cloud call ends, with the cloud's answer; confident and forced rows never."""
_IS_HARD = tuple(reason in _HARD_REASONS for reason in REASONS)
_HARD_MASK = np.array(_IS_HARD, dtype=bool)
_FIRST_ROW = np.zeros(1, dtype=np.int64)
_FIRST_ROW.flags.writeable = False
_ANSWERED = np.ones(1, dtype=bool)
_ANSWERED.flags.writeable = False
_CLOUD_CODE = ROUTES.index(Route.CLOUD)
_EDGE_CODE = ROUTES.index(Route.EDGE)
_SAMPLED_CODE = REASONS.index(Reason.SAMPLED)


def hard_rows(reason: np.ndarray) -> np.ndarray | None:
    """Indices of the rows to keep as hard examples, given each row's reason code; None
    when there are none (the usual case, answered without building an array)."""
    if reason.shape[0] == 1:
        return _FIRST_ROW if _IS_HARD[reason[0]] else None
    rows = np.flatnonzero(_HARD_MASK[reason])
    return rows if rows.size else None


class Answer(NamedTuple):
    """Outputs of one request and how each row was answered: an immutable value."""

    task: str
    outputs: dict[str, np.ndarray]
    scores: np.ndarray
    routing: Routing
    model_version: str
    cloud_model_version: str = ""

    def parameters(self) -> dict[str, ParamValue]:
        """Response parameters: ``route``, ``reason`` and ``confidence`` per row.

        One row: the route and reason as strings and the confidence as a
        double. Several rows: each a string of comma-separated values in row
        order, confidences to 6 significant digits.
        """
        routing = self.routing
        if routing.route.shape[0] == 1:
            params: dict[str, ParamValue] = {
                "route": _ROUTE_NAMES[routing.route[0]],
                "reason": _REASON_NAMES[routing.reason[0]],
                "confidence": float(routing.confidence[0]),
            }
        else:
            params = {
                "route": ",".join([_ROUTE_NAMES[c] for c in routing.route.tolist()]),
                "reason": ",".join([_REASON_NAMES[c] for c in routing.reason.tolist()]),
                "confidence": ",".join([f"{v:.6g}" for v in routing.confidence.tolist()]),
            }
        params["model_version"] = self.model_version
        if self.cloud_model_version:
            params["cloud_model_version"] = self.cloud_model_version
        return params


class Task:
    """One named task: the current edge model and policy, and the router that routes it."""

    def __init__(self, name: str, version: TaskVersion, cloud_model: str,
                 router: Router) -> None:
        self.name = name
        self.current = version
        self.cloud_model = cloud_model
        self.router = router
        """Routing state for the current policy; replaced (fresh) when the policy changes."""
        self.cloud_checked: bool = False
        self.run_seconds_per_row: float | None = None
        """Recent edge-model run time per row (moving average), for inline runs."""


_ROUTE_VALUES = frozenset(r.value for r in RouteOverride)


def route_parameters(params: Mapping[str, ParamValue]) -> tuple[RouteOverride, float | None]:
    """The request parameters the router understands (``route``, ``confidence_threshold``)."""
    if not params:
        return RouteOverride.AUTO, None
    route = params.get("route", "auto")
    if not isinstance(route, str) or route not in _ROUTE_VALUES:
        raise InvalidInput(f"parameter 'route' must be auto, edge or cloud (got {route!r})")
    threshold = params.get("confidence_threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise InvalidInput("parameter 'confidence_threshold' must be a number")
        threshold = float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise InvalidInput(
                f"parameter 'confidence_threshold' must be within [0, 1] (got {threshold})"
            )
    return RouteOverride(route), threshold


class EdgeService:
    """Serves tasks to device apps, escalating hard rows to the cloud."""

    server_name = SERVER_NAME
    server_version = __version__

    def __init__(
        self,
        cloud: CloudClient | None,
        *,
        executor_threads: int = 2,
        reply_margin_s: float = 0.002,
        inline_below_s: float = 0.0005,
        shadow_log: ShadowLog | None = None,
        hard_examples: HardExampleLedger | None = None,
        metrics: AgentMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: np.random.Generator | None = None,
    ) -> None:
        self._cloud = cloud
        self._executor = ThreadPoolExecutor(executor_threads, thread_name_prefix="onnx")
        self._reply_margin_s = reply_margin_s
        self._inline_below_s = inline_below_s
        self._shadow_log = shadow_log
        self._hard_examples = hard_examples
        self._metrics = metrics or AgentMetrics()
        self._clock = clock
        self._rng = rng if rng is not None else np.random.default_rng()
        self._tasks: dict[str, Task] = {}
        self._background: set[asyncio.Task] = set()
        self._ready = False

    # -- configuration ---------------------------------------------------

    def add_task(self, model: OnnxModel, policy: Policy, cloud_model: str | None = None) -> Task:
        """Serve ``model`` as task ``model.name`` routed by ``policy``."""
        version = bind_policy(model, policy)
        task = Task(model.name, version, cloud_model or model.name, self._router(policy))
        self._tasks[model.name] = task
        log.info("task_serving", task=task.name, model_version=model.version,
                 policy_version=policy.version, cloud_model=task.cloud_model)
        return task

    def install(self, model: OnnxModel, policy: Policy | None, *, model_digest: str = "",
                policy_digest: str = "", cloud_model: str | None = None) -> Task:
        """Swap a task's model and/or policy atomically, or add the task.

        Requests already running keep the version they started with; the next
        request sees the new one. The new model must have the task's
        signature and the policy must be able to route its outputs, else
        :class:`~core.errors.FailedPrecondition` and nothing changes.
        """
        task = self._tasks.get(model.name)
        if task is None:
            if policy is None:
                raise FailedPrecondition(f"task {model.name!r} has no policy yet")
            task = self.add_task(model, policy, cloud_model)
            task.current = bind_policy(model, policy, model_digest, policy_digest)
            return task
        old = task.current
        problem = signature_mismatch(old.model.inputs, old.model.outputs, model.inputs,
                                     model.outputs)
        if problem is not None:
            raise FailedPrecondition(
                f"model {model.name} version {model.version} does not match the task's "
                f"signature: {problem}"
            )
        new_policy = policy if policy is not None else old.policy
        version = bind_policy(model, new_policy, model_digest,
                              policy_digest if policy is not None else old.policy_digest)
        if policy is not None and (policy_digest != old.policy_digest
                                   or policy.version != old.policy.version):
            task.router = self._router(policy)
        task.current = version
        if model is not old.model:
            task.run_seconds_per_row = None
        log.info("task_swapped", task=task.name, model_version=model.version,
                 policy_version=new_policy.version)
        return task

    def _router(self, policy: Policy) -> Router:
        return Router(policy, clock=self._clock, rng=self._rng, cloud=self._cloud is not None)

    @property
    def metrics(self) -> AgentMetrics:
        """What the agent has done, per task (Prometheus and the fleet status read it)."""
        return self._metrics

    @property
    def hard_examples(self) -> HardExampleLedger | None:
        """Where hard rows are kept for upload, if anywhere."""
        return self._hard_examples

    def tasks(self) -> list[Task]:
        """Every served task."""
        return [self._tasks[name] for name in sorted(self._tasks)]

    def set_ready(self, ready: bool) -> None:
        """Readiness as reported by ServerReady (false while draining)."""
        self._ready = ready

    @property
    def ready(self) -> bool:
        """True when the agent accepts inference requests."""
        return self._ready

    def task(self, name: str) -> Task:
        """The task called ``name``."""
        task = self._tasks.get(name)
        if task is None:
            raise NotFound(f"task {name!r} is not served here")
        return task

    def task_names(self) -> list[str]:
        """Names of the served tasks."""
        return sorted(self._tasks)

    def model_ready(self, name: str, version: str = "") -> bool:
        """True when the task (and edge model version, if given) is serving."""
        task = self._tasks.get(name)
        if task is None or (version and version != task.current.model.version):
            return False
        return self._ready

    def metadata(self, name: str, version: str = "") -> ModelInfo:
        """The task's signature as apps see it: the edge model's."""
        model = self.task(name).current.model
        if version and version != model.version:
            raise NotFound(f"task {name!r} runs version {model.version!r}, not {version!r}")
        return ModelInfo(name, (model.version,), model.platform, model.inputs, model.outputs)

    # -- inference ---------------------------------------------------------

    async def answer(self, request: InferRequest, time_left_s: float | None = None,
                     request_id: str = "") -> Answer:
        """Answer one request, row by row at the edge or in the cloud.

        ``time_left_s`` is the caller's deadline (the policy's default budget
        when None); ``request_id`` travels with any escalation.
        """
        started = self._clock()
        if not self._ready:
            raise Unavailable("agent is not ready (starting or draining)")
        task = self.task(request.model_name)
        try:
            return await self._answer(task, request, started, time_left_s, request_id)
        except EdgecloudError as exc:
            self._metrics.error(task.name, exc.kind.value)
            raise

    async def _answer(self, task: Task, request: InferRequest, started: float,
                      time_left_s: float | None, request_id: str) -> Answer:
        current = task.current  # one snapshot: a swap mid-request does not affect it
        router = task.router
        model, policy = current.model, current.policy
        if request.model_version and request.model_version != model.version:
            raise NotFound(
                f"task {task.name!r} runs version {model.version!r}, "
                f"not {request.model_version!r}"
            )
        route, threshold = route_parameters(request.parameters)
        wanted = requested_outputs(request.requested_outputs, current.output_names,
                                   f"task {task.name!r}")
        if time_left_s is None:
            time_left_s = policy.latency.default_budget_ms / 1000.0
        deadline = started + time_left_s
        inputs = model.validate_inputs(request.inputs)
        outputs = await self._run_local(task, model, inputs)
        edge_scores = outputs[current.scores_output]
        confidence, predicted = score_rows(policy, edge_scores)

        ctx = RequestContext(route, threshold, max(deadline - self._clock(), 0.0))
        plan = router.plan(confidence, predicted, ctx)
        escalation = None
        cloud_version = ""
        if plan.permit:
            escalation, cloud_version = await self._escalate(
                task, current, inputs, outputs, plan.cloud_rows, deadline, request_id)
        routing = router.record(plan, escalation)
        if plan.shadow_rows.size:
            self._shadow(task, current, inputs, edge_scores, plan.shadow_rows, routing)
        if self._hard_examples is not None:
            hard = hard_rows(routing.reason)
            if hard is not None:
                self._keep_hard_rows(task, current, inputs, edge_scores, outputs, routing,
                                     hard, cloud_version)
        self._metrics.observe(task.name, routing, self._clock() - started)
        return Answer(
            task=task.name,
            outputs={name: outputs[name] for name in wanted},
            scores=outputs[current.scores_output],
            routing=routing,
            model_version=model.version,
            cloud_model_version=cloud_version,
        )

    async def infer(
        self, request: InferRequest, time_left_s: float | None = None, request_id: str = ""
    ) -> InferResponse:
        """The v2 data-plane call: :meth:`answer`, with routing in the parameters."""
        answer = await self.answer(request, time_left_s, request_id)
        return InferResponse(
            model_name=answer.task,
            model_version=answer.model_version,
            id=request.id,
            outputs=answer.outputs,
            parameters=answer.parameters(),
        )

    async def _run_local(self, task: Task, model: OnnxModel,
                         inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the edge model: inline when it is cheaper than a thread hand-off.

        A model whose recent runs took less than ``inline_below_s`` runs on
        the event loop (ONNX Runtime would finish before a worker thread even
        woke up); anything slower runs on the worker threads so the loop keeps
        serving other requests. The run time is measured around the model
        alone, never the hand-off or the wait for a worker, so a busy agent
        does not mistake its own queueing for a slow model.
        """
        rows = max(next(iter(inputs.values())).shape[0] if inputs else 1, 1)
        per_row = task.run_seconds_per_row
        if per_row is not None and per_row * rows < self._inline_below_s:
            outputs, took = _timed_run(model, inputs)
        else:
            loop = asyncio.get_running_loop()
            outputs, took = await loop.run_in_executor(self._executor, _timed_run, model, inputs)
        took /= rows
        task.run_seconds_per_row = took if per_row is None else 0.9 * per_row + 0.1 * took
        return outputs

    async def _check_cloud(self, task: Task, model: OnnxModel, timeout_s: float) -> None:
        """Refuse a cloud model whose signature does not match the task's (once)."""
        if task.cloud_checked or self._cloud is None:
            return
        info = await self._cloud.metadata(task.cloud_model, timeout_s)
        problem = signature_mismatch(model.inputs, model.outputs, info.inputs, info.outputs)
        if problem is not None:
            raise FailedPrecondition(
                f"cloud model {task.cloud_model!r} does not match task {task.name!r}: {problem}"
            )
        task.cloud_checked = True

    async def _escalate(
        self,
        task: Task,
        current: TaskVersion,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        rows: np.ndarray,
        deadline: float,
        request_id: str,
    ) -> tuple[Escalation, str]:
        """Send the plan's cloud rows to the gateway; splice the answers into ``outputs``.

        Returns the outcome for the router and the cloud model's version. On
        failure ``outputs`` keeps the edge's answers.
        """
        model = current.model
        all_rows = rows.shape[0] == next(iter(outputs.values())).shape[0]
        sub_inputs = {k: (v if all_rows else v[rows]) for k, v in inputs.items()}
        sent = self._clock()
        try:
            if self._cloud is None:
                raise Unavailable("no gateway configured")
            timeout = deadline - sent - self._reply_margin_s
            if timeout <= 0:
                raise Unavailable("no time left for the cloud")
            await self._check_cloud(task, model, min(timeout, METADATA_TIMEOUT_S))
            timeout = deadline - self._clock() - self._reply_margin_s
            if timeout <= 0:
                raise Unavailable("no time left for the cloud")
            reply = await self._cloud.infer(
                InferRequest(model_name=task.cloud_model, inputs=sub_inputs, id=request_id),
                timeout,
                request_id,
            )
            cloud_outputs = _map_cloud_outputs(model, reply, rows.shape[0])
        except EdgecloudError as exc:
            self._metrics.cloud_failure(task.name, exc.kind.value)
            log.warning("escalation_failed", task=task.name, rows=int(rows.shape[0]),
                        kind=exc.kind.value, error=exc.message, request_id=request_id)
            return Escalation(ok=False), ""
        rtt = self._clock() - sent
        self._metrics.cloud_rtt(task.name, rtt)
        for name, value in cloud_outputs.items():
            value = value.astype(outputs[name].dtype, copy=False)
            if all_rows:
                outputs[name] = value
            else:
                merged = np.array(outputs[name], copy=True)
                merged[rows] = value
                outputs[name] = merged
        return Escalation(ok=True, rtt_s=rtt), reply.model_version

    def _keep_hard_rows(self, task: Task, current: TaskVersion,
                        inputs: dict[str, np.ndarray], edge_scores: np.ndarray,
                        outputs: dict[str, np.ndarray], routing: Routing, rows: np.ndarray,
                        cloud_version: str) -> None:
        """Hand the hard rows to the ledger's buffer (no I/O, no encoding here).

        Indexing with the row numbers copies, so a kept row never holds the
        request's buffer alive.
        """
        assert self._hard_examples is not None
        if rows is _FIRST_ROW:  # a one-row request: its arrays are the row's, no indexing
            route, reason, confidence = routing.route, routing.reason, routing.confidence
            cloud = int(route[0]) == _CLOUD_CODE
            answered = _ANSWERED if cloud else None
            kept_inputs = {name: value.copy() for name, value in inputs.items()}
            edge = edge_scores
            final = np.array(outputs[current.scores_output]) if cloud else None
        else:
            route, reason, confidence = (routing.route[rows], routing.reason[rows],
                                         routing.confidence[rows])
            answered = route == _CLOUD_CODE
            cloud = bool(answered.any())
            kept_inputs = {name: value[rows] for name, value in inputs.items()}
            edge = np.asarray(edge_scores)[rows]
            final = np.asarray(outputs[current.scores_output])[rows] if cloud else None
        self._hard_examples.add(HardRows(
            task.name, current.model.version, current.policy.version, kept_inputs, edge,
            final, answered if cloud else None, route, reason, confidence, cloud_version,
            time.time(),
        ))

    def _shadow(self, task: Task, current: TaskVersion, inputs: dict[str, np.ndarray],
                edge_scores: np.ndarray, rows: np.ndarray, routing: Routing) -> None:
        """Start the cloud call for the plan's shadow rows without delaying the answer."""
        if self._cloud is None:
            return
        sub_inputs = {k: v[rows] for k, v in inputs.items()}
        job = asyncio.create_task(self._shadow_call(task, current, sub_inputs,
                                                    np.asarray(edge_scores)[rows],
                                                    routing.confidence[rows], time.time()))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _shadow_call(self, task: Task, current: TaskVersion,
                           inputs: dict[str, np.ndarray], edge_scores: np.ndarray,
                           confidence: np.ndarray, at: float) -> None:
        assert self._cloud is not None
        edge_pred = np.argmax(edge_scores, axis=1)
        timeout = current.policy.latency.default_budget_ms / 1000.0 * 4
        cloud_scores: np.ndarray | None = None
        cloud_version = ""
        try:
            reply = await self._cloud.infer(
                InferRequest(model_name=task.cloud_model, inputs=inputs), timeout, ""
            )
            cloud = _map_cloud_outputs(current.model, reply, len(edge_pred))
            cloud_scores = np.asarray(cloud[current.scores_output])
            cloud_version = reply.model_version
        except EdgecloudError as exc:
            log.info("shadow_failed", task=task.name, kind=exc.kind.value)
            return
        finally:
            # Kept whatever became of the call (answered, failed, or cancelled by a stop).
            self._keep_shadow_rows(task, current, inputs, edge_scores, confidence,
                                   cloud_scores, cloud_version, at)
        cloud_pred = np.argmax(cloud_scores, axis=1)
        if self._shadow_log is not None:
            await asyncio.to_thread(self._shadow_log.append, task.name, edge_scores,
                                    cloud_scores, current.model.version)
        agree = int(np.sum(cloud_pred == edge_pred))
        self._metrics.shadow(task.name, len(edge_pred), agree)
        log.info("shadow_result", task=task.name, rows=len(edge_pred), agree=agree)

    def _keep_shadow_rows(self, task: Task, current: TaskVersion,
                          inputs: dict[str, np.ndarray], edge_scores: np.ndarray,
                          confidence: np.ndarray, cloud_scores: np.ndarray | None,
                          cloud_version: str, at: float) -> None:
        """Hand shadow-sampled rows to the ledger, with the cloud's answer when it came."""
        if self._hard_examples is None:
            return
        n = len(edge_scores)
        self._hard_examples.add(HardRows(
            task=task.name, model_version=current.model.version,
            policy_version=current.policy.version, inputs=inputs, edge_scores=edge_scores,
            cloud_scores=cloud_scores,
            cloud_answered=np.ones(n, dtype=bool) if cloud_scores is not None else None,
            route=np.full(n, _EDGE_CODE, dtype=np.uint8),
            reason=np.full(n, _SAMPLED_CODE, dtype=np.uint8), confidence=confidence,
            cloud_model_version=cloud_version, at=at,
        ))

    async def aclose(self) -> None:
        """Cancel shadow calls, stop worker threads, close the cloud client."""
        for job in list(self._background):
            job.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._cloud is not None:
            await self._cloud.aclose()
        self._executor.shutdown(wait=True, cancel_futures=True)


def _timed_run(model: OnnxModel, inputs: dict[str, np.ndarray]
               ) -> tuple[dict[str, np.ndarray], float]:
    """Run the model on checked inputs; returns the outputs and the seconds the run took."""
    started = time.perf_counter()
    outputs = model.run(inputs, validated=True)
    return outputs, time.perf_counter() - started


def _map_cloud_outputs(model: OnnxModel, reply: InferResponse, rows: int) -> dict[str, np.ndarray]:
    """Put the cloud's outputs under the edge model's names, by position."""
    cloud_values = list(reply.outputs.values())
    if len(cloud_values) != len(model.outputs):
        raise FailedPrecondition(
            f"cloud answered {len(cloud_values)} outputs; the task has {len(model.outputs)}"
        )
    mapped = {}
    for spec, value in zip(model.outputs, cloud_values, strict=True):
        value = np.asarray(value)
        if value.ndim != len(spec.shape) or value.shape[0] != rows:
            raise FailedPrecondition(
                f"cloud output for {spec.name!r} has shape {list(value.shape)}; "
                f"expected {rows} rows of {list(spec.shape[1:])}"
            )
        mapped[spec.name] = value
    return mapped
