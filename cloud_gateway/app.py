"""Wiring of the gateway process: models, data plane, gRPC server, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from aiohttp import web

from edgecloud.cloud_gateway.batching import BatchingConfig
from edgecloud.cloud_gateway.console import FleetConsole, console_routes
from edgecloud.cloud_gateway.fleet import FleetHub
from edgecloud.cloud_gateway.grpc import fleet_servicer
from edgecloud.cloud_gateway.hard_examples import REGISTRY_PREFIX, HardExampleStore
from edgecloud.cloud_gateway.limits import EscalationLimiter, LimitedPlane, RateLimit
from edgecloud.cloud_gateway.metrics import GatewayMetrics
from edgecloud.cloud_gateway.registry import Registry, is_registry, registry_location
from edgecloud.cloud_gateway.review import LabelFeed, ReviewQueue
from edgecloud.cloud_gateway.serving import GatewayService
from edgecloud.cloud_gateway.settings import GatewaySettings
from edgecloud.cloud_gateway.storage import Location
from edgecloud.core import v2_grpc, v2_http
from edgecloud.core.auth import (
    AGENT,
    OPERATOR,
    REVIEWER,
    VIEWER,
    Authenticator,
    AuthInterceptor,
    Tokens,
    is_loopback,
)
from edgecloud.core.errors import FailedPrecondition, InvalidInput
from edgecloud.core.grpc_server import ServerOptions, create_server, split_host_port
from edgecloud.core.model import OnnxModel
from edgecloud.core.process import ServingApp, run_until_signal
from edgecloud.core.signing import load_public_key
from edgecloud.core.tensors import class_scores_output
from edgecloud.core.tls import server_credentials

log = structlog.get_logger("edgecloud.gateway")
T = TypeVar("T")


_AGENT_OR_OPERATOR = frozenset({AGENT, OPERATOR})
_OPERATOR_ONLY = frozenset({OPERATOR})
_READERS = frozenset({OPERATOR, VIEWER})
_REVIEW_READERS = frozenset({OPERATOR, VIEWER, REVIEWER})
_LABELLERS = frozenset({OPERATOR, REVIEWER})
"""Who may label review rows: reviewers, and operators (who may do anything a reviewer
may; a viewer reads the queue but labels nothing)."""
_OPEN_V2 = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata")
_ADMIN_READS = ("ListModels", "FleetStatus")
"""Admin calls a viewer may make: they change nothing and return no model or example data."""


def gateway_roles(method: str) -> frozenset[str] | None:
    """Roles allowed to call ``method`` (None: open, e.g. health checks)."""
    if method.startswith(f"/{fleet_servicer.ADMIN_SERVICE}/"):
        return _READERS if method.rsplit("/", 1)[-1] in _ADMIN_READS else _OPERATOR_ONLY
    if method.startswith(f"/{fleet_servicer.FLEET_SERVICE}/"):
        return _AGENT_OR_OPERATOR
    if method.startswith(f"/{fleet_servicer.REVIEW_SERVICE}/"):
        return _LABELLERS if method.endswith("/LabelReview") else _REVIEW_READERS
    if method.startswith(f"/{v2_grpc.SERVICE_NAME}/"):
        return None if method.rsplit("/", 1)[-1] in _OPEN_V2 else _AGENT_OR_OPERATOR
    return None


def _credentials(s: GatewaySettings):
    if s.tls_cert is None and s.tls_key is None:
        if s.tls_client_ca is not None:
            raise InvalidInput("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if s.tls_cert is None or s.tls_key is None:
        raise InvalidInput("TLS needs both --tls-cert and --tls-key")
    return server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca)


def _log_class_scores(model: OnnxModel, wanted: str | None) -> None:
    """Say which output of a cloud model holds its class scores.

    A model named with ``--scores-output`` must have that output as a float
    ``[N, classes]`` tensor (else FailedPrecondition, and the gateway does not
    start); without it, a model with no such output (or several) is still
    served, with a warning saying why agents may not be able to use it.
    """
    try:
        chosen = class_scores_output(model.outputs, wanted, owner=f"model {model.name!r}",
                                     skipped=model.skipped_outputs)
    except FailedPrecondition as exc:
        if wanted is not None:
            raise
        log.warning("model_class_scores_unknown", model=model.name, problem=exc.message)
        return
    log.info("model_class_scores", model=model.name, scores_output=chosen,
             chosen_by="--scores-output" if wanted else "automatic")


def warn_if_tokens_travel_in_plaintext(s: GatewaySettings) -> bool:
    """Log a loud warning when the gateway takes bearer tokens without TLS on an address
    other machines can reach; True when it did. ``behind_tls_proxy`` says a proxy in front
    terminates TLS, and the warning becomes an info line."""
    host, _ = split_host_port(s.listen)
    if s.tokens_file is None or s.tls_cert is not None or is_loopback(host):
        return False
    if s.behind_tls_proxy:
        log.info("tokens_behind_tls_proxy", listen=s.listen,
                 detail="tokens arrive in plaintext from the TLS proxy in front")
        return False
    log.warning("tokens_over_plaintext", listen=s.listen,
                detail="bearer tokens arrive unencrypted on an address other machines can "
                "reach: anyone on the path can read and reuse them. Serve TLS (--tls-cert, "
                "--tls-key), or set behind_tls_proxy when a proxy in front terminates TLS")
    return True


def escalation_limiter(s: GatewaySettings, hub: FleetHub | None = None) -> EscalationLimiter:
    """The per-agent escalation limits the settings name (agents' labels from ``hub``)."""
    limits = s.escalation_limits

    def limit(section) -> RateLimit:
        return RateLimit.of(section.rows_per_s, section.burst)

    labels = {tuple(label.split("=", 1)): limit(section)
              for label, section in limits.labels.items()}
    return EscalationLimiter(
        limit(limits.default) if limits.default else None,
        {agent: limit(section) for agent, section in limits.agents.items()}, labels,
        labels_of=hub.labels_of if hub is not None else (lambda _: None))


def batching_config(s: GatewaySettings) -> Callable[[str], BatchingConfig]:
    """Model name -> its batcher's limits (per-model overrides over the gateway's)."""

    def config(name: str) -> BatchingConfig:
        limits = s.batching.for_model(name)
        return BatchingConfig(
            max_batch_size=int(limits["max_batch_size"]),
            max_queue_delay_s=limits["max_queue_delay_ms"] / 1000.0,
            max_queue_rows=int(limits["max_queue_rows"]),
            workers=int(limits["workers"]),
        )

    return config


@dataclass(frozen=True, slots=True)
class _Checked:
    """What the settings name, read and checked before anything is created."""

    registry: Location
    trust_key: object
    tokens: Tokens | None
    credentials: object
    models: tuple[OnnxModel, ...]


def _check(s: GatewaySettings) -> _Checked:
    """Read and check every file and address the settings name; InvalidInput lists every
    problem found (one line each), before the gateway creates any folder."""
    problems: list[str] = []

    def attempt(what: Callable[[], T]) -> T | None:
        try:
            return what()
        except InvalidInput as exc:
            problems.append(exc.message)
        except OSError as exc:
            problems.append(f"{exc.filename}: {exc.strerror or exc}")
        return None

    location = attempt(lambda: registry_location(s.registry or s.data_dir / "registry",
                                                 s3_endpoint=s.s3_endpoint))
    registry_root = location.path if location is not None and location.is_directory else None
    attempt(lambda: split_host_port(s.listen))
    if s.http_listen:
        attempt(lambda: split_host_port(s.http_listen))
    for what, path in (("data_dir", s.data_dir), ("registry", registry_root)):
        if path is not None and path.exists() and not path.is_dir():
            problems.append(f"{what} {path} is a file, not a directory")
    if (registry_root is not None and not is_registry(registry_root)
            and is_registry(registry_root / "registry")):
        problems.append(f"registry {registry_root} is a gateway data directory, not a "
                        f"registry: use its registry, {registry_root / 'registry'}")
    trust = attempt(lambda: load_public_key(s.trust_key)) if s.trust_key else None
    tokens = attempt(lambda: Tokens.load(s.tokens_file)) if s.tokens_file else None
    credentials = attempt(lambda: _credentials(s))
    unknown = sorted(set(s.scores_outputs) - set(s.models))
    if unknown:
        problems.append(f"--scores-output names {', '.join(map(repr, unknown))}, which is not "
                        "served with --model")
    models = []
    for name, path in s.models.items():
        model = attempt(lambda name=name, path=path: OnnxModel.load(
            path, name=name, version="1", intra_op_threads=s.threads_for(name),
            providers=s.providers_for(name), spinning=False))
        if model is not None:
            try:
                _log_class_scores(model, s.scores_outputs.get(name))
            except FailedPrecondition as exc:
                problems.append(exc.message)
            models.append(model)
    if problems:
        raise InvalidInput("the gateway cannot start:\n" + "\n".join(problems))
    assert location is not None
    return _Checked(location, trust, tokens, credentials, tuple(models))


class GatewayApp(ServingApp):
    """One gateway process, startable in-process (tests) or from the CLI."""

    kind = "gateway"

    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__(settings)
        self.metrics = GatewayMetrics()
        self.service: GatewayService | None = None
        self.hub: FleetHub | None = None
        self.examples: HardExampleStore | None = None
        self.reviews: LabelFeed | None = None
        """The human review queue, and the labels agents watch."""
        self._authenticator: Authenticator | None = None
        self.plane: v2_grpc.DataPlane | None = None
        """What v2 inference calls reach, on gRPC and REST: the service, behind the
        escalation limits when any are set."""

    def _http_routes(self) -> list[web.RouteDef]:
        """v2 REST (see :func:`v2_rest_routes`) and the operators' console (``/console``)."""
        assert self.hub is not None and self.examples is not None
        assert self.reviews is not None
        console = FleetConsole(self.hub, self.examples, self.reviews.queue)
        return [*v2_rest_routes(self), *console_routes(console, self.reviews)]

    def _http_authenticator(self) -> Authenticator | None:
        """The gateway's bearer tokens (client certificates are a gRPC matter)."""
        return self._authenticator

    async def start(self) -> int:
        """Check every setting and file, then load models and start serving; returns the
        bound port. Nothing is created on disk before all checks pass."""
        s = self.settings
        checked = _check(s)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        service = GatewayService(batching_config(s), executor_threads=s.executor_threads,
                                 metrics=self.metrics)
        self.service = service
        for model in checked.models:
            service.add_model(model)
        trust, tokens = checked.trust_key, checked.tokens
        registry = await asyncio.to_thread(Registry, checked.registry, trust_key=trust,
                                           cache_dir=s.data_dir / "registry-cache")
        orphans = await asyncio.to_thread(registry.remove_orphans)
        if orphans:
            log.info("orphans_removed", registry=registry.url, files=len(orphans))
        hub = FleetHub(registry, s.replica, service, poll_s=s.registry_poll_ms / 1000.0,
                       threads_for=s.threads_for, providers_for=s.providers_for,
                       report_spread_per_agent_ms=s.report_spread_per_agent_ms,
                       report_spread_max_ms=s.report_spread_max_ms)
        await hub.start()
        self.hub = hub
        h = s.hard_examples
        # Hard examples live in the registry's storage: every replica stores and exports
        # the same records.
        examples = HardExampleStore(registry.store, REGISTRY_PREFIX,
                                    max_record_bytes=h.max_record_bytes,
                                    agent_quota_bytes=h.agent_quota_bytes)
        self.examples = examples
        self.reviews = LabelFeed(
            ReviewQueue(registry.store, max_age_s=s.review.max_age_s),
            poll_s=s.review.label_poll_ms / 1000.0)
        upload_limits = fleet_servicer.UploadLimits(max_upload_bytes=h.max_upload_bytes,
                                                    max_records=h.max_records_per_upload)
        mutual_tls = s.tls_client_ca is not None
        warn_if_tokens_travel_in_plaintext(s)
        if tokens is None and not mutual_tls:
            log.warning("gateway_open", detail="no --tokens-file and no --tls-client-ca: any "
                        "caller may publish, roll out and act as any agent")
        auth = Authenticator(tokens, certificates=mutual_tls)
        # HTTP has no client certificates: where gRPC checks callers, HTTP asks for a
        # token (a gateway with certificates and no tokens refuses every HTTP caller).
        self._authenticator = (Authenticator(tokens, certificates=False)
                               if tokens is not None or mutual_tls else None)
        limiter = escalation_limiter(s, hub)
        plane = (LimitedPlane(service, limiter, self.metrics.limited_rows.inc)
                 if limiter.enabled else service)
        self.plane = plane
        _server, port, lifecycle = await create_server(
            s.listen,
            [v2_grpc.register(plane, s.max_request_bytes),
             fleet_servicer.register(hub, examples, upload_limits, self.reviews)],
            [v2_grpc.SERVICE_NAME, fleet_servicer.FLEET_SERVICE, fleet_servicer.ADMIN_SERVICE,
             fleet_servicer.REVIEW_SERVICE],
            ServerOptions(max_message_bytes=s.max_request_bytes + 2**20,
                          max_connection_age_s=s.max_connection_age_s,
                          max_concurrent_rpcs=s.max_concurrent_rpcs,
                          max_streams_per_connection=s.max_streams_per_connection,
                          max_pending_rpcs=s.max_pending_rpcs),
            interceptors=([AuthInterceptor(auth, gateway_roles)]
                          if tokens is not None or mutual_tls else []),
            credentials=checked.credentials,
        )
        await self._serving(port, lifecycle, self.metrics.registry)
        log.info("gateway_ready", address=self.address, models=service.model_names(),
                 data_dir=str(s.data_dir), registry=registry.url)
        return port

    async def _close_background(self) -> None:
        if self.reviews is not None:
            await self.reviews.aclose()
        if self.hub is not None:
            await self.hub.aclose()  # ends agent streams so the drain does not wait on them
            self.hub = None


def v2_rest_routes(app: GatewayApp) -> list[web.RouteDef]:
    """v2 REST on the gateway's HTTP port: the plane gRPC inference reaches (escalation
    limits included), each route open to the roles of its gRPC method."""
    assert app.plane is not None
    return v2_http.routes(app.plane, max_request_bytes=app.settings.max_request_bytes,
                          roles_for=gateway_roles)


async def run_gateway(settings: GatewaySettings) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    await run_until_signal(GatewayApp(settings))
