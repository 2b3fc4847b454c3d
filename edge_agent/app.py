"""Wiring of the agent process: tasks, cloud client, local v2 server, metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import Callable

import numpy as np
import structlog
from aiohttp import web

from edgecloud.core import v2_grpc, v2_http
from edgecloud.core.artifacts import sha256_file
from edgecloud.core.auth import is_loopback, read_token
from edgecloud.core.errors import InvalidInput
from edgecloud.core.grpc_server import ServerOptions, create_server, split_host_port
from edgecloud.core.process import ServingApp, run_until_signal
from edgecloud.core.signing import load_public_key
from edgecloud.core.targets import parse_target
from edgecloud.core.tls import channel_credentials
from edgecloud.edge_agent import answers_http
from edgecloud.edge_agent.answers import AnswerLimits, AnswerStore
from edgecloud.edge_agent.grpc import answers_servicer
from edgecloud.edge_agent.grpc.cloud_client import GrpcCloudClient
from edgecloud.edge_agent.grpc.examples_client import HardExampleUploader
from edgecloud.edge_agent.grpc.fleet_client import FleetClient
from edgecloud.edge_agent.grpc.labels_client import LabelWatcher
from edgecloud.edge_agent.hard_examples import HardExampleLedger, LedgerLimits
from edgecloud.edge_agent.metrics import AgentMetrics
from edgecloud.edge_agent.model_manager import ArtifactStore, ModelManager
from edgecloud.edge_agent.policy_watch import PolicyWatcher
from edgecloud.edge_agent.service import EdgeService
from edgecloud.edge_agent.settings import AgentSettings
from edgecloud.edge_agent.shadow_log import ShadowLog
from edgecloud.edge_agent.tasks import load_tasks

log = structlog.get_logger("edgecloud.agent")

FLEET_HEALTH = "edgecloud.fleet"
"""Health-check name of the agent's link to the fleet: SERVING while its assignment stream
is open, NOT_SERVING while it connects or the gateway refuses it."""


def gateway_credentials(settings: AgentSettings):
    """TLS credentials for the gateway link, or None for plaintext."""
    if settings.tls_ca is None and settings.tls_cert is None:
        return None
    return channel_credentials(settings.tls_ca, settings.tls_cert, settings.tls_key)


def warn_if_token_travels_in_plaintext(settings: AgentSettings) -> bool:
    """Log a loud warning when the agent sends its token without TLS to a gateway on
    another machine; True when it did."""
    tls = settings.tls_ca is not None or settings.tls_cert is not None
    if not settings.gateway or settings.token_file is None or tls:
        return False
    if all(is_loopback(host) for host in parse_target(settings.gateway).hosts):
        return False
    log.warning("tokens_over_plaintext", gateway=settings.gateway,
                detail="this agent's bearer token travels unencrypted to the gateway: anyone "
                "on the path can read it and act as this agent. Set tls_ca (the CA of the "
                "gateway's certificate)")
    return True


def open_ledger(settings: AgentSettings) -> HardExampleLedger | None:
    """The hard-example ledger, when the agent keeps hard examples (it has a gateway)."""
    if not (settings.gateway and settings.upload_hard_examples):
        return None
    h = settings.hard_examples
    return HardExampleLedger(
        settings.data_dir / "hard" / "ledger.sqlite3", settings.agent_id,
        LedgerLimits(max_bytes=h.max_bytes, max_age_s=h.max_age_s,
                     max_record_bytes=h.max_record_bytes,
                     max_buffered_bytes=h.max_buffered_bytes,
                     flush_interval_s=h.flush_interval_s),
    )


def open_answers(settings: AgentSettings, clock: Callable[[], float] = time.time
                 ) -> AnswerStore:
    """The better answers by id, in the hard-example ledger's file (blocking)."""
    a = settings.answers
    return AnswerStore(settings.data_dir / "hard" / "ledger.sqlite3",
                       AnswerLimits(max_answers=a.max_answers, max_age_s=a.max_age_s,
                                    flush_interval_s=a.flush_interval_s), clock=clock)


