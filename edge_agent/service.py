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

A request with the parameter ``answer=fast_then_better`` asks for a fast answer
then a better one: the router plans the rows it escalates behind the answer
(``plan.later_rows``), the answer returns as soon as the edge model has
answered, with an ``answer_id`` and a per-row ``better`` parameter, and a
background task this service owns (drained on stop) asks the cloud, writes
the outcome to the answer's record (:mod:`edge_agent.answers`), and resolves
the response's ``update`` (a stream sends it as a later message).

The gateway's model of each task is checked when the agent connects, never
on a request: :meth:`EdgeService.start` compares it with the task's edge
model (input names and types, output count, classes) and checks again
whenever the connection to the gateway is re-established. A task whose cloud
model does not match is refused escalation (one ``cloud_refused`` log line,
the reason in metrics and in the status report); its rows are answered at
the edge with reason ``cloud_unavailable`` until a later check passes.
"""

from __future__ import annotations

import asyncio
import functools
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
from edgecloud.core.model import OnnxModel, RunTimer
from edgecloud.core.tensors import (
    InferRequest,
    InferResponse,
    ModelInfo,
    ParamValue,
    TensorSpec,
    class_scores_output,
    requested_outputs,
    signature_mismatch,
)
from edgecloud.edge_agent.answers import (
    AnswerRecord,
    AnswerState,
    AnswerStore,
    new_answer_id,
    numeric_outputs,
)
from edgecloud.edge_agent.escalation import CloudClient
from edgecloud.edge_agent.hard_examples import HardExampleLedger, HardRows
from edgecloud.edge_agent.metrics import AgentMetrics
from edgecloud.edge_agent.shadow_log import ShadowLog
from edgecloud.router import (
    BETTER,
    REASONS,
    ROUTES,
    Escalation,
    Plan,
    Policy,
    Reason,
    RequestContext,
    Route,
    RouteOverride,
    Router,
    Routing,
    better_codes,
    review_rows,
    score_rows,
)

log = structlog.get_logger("edgecloud.agent")

SERVER_NAME = "edgecloud-agent"
METADATA_TIMEOUT_S = 2.0
"""Longest wait for the gateway's description of a cloud model."""
CLOUD_RECHECK_S = 30.0
"""While a task's cloud model is refused or unchecked, how often it is checked again."""
ANSWER_PARAM = "answer"
"""Request parameter: ``fast_then_better`` asks for the edge answer at once and the cloud's
answer to the rows the router escalates later, by id; any other value, or none, answers
as usual."""
FAST_THEN_BETTER = "fast_then_better"
UPDATE_PARAM = "update"
"""Response parameter (true) of the later, better answer to a request (a stream sends it
as a further message with the request's ``id``)."""
BETTER_TIMEOUT_S = 10.0
"""Longest wait for the cloud's answer to rows escalated behind the answer."""


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
                policy_digest: str = "", *, scores_output: str | None = None) -> TaskVersion:
    """Check that ``policy`` can route ``model``'s answers and pair them.

    The class scores are read from the policy's ``scores_output``, else from
    ``scores_output`` (the agent's ``--scores-output`` for the task), else
    from the model's one float ``[N, classes]`` output;
    :class:`~core.errors.FailedPrecondition` names the outputs found when
    none fits.
    """
    chosen = class_scores_output(
        model.outputs, policy.scores_output or scores_output,
        owner=f"model {model.name!r} version {model.version}", skipped=model.skipped_outputs,
    )
    return TaskVersion(model, policy, chosen, model_digest, policy_digest,
                       tuple(spec.name for spec in model.outputs))


@dataclass(frozen=True, slots=True)
class CloudProblem:
    """Why a task's escalation is refused: the gateway's model cannot answer for it."""

    kind: str
    """``not_served`` (the gateway has no model of that name) or ``mismatch``."""
    message: str
    """What is wrong and what to change, for logs and the status report."""