def build_service(settings: AgentSettings, metrics: AgentMetrics | None = None,
                  hard_examples: HardExampleLedger | None = None,
                  answers: AnswerStore | None = None,
                  wall_clock: Callable[[], float] = time.time) -> EdgeService:
    """The agent's data plane with its tasks loaded (must run inside the event loop).

    Hard rows go to ``hard_examples`` when given (the running agent's ledger), better
    answers to ``answers``.
    """
    if settings.gateway:
        parse_target(settings.gateway)
    if settings.http_listen:
        split_host_port(settings.http_listen)
    tasks = load_tasks(settings.models, settings.policies, settings.onnx_threads)
    token = read_token(settings.token_file)
    cloud = (
        GrpcCloudClient(settings.gateway, max_message_bytes=settings.max_request_bytes + 2**20,
                        token=token, credentials=gateway_credentials(settings))
        if settings.gateway
        else None
    )
    service = EdgeService(
        cloud,
        executor_threads=settings.executor_threads,
        reply_margin_s=settings.reply_margin_ms / 1000.0,
        reply_share=settings.reply_share,
        inline_below_s=settings.inline_run_below_ms / 1000.0,
        shadow_log=ShadowLog(settings.data_dir / "shadow"),
        hard_examples=hard_examples,
        metrics=metrics,
        rng=np.random.default_rng(settings.shadow_seed),
        scores_outputs=settings.scores_outputs,
        cloud_recheck_s=settings.cloud_recheck_s,
        max_escalation_rows=settings.max_escalation_rows,
        answers=answers,
        better_timeout_s=settings.answers.cloud_timeout_s,
        drain_s=settings.drain_grace_s,
        wall_clock=wall_clock,
    )
    for model, policy in tasks:
        task = service.add_task(model, policy, settings.cloud_models.get(model.name))
        digest, _ = sha256_file(settings.models[model.name])
        task.current = dataclasses.replace(task.current, model_digest=digest)
    return service