def cloud_problem(model: OnnxModel, cloud_model: str, info: ModelInfo) -> CloudProblem | None:
    """Why the gateway's ``cloud_model`` (described by ``info``) cannot answer for ``model``.

    The cloud model must take the edge model's inputs (names, datatypes,
    shapes) and give as many outputs, matching by position in datatype and
    shape, so it scores the same classes. None when it does.
    """
    problem = signature_mismatch(model.inputs, model.outputs, info.inputs, info.outputs,
                                 a="the edge model", b=f"the gateway's model {cloud_model!r}")
    return None if problem is None else CloudProblem("mismatch", problem)


_ROUTE_NAMES = tuple(route.value for route in ROUTES)
_REASON_NAMES = tuple(reason.value for reason in REASONS)
_BETTER_NAMES = tuple(better.value for better in BETTER)
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
    answer_id: str = ""
    """The id of the better answer, for a request that asked for one."""
    better: tuple[str, ...] = ()
    """Per row, for such a request: whether a better answer comes (``router.Better``)."""
    update: asyncio.Future[InferResponse] | None = None
    """Resolves to the better answer's response once the cloud answered (or failed)."""

    def parameters(self) -> dict[str, ParamValue]:
        """Response parameters: ``route``, ``reason`` and ``confidence`` per row.

        All three are strings whatever the number of rows, so a client reads
        them one way: one comma-separated entry per row, in row order (a
        single entry for one row), confidences to 6 significant digits.
        """
        routing = self.routing
        if routing.route.shape[0] == 1:
            params: dict[str, ParamValue] = {
                "route": _ROUTE_NAMES[routing.route[0]],
                "reason": _REASON_NAMES[routing.reason[0]],
                "confidence": f"{routing.confidence.item(0):.6g}",
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
        if self.answer_id:
            params["answer_id"] = self.answer_id
            params["better"] = ",".join(self.better)
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
        """True once the gateway's model has been compared with the task's (either way)."""
        self.cloud_problem: CloudProblem | None = None
        """Why escalation is refused, when the gateway's model does not fit the task."""
        self.run_timer = RunTimer(version.model, validated=True)
        """The current edge model's recent run time, for inline runs."""


_ROUTE_VALUES = frozenset(r.value for r in RouteOverride)


def route_parameters(params: Mapping[str, ParamValue]
                     ) -> tuple[RouteOverride, float | None, bool]:
    """The request parameters the router understands (``route``, ``confidence_threshold``,
    and whether ``answer`` asks for a fast answer then a better one)."""
    if not params:
        return RouteOverride.AUTO, None, False
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
    better = params.get(ANSWER_PARAM) == FAST_THEN_BETTER
    if better and route == RouteOverride.EDGE:
        raise InvalidInput(f"parameter '{ANSWER_PARAM}={FAST_THEN_BETTER}' asks for the "
                           "cloud's answer: it cannot go with route=edge")
    return RouteOverride(route), threshold, better


class EdgeService:
    """Serves tasks to device apps, escalating hard rows to the cloud."""

    server_name = SERVER_NAME
    server_version = __version__

    def __init__(
        self,
        cloud: CloudClient | None,
        *,
        executor_threads: int = 2,
        reply_margin_s: float = 0.005,
        reply_share: float = 0.1,
        inline_below_s: float = 0.0005,
        shadow_log: ShadowLog | None = None,
        hard_examples: HardExampleLedger | None = None,
        metrics: AgentMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: np.random.Generator | None = None,
        scores_outputs: Mapping[str, str] | None = None,
        cloud_recheck_s: float = CLOUD_RECHECK_S,
        max_escalation_rows: int = 256,
        answers: AnswerStore | None = None,
        better_timeout_s: float = BETTER_TIMEOUT_S,
        drain_s: float = 5.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._cloud = cloud
        self._answers = answers
        self._better_timeout_s = better_timeout_s
        self._drain_s = drain_s
        self._wall_clock = wall_clock
        self._better_jobs: set[asyncio.Task] = set()
        self._max_escalation_rows = max_escalation_rows
        self._scores_outputs = dict(scores_outputs or {})
        self._cloud_recheck_s = cloud_recheck_s
        self._recheck: asyncio.Event | None = None
        self._cloud_watch: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(executor_threads, thread_name_prefix="onnx")
        self._reply_margin_s = reply_margin_s
        self._reply_share = reply_share
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

    def bind(self, model: OnnxModel, policy: Policy, model_digest: str = "",
             policy_digest: str = "") -> TaskVersion:
        """:func:`bind_policy` with the task's configured scores output, if any."""
        return bind_policy(model, policy, model_digest, policy_digest,
                           scores_output=self._scores_outputs.get(model.name))

    def add_task(self, model: OnnxModel, policy: Policy, cloud_model: str | None = None) -> Task:
        """Serve ``model`` as task ``model.name`` routed by ``policy``."""
        version = self.bind(model, policy)
        task = Task(model.name, version, cloud_model or model.name, self._router(policy))
        self._tasks[model.name] = task
        chosen_by = ("policy" if policy.scores_output else "setting"
                     if model.name in self._scores_outputs else "automatic")
        log.info("task_serving", task=task.name, model_version=model.version,
                 policy_version=policy.version, cloud_model=task.cloud_model,
                 scores_output=version.scores_output, scores_output_from=chosen_by)
        self._request_cloud_check(task)
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
            task.current = self.bind(model, policy, model_digest, policy_digest)
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
        version = self.bind(model, new_policy, model_digest,
                            policy_digest if policy is not None else old.policy_digest)
        if policy is not None and (policy_digest != old.policy_digest
                                   or policy.version != old.policy.version):
            task.router = self._router(policy, cloud=task.router.cloud)
        task.current = version
        if model is not old.model:
            task.run_timer = RunTimer(model, validated=True)
            self._request_cloud_check(task)
        log.info("task_swapped", task=task.name, model_version=model.version,
                 policy_version=new_policy.version)
        return task

    def _router(self, policy: Policy, cloud: bool = True) -> Router:
        return Router(policy, clock=self._clock, rng=self._rng,
                      cloud=cloud and self._cloud is not None)

    # -- the cloud model of each task ---------------------------------------

    async def start(self) -> None:
        """Check every task's cloud model, then again whenever the gateway reconnects.

        The first check is awaited (each call bounded by
        :data:`METADATA_TIMEOUT_S`); a gateway that cannot be reached leaves
        the tasks unchecked, escalating as usual, and they are checked as
        soon as it answers. Runs inside the event loop; :meth:`aclose` stops it.
        """
        if self._cloud is None or self._cloud_watch is not None:
            return
        self._recheck = asyncio.Event()
        await self.check_cloud()
        self._cloud_watch = asyncio.create_task(self._watch_cloud(), name="cloud-check")

    async def check_cloud(self, timeout_s: float = METADATA_TIMEOUT_S) -> None:
        """Compare each task's edge model with the gateway's; refuse escalation on a mismatch."""
        if self._cloud is None:
            return
        await asyncio.gather(*(self._check_cloud(task, timeout_s) for task in self.tasks()))

    async def _check_cloud(self, task: Task, timeout_s: float) -> None:
        assert self._cloud is not None
        current = task.current
        try:
            info = await self._cloud.metadata(task.cloud_model, timeout_s)
        except NotFound:
            problem: CloudProblem | None = CloudProblem(
                "not_served", f"the gateway serves no model {task.cloud_model!r}")
        except EdgecloudError as exc:
            log.info("cloud_check_deferred", task=task.name, cloud_model=task.cloud_model,
                     kind=exc.kind.value, error=exc.message)
            return
        else:
            problem = cloud_problem(current.model, task.cloud_model, info)
        if task.current is not current:  # swapped while the gateway answered
            self._request_cloud_check(task)
            return
        task.cloud_checked = True
        self._set_cloud_problem(task, problem)

    def _set_cloud_problem(self, task: Task, problem: CloudProblem | None) -> None:
        previous, task.cloud_problem = task.cloud_problem, problem
        task.router.cloud = problem is None
        self._metrics.cloud_refused(task.name, problem.kind if problem else None)
        if problem is not None and problem != previous:
            log.error("cloud_refused", task=task.name, cloud_model=task.cloud_model,
                      problem=problem.message,
                      detail="rows this task would escalate are answered at the edge "
                      "(reason cloud_unavailable) until the gateway's model matches")
        elif problem is None and previous is not None:
            log.info("cloud_accepted", task=task.name, cloud_model=task.cloud_model)

    def _request_cloud_check(self, task: Task) -> None:
        """Have the watcher check ``task``'s cloud model soon (no-op before :meth:`start`)."""
        task.cloud_checked = False
        if self._recheck is not None:
            self._recheck.set()

    async def _watch_cloud(self) -> None:
        """Check again on every reconnection, on request, and often while a task is not clear.

        A reconnection is also news for every task's router: an open breaker
        probes the gateway at once instead of waiting out its backoff.
        """
        assert self._cloud is not None and self._recheck is not None
        while True:
            unsettled = any(not t.cloud_checked or t.cloud_problem is not None
                            for t in self._tasks.values())
            reconnected = asyncio.ensure_future(self._cloud.reconnected())
            waiters = [reconnected, asyncio.ensure_future(self._recheck.wait())]
            try:
                await asyncio.wait(waiters, timeout=self._cloud_recheck_s if unsettled else None,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
            if (reconnected.done() and not reconnected.cancelled()
                    and reconnected.exception() is None):
                log.info("cloud_reconnected")
                for task in self._tasks.values():
                    task.router.cloud_reconnected()
            self._recheck.clear()
            try:
                await self.check_cloud()
            except Exception:  # keep watching; the next event tries again
                log.exception("cloud_check_failed")

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
        route, threshold, better = route_parameters(request.parameters)
        if better and self._answers is None:
            raise FailedPrecondition(f"this agent keeps no answers: parameter "
                                     f"'{ANSWER_PARAM}={FAST_THEN_BETTER}' is not served")
        wanted = requested_outputs(request.requested_outputs, current.output_names,
                                   f"task {task.name!r}")
        if time_left_s is None:
            time_left_s = policy.latency.default_budget_ms / 1000.0
        # The cloud gets the budget less what answering locally after it may take.
        cloud_deadline = started + time_left_s - max(self._reply_margin_s,
                                                      self._reply_share * time_left_s)
        inputs = model.validate_inputs(request.inputs)
        outputs = await self._run_local(task, model, inputs)
        edge_scores = outputs[current.scores_output]
        confidence, predicted = score_rows(policy, edge_scores)

        ctx = RequestContext(route, threshold, max(cloud_deadline - self._clock(), 0.0), better)
        plan = router.plan(confidence, predicted, ctx)
        escalation = None
        cloud_version = ""
        later = plan.later_rows.size > 0
        if plan.permit and not later:
            escalation, cloud_version = await self._escalate(
                task, current, inputs, outputs, plan.cloud_rows, cloud_deadline, request_id)
        routing = router.record(plan, escalation)
        if plan.shadow_rows.size:
            self._shadow(task, current, inputs, edge_scores, plan.shadow_rows, routing)
        if self._hard_examples is not None and not later:  # later rows: kept when answered
            hard = hard_rows(routing.reason)
            if hard is not None:
                self._keep_hard_rows(task, current, inputs, edge_scores, outputs, routing,
                                     hard, cloud_version)
        if not later:  # rows escalated behind the answer are counted once they are answered
            self._metrics.observe(task.name, routing, self._clock() - started)
        answer = Answer(
            task=task.name,
            outputs={name: outputs[name] for name in wanted},
            scores=outputs[current.scores_output],
            routing=routing,
            model_version=model.version,
            cloud_model_version=cloud_version,
        )
        if better:
            answer = self._better(task, current, router, plan, routing, inputs, outputs,
                                  edge_scores, predicted, wanted, request.id, request_id, answer,
                                  self._clock() - started)
        return answer

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
            update=answer.update,
        )

    # -- a fast answer, then a better one ---------------------------------------------

    @property
    def answers(self) -> AnswerStore | None:
        """Where better answers are kept, if anywhere."""
        return self._answers

    def _better(self, task: Task, current: TaskVersion, router: Router, plan: Plan,
                routing: Routing, inputs: dict[str, np.ndarray],
                outputs: dict[str, np.ndarray], edge_scores: np.ndarray,
                predicted: np.ndarray, wanted: list[str], message_id: str, request_id: str,
                answer: Answer, took_s: float) -> Answer:
        """Keep the answer's record and start the escalation of its later rows.

        No I/O: the record is kept in memory (written by the store's flush), and
        the escalation runs in a task this service owns.
        """
        assert self._answers is not None
        better = tuple(_BETTER_NAMES[code] for code in better_codes(plan).tolist())
        now = self._wall_clock()
        later = bool(plan.later_rows.size)
        record = AnswerRecord(
            answer_id=new_answer_id(), task=task.name,
            state=AnswerState.PENDING if later else AnswerState.NOT_ESCALATED,
            source="edge", answered_by=f"{task.name}:{current.model.version}",
            created_at=now, answered_at=None if later else now,
            route=tuple(_ROUTE_NAMES[c] for c in routing.route.tolist()), better=better,
            classes=tuple(int(c) for c in np.asarray(predicted).tolist()),
            confidence=tuple(routing.confidence.tolist()),
            outputs=numeric_outputs(answer.outputs),
            detail="" if later else "no row was escalated: the edge answer stands",
        )
        self._answers.add(record)
        update: asyncio.Future[InferResponse] | None = None
        if not later:
            self._metrics.better_answer(task.name, record.state.value)
        else:
            update = asyncio.get_running_loop().create_future()
            job = asyncio.create_task(self._better_call(
                task, current, router, plan, routing, inputs, dict(outputs), edge_scores,
                wanted, message_id, request_id, record, update, took_s))
            self._better_jobs.add(job)
            job.add_done_callback(self._better_jobs.discard)
        return answer._replace(answer_id=record.answer_id, better=better, update=update)

    async def _better_call(self, task: Task, current: TaskVersion, router: Router, plan: Plan,
                           routing: Routing, inputs: dict[str, np.ndarray],
                           outputs: dict[str, np.ndarray], edge_scores: np.ndarray,
                           wanted: list[str], message_id: str, request_id: str,
                           record: AnswerRecord, update: asyncio.Future[InferResponse],
                           took_s: float) -> None:
        """Escalate the later rows; write the outcome to the record and resolve ``update``.

        The request is counted now, with each row's final route and the fast answer's
        latency (``took_s``).
        """
        assert self._answers is not None
        escalation, cloud_version = Escalation(ok=False), ""
        detail = "the cloud did not answer: the edge answer stands"
        try:
            deadline = self._clock() + self._better_timeout_s
            escalation, cloud_version = await self._escalate(
                task, current, inputs, outputs, plan.later_rows, deadline, request_id)
        except asyncio.CancelledError:
            detail = "the agent stopped before the cloud answered"
            raise
        except Exception:  # settled below all the same: never pending forever
            log.exception("better_answer_crashed", task=task.name, request_id=request_id)
        finally:
            final = router.record_later(plan, routing, escalation)
            self._metrics.observe(task.name, final, took_s)
            self._settle(task, current, inputs, edge_scores, outputs, final, wanted,
                         message_id, record, update, cloud_version if escalation.ok else "",
                         detail)

    def _settle(self, task: Task, current: TaskVersion, inputs: dict[str, np.ndarray],
                edge_scores: np.ndarray, outputs: dict[str, np.ndarray], final: Routing,
                wanted: list[str], message_id: str, record: AnswerRecord,
                update: asyncio.Future[InferResponse], cloud_version: str,
                detail: str) -> None:
        assert self._answers is not None
        model = current.model
        confidence, classes = score_rows(current.policy, outputs[current.scores_output])
        answered = bool(cloud_version)
        kept = {name: outputs[name] for name in wanted}
        state = AnswerState.ANSWERED if answered else AnswerState.CLOUD_FAILED
        self._metrics.better_answer(task.name, state.value)
        self._answers.update(AnswerRecord(
            answer_id=record.answer_id, task=record.task,
            state=state, source="cloud" if answered else "edge",
            answered_by=(f"{task.cloud_model}:{cloud_version}" if answered
                         else record.answered_by),
            created_at=record.created_at, answered_at=self._wall_clock(),
            route=tuple(_ROUTE_NAMES[c] for c in final.route.tolist()), better=record.better,
            classes=tuple(int(c) for c in np.asarray(classes).tolist()),
            confidence=tuple(float(c) for c in np.asarray(confidence).tolist()),
            outputs=numeric_outputs(kept), detail="" if answered else detail,
        ))
        if self._hard_examples is not None:
            hard = hard_rows(final.reason)
            if hard is not None:
                self._keep_hard_rows(task, current, inputs, edge_scores, outputs, final, hard,
                                     cloud_version, record.answer_id)
        params = Answer(task.name, kept, outputs[current.scores_output],
                        Routing(final.route, final.reason, np.asarray(confidence)),
                        model.version, cloud_version, record.answer_id,
                        record.better).parameters()
        params[UPDATE_PARAM] = True
        if not update.done():
            update.set_result(InferResponse(model_name=task.name, outputs=kept,
                                            model_version=model.version, id=message_id,
                                            parameters=params))

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
        timer = task.run_timer
        if timer.model is not model:  # swapped while this request began: run it untimed
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(model.run, inputs, validated=True))
        rows = next(iter(inputs.values())).shape[0] if inputs else 1
        if timer.expects_below(rows, self._inline_below_s):
            return timer.run(inputs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, timer.run,
                                                                inputs)

    async def _escalate(
        self,
        task: Task,
        current: TaskVersion,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
        rows: np.ndarray,
        cloud_deadline: float,
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
            timeout = cloud_deadline - sent
            if timeout <= 0:
                raise Unavailable("no time left for the cloud")
            count = int(rows.shape[0])
            if count <= self._max_escalation_rows:
                reply = await self._cloud.infer(
                    InferRequest(model_name=task.cloud_model, inputs=sub_inputs, id=request_id),
                    timeout,
                    request_id,
                )
                cloud_outputs = _map_cloud_outputs(model, reply, count, outputs)
                cloud_version = reply.model_version
            else:
                cloud_outputs, cloud_version = await self._escalate_in_parts(
                    task, model, sub_inputs, count, outputs, timeout, request_id)
        except EdgecloudError as exc:
            if isinstance(exc, FailedPrecondition):  # the gateway's model changed: look again
                self._request_cloud_check(task)
            self._metrics.cloud_failure(task.name, exc.kind.value, int(rows.shape[0]))
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
        return Escalation(ok=True, rtt_s=rtt), cloud_version

    async def _escalate_in_parts(
        self, task: Task, model: OnnxModel, inputs: dict[str, np.ndarray], count: int,
        outputs: dict[str, np.ndarray], timeout_s: float, request_id: str,
    ) -> tuple[dict[str, np.ndarray], str]:
        """Send ``count`` rows as parts of at most max_escalation_rows, all at once; the
        answers joined in order (any part failing fails the whole)."""
        assert self._cloud is not None
        size = self._max_escalation_rows
        starts = range(0, count, size)
        replies = await asyncio.gather(*(
            self._cloud.infer(
                InferRequest(model_name=task.cloud_model,
                             inputs={k: v[start:start + size] for k, v in inputs.items()},
                             id=request_id),
                timeout_s, request_id)
            for start in starts))
        parts = [_map_cloud_outputs(model, reply, min(size, count - start), outputs)
                 for start, reply in zip(starts, replies, strict=True)]
        joined = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        return joined, replies[0].model_version

    def _keep_hard_rows(self, task: Task, current: TaskVersion,
                        inputs: dict[str, np.ndarray], edge_scores: np.ndarray,
                        outputs: dict[str, np.ndarray], routing: Routing, rows: np.ndarray,
                        cloud_version: str, answer_id: str = "") -> None:
        """Hand the hard rows to the ledger's buffer (no I/O, no encoding here).

        Indexing with the row numbers copies, so a kept row never holds the
        request's buffer alive. Rows the cloud answered less surely than the
        policy's ``review_threshold`` are marked for the human review queue (the
        router says which), with ``answer_id`` when the app asked for a better answer.
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
        review = (review_rows(current.policy, final, answered)
                  if final is not None and current.policy.review_threshold is not None
                  else None)
        self._hard_examples.add(HardRows(
            task.name, current.model.version, current.policy.version, kept_inputs, edge,
            final, answered if cloud else None, route, reason, confidence, cloud_version,
            time.time(), review, answer_id, None if rows is _FIRST_ROW else rows,
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
        """Stop checking the cloud, give better answers up to ``drain_s`` to come, cancel
        them and shadow calls, stop worker threads, close the client."""
        if self._cloud_watch is not None:
            self._cloud_watch.cancel()
            await asyncio.gather(self._cloud_watch, return_exceptions=True)
            self._cloud_watch = None
        if self._better_jobs:
            await asyncio.wait(set(self._better_jobs), timeout=self._drain_s)
            for job in list(self._better_jobs):
                job.cancel()
            await asyncio.gather(*self._better_jobs, return_exceptions=True)
        for job in list(self._background):
            job.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._cloud is not None:
            await self._cloud.aclose()
        self._executor.shutdown(wait=True, cancel_futures=True)


def _map_cloud_outputs(model: OnnxModel, reply: InferResponse, rows: int,
                       edge: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Put the cloud's outputs under the edge model's names, by position.

    Each must have ``rows`` rows of the edge output's row shape (``edge``'s
    arrays when given, else the fixed dimensions of the signature), so the
    answers can replace the edge's; FailedPrecondition otherwise.
    """
    cloud_values = list(reply.outputs.values())
    if len(cloud_values) != len(model.outputs):
        raise FailedPrecondition(
            f"cloud answered {len(cloud_values)} outputs; the task has {len(model.outputs)}"
        )
    mapped = {}
    for spec, value in zip(model.outputs, cloud_values, strict=True):
        value = np.asarray(value)
        if value.ndim != len(spec.shape) or value.shape[0] != rows or not _same_row_shape(
                spec, value.shape, None if edge is None else edge[spec.name].shape):
            raise FailedPrecondition(
                f"cloud output for {spec.name!r} has shape {list(value.shape)}; "
                f"expected {rows} rows of {list(spec.shape[1:])}"
            )
        mapped[spec.name] = value
    return mapped


def _same_row_shape(spec: TensorSpec, got: tuple[int, ...],
                    edge: tuple[int, ...] | None) -> bool:
    if edge is not None:
        return got[1:] == edge[1:]
    return all(want < 0 or want == dim for want, dim in zip(spec.shape[1:], got[1:],
                                                            strict=True))