class AgentApp(ServingApp):
    """One agent process, startable in-process (tests) or from the CLI."""

    kind = "agent"

    def __init__(self, settings: AgentSettings, *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """``wall_clock``: the time answers are stamped and expire with."""
        super().__init__(settings)
        self.wall_clock = wall_clock
        self.answers: AnswerStore | None = None
        self.metrics = AgentMetrics()
        self.service: EdgeService | None = None
        self.manager: ModelManager | None = None
        self.fleet: FleetClient | None = None
        self.policy_watcher: PolicyWatcher | None = None
        self.ledger: HardExampleLedger | None = None
        self.uploader: HardExampleUploader | None = None
        self.labels: LabelWatcher | None = None
        """Applies reviewers' labels to better answers (with a gateway and answers)."""

    async def start(self) -> int:
        """Load tasks and start serving apps; returns the bound port."""
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        if not s.gateway:
            log.warning("no_gateway", detail="every row is answered at the edge")
        warn_if_token_travels_in_plaintext(s)
        self.ledger = await asyncio.to_thread(open_ledger, s)
        try:
            self.answers = await asyncio.to_thread(open_answers, s, self.wall_clock)
        except (sqlite3.Error, OSError) as exc:
            # Better answers are an extra: a full or broken disk must not stop the agent
            # from answering. Requests asking for one are refused with FAILED_PRECONDITION.
            log.error("answers_unavailable", problem=str(exc),
                      detail="answer=fast_then_better is refused until the agent restarts "
                      "with a writable data directory")
            self.answers = None
        if self.answers is not None:
            self.answers.start()
        service = build_service(s, self.metrics, self.ledger, self.answers, self.wall_clock)
        self.service = service
        trust = load_public_key(s.trust_key) if s.trust_key else None
        if trust is None:
            log.warning("artifacts_not_verified",
                        detail="no --trust-key: models and policies from the fleet are loaded "
                        "without checking the operator's signature")
        fleet = None
        if s.gateway and s.fleet:
            fleet = FleetClient(s.gateway, s.agent_id, dict(s.labels), service,
                                status_interval_s=s.status_interval_s,
                                backoff_max_s=s.reconnect_max_s,
                                token=read_token(s.token_file),
                                credentials=gateway_credentials(s),
                                on_state=self._fleet_state)
        store = ArtifactStore(s.data_dir / "store")
        orphans = await asyncio.to_thread(store.remove_orphans)
        if orphans:
            log.info("orphans_removed", folder=str(store.root), files=len(orphans))
        self.manager = ModelManager(service, store, fleet, trust_key=trust,
                                    onnx_threads=s.onnx_threads)
        await self.manager.restore(skip=set(s.models))
        if not service.task_names() and fleet is None:
            raise InvalidInput("no tasks to serve: give --model NAME=FILE, or --gateway to "
                               "receive models from the fleet")
        await service.start()  # checks each task's cloud model before the first request
        answers = self.answers is not None  # the Answers service only where answers are kept
        _server, port, lifecycle = await create_server(
            s.listen,
            [v2_grpc.register(service, s.max_request_bytes),
             *([answers_servicer.register(self.answers)] if answers else [])],
            [v2_grpc.SERVICE_NAME, *([answers_servicer.SERVICE_NAME] if answers else [])],
            ServerOptions(max_message_bytes=s.max_request_bytes + 2**20),
        )
        await self._serving(port, lifecycle, self.metrics.registry)
        if fleet is not None:
            await lifecycle.set_component(FLEET_HEALTH, False)
            fleet.start(self.manager)
            self.fleet = fleet
        if self.ledger is not None:
            self.ledger.start()
            h = s.hard_examples
            self.uploader = HardExampleUploader(
                s.gateway, self.ledger, interval_s=h.upload_interval_s,
                batch_records=h.upload_batch_records, batch_bytes=h.upload_batch_bytes,
                backoff_max_s=s.reconnect_max_s, token=read_token(s.token_file),
                credentials=gateway_credentials(s))
            self.uploader.start()
        if self.answers is not None and s.gateway:
            self.labels = LabelWatcher(s.gateway, s.agent_id, self.answers,
                                       token=read_token(s.token_file),
                                       credentials=gateway_credentials(s),
                                       backoff_max_s=s.reconnect_max_s)
            self.labels.start()
        self.policy_watcher = PolicyWatcher(service, list(s.policies),
                                            poll_s=s.policy_poll_s)
        self.policy_watcher.start()
        self.metrics.watch_drift(service)
        log.info("agent_ready", address=self.address, agent_id=s.agent_id,
                 tasks=service.task_names(), gateway=s.gateway)
        return port

    def _http_routes(self) -> list[web.RouteDef]:
        """v2 REST and the better answers by id, open as the agent's gRPC port is (apps on
        the device call both)."""
        return [*v2_http.routes(self.service, max_request_bytes=self.settings.max_request_bytes),
                *(answers_http.answer_routes(self.answers) if self.answers is not None
                  else [])]

    async def _fleet_state(self, state: str) -> None:
        if self._lifecycle is not None:
            await self._lifecycle.set_component(FLEET_HEALTH, state == "connected")

    async def _close_background(self) -> None:
        if self.policy_watcher is not None:
            await self.policy_watcher.aclose()
            self.policy_watcher = None
        if self.fleet is not None:
            await self.fleet.aclose()
            self.fleet = None
        if self.uploader is not None:
            await self.uploader.aclose()
            self.uploader = None
        if self.labels is not None:
            await self.labels.aclose()
            self.labels = None

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain as every server does, then write the hard rows and answers still buffered.

        The ledger and the answers close last: requests finishing during the drain, and
        shadow calls and better answers cancelled by it, still hand their rows over.
        """
        try:
            await super().stop(grace_s)
        finally:
            if self.answers is not None:
                await self.answers.aclose()
                self.answers = None
            if self.ledger is not None:
                await self.ledger.aclose()
                self.ledger = None


async def run_agent(settings: AgentSettings) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    await run_until_signal(AgentApp(settings))
