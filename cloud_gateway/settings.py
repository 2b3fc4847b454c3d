"""Settings of the ``edgecloud gateway serve`` process."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from edgecloud.core.logging import LogFormat
from edgecloud.core.settings import EdgecloudSettings, state_dir


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup"),
                 own_cgroups: Path = Path("/proc/self/cgroup")) -> int:
    """CPU cores this process may use: its affinity mask, capped by the CPU quota of its
    control group (a container's or a systemd unit's CPU limit), rounded up."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup_root, own_cgroups)
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def cgroup_cpu_quota(cgroup_root: Path, own_cgroups: Path) -> float | None:
    """The tightest CPU quota (in cores) on the control groups holding this process, from
    cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``; None: no quota."""
    try:
        lines = own_cgroups.read_text().splitlines()
    except OSError:
        lines = []
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: the unified hierarchy
            folder, read = cgroup_root / path.lstrip("/"), _v2_quota
        elif "cpu" in controllers.split(","):
            folder, read = cgroup_root / "cpu" / path.lstrip("/"), _v1_quota
        else:
            continue
        while True:  # a limit on any ancestor applies too
            quota = read(folder)
            if quota is not None:
                quotas.append(quota)
            if folder in (cgroup_root, cgroup_root / "cpu") or folder == folder.parent:
                break
            folder = folder.parent
    return min(quotas) if quotas else None


def _v2_quota(folder: Path) -> float | None:
    try:
        limit, period = (folder / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if limit == "max" else int(limit) / int(period)


def _v1_quota(folder: Path) -> float | None:
    try:
        limit = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if limit <= 0 or period <= 0 else limit / period


class ModelBatching(BaseModel):
    """Batching limits of one model; a field left unset takes the gateway-wide value."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int | None = Field(None, ge=1, le=65536)
    """Most rows in one model run; a larger request is split into runs of at most this."""
    max_queue_delay_ms: float | None = Field(None, ge=0, le=10_000)
    """Longest a forming batch waits for more requests (a lone request never waits)."""
    max_queue_rows: int | None = Field(None, ge=1)
    """Rows allowed to wait; more are refused with RESOURCE_EXHAUSTED, and a single request
    of more rows than this with INVALID_ARGUMENT."""
    workers: int | None = Field(None, ge=1, le=64)
    """Batches of the model that may run at the same time."""


class BatchingSection(BaseModel):
    """Dynamic batching: gateway-wide limits, and overrides per model name."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(64, ge=1, le=65536)
    """Most rows in one model run; a larger request is split into runs of at most this."""
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000)
    """Longest a forming batch waits for more requests (a lone request never waits)."""
    max_queue_rows: int = Field(4096, ge=1)
    """Rows allowed to wait per model; more are refused with RESOURCE_EXHAUSTED, and a single
    request of more rows than this with INVALID_ARGUMENT."""
    workers: int = Field(2, ge=1, le=64)
    """Batches of one model that may run at the same time."""
    models: dict[str, ModelBatching] = Field(default_factory=dict)
    """Model name -> limits that differ from the ones above for that model."""

    def for_model(self, name: str) -> dict[str, float | int]:
        """The limits of model ``name``: its overrides over the gateway-wide values."""
        limits = self.model_dump(exclude={"models"})
        override = self.models.get(name)
        if override is not None:
            limits.update(override.model_dump(exclude_none=True))
        return limits


class HardExamplesSection(BaseModel):
    """Hard examples uploaded by agents, kept under the registry's ``hard_examples/``."""

    model_config = ConfigDict(extra="forbid")

    max_upload_bytes: int = Field(16 * 2**20, ge=2**16)
    """Bytes one upload may carry; a larger one is refused while it is read."""
    max_records_per_upload: int = Field(10_000, ge=1)
    """Records one upload may carry."""
    max_record_bytes: int = Field(4 * 2**20, ge=1024)
    """Bytes of input data one record may hold; a larger record is refused alone."""
    agent_quota_bytes: int = Field(2**30, ge=2**16)
    """Storage each agent's stored records may take; past it uploads are refused with
    RESOURCE_EXHAUSTED (and stay in the agent's ledger)."""


class ReviewSection(BaseModel):
    """The human review queue, kept under the registry's ``reviews/``."""

    model_config = ConfigDict(extra="forbid")

    max_age_s: float = Field(86400.0, gt=0.0, allow_inf_nan=False)
    """Seconds a row may wait for a label; after it the row leaves the queue and a label
    for it is refused with FAILED_PRECONDITION (agents keep better answers as long)."""
    label_poll_ms: int = Field(1000, ge=50)
    """How often an agent's label stream looks for labels given through other replicas."""


ExecutionProvider = Literal[
    "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"]
"""The ONNX Runtime execution providers a gateway model may ask for."""


class RateLimitSection(BaseModel):
    """One escalation limit: a token bucket of rows."""

    model_config = ConfigDict(extra="forbid")

    rows_per_s: float = Field(gt=0)
    """Rows per second an agent may send to this replica's models, on average."""
    burst: int | None = Field(None, ge=1)
    """Rows it may send at once after a quiet spell (default: one second's worth); a
    request with more rows is always refused, so keep it at least the agent's
    ``max_escalation_rows`` when agents escalate whole batches."""


class EscalationLimitsSection(BaseModel):
    """Per-agent limits on rows sent to the cloud models (RESOURCE_EXHAUSTED past them,
    which agents answer at the edge). Each replica meters its own calls. Operators are
    never limited; on a gateway without tokens or client certificates nobody is."""

    model_config = ConfigDict(extra="forbid")

    default: RateLimitSection | None = None
    """Limit of every agent without one of its own or a label's (default: unlimited)."""
    agents: dict[str, RateLimitSection] = Field(default_factory=dict)
    """Agent id -> its limit; wins over labels and the default."""
    labels: dict[str, RateLimitSection] = Field(default_factory=dict)
    """``KEY=VALUE`` label -> the limit of agents with that label (the strictest, when
    several match), as the agent last announced its labels to the replica."""

    @field_validator("labels")
    @classmethod
    def _label_pairs(cls, value: dict[str, RateLimitSection]) -> dict[str, RateLimitSection]:
        for label in value:
            key, sep, _ = label.partition("=")
            if not sep or not key:
                raise ValueError(f"label {label!r} is not KEY=VALUE")
        return value


class GatewaySettings(EdgecloudSettings):
    """Everything the gateway process reads at start."""

    model_config = SettingsConfigDict(env_prefix="EDGECLOUD_GATEWAY_")

    listen: str = "127.0.0.1:8001"
    """Address of the v2 inference and fleet gRPC server (port 0 picks one)."""
    data_dir: Path = Field(default_factory=lambda: state_dir("gateway"))
    """Directory for the gateway's own files (default: ``$XDG_STATE_HOME/edgecloud/gateway``,
    else ``~/.local/state/edgecloud/gateway``)."""
    models: dict[str, Path] = Field(default_factory=dict)
    """Models served at start: name -> ONNX file."""
    scores_outputs: dict[str, str] = Field(default_factory=dict)
    """Name of a model in ``models`` -> its output holding class scores, checked at start
    (default: the model's one float [N, classes] output, when it has one)."""
    registry: str | None = None
    """Where the registry is: a directory (default: DATA_DIR/registry) or
    ``s3://BUCKET/PREFIX``; replicas share it."""
    s3_endpoint: str | None = None
    """S3 endpoint URL of an ``s3://`` registry (default: ``AWS_ENDPOINT_URL``, else AWS);
    credentials come from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``."""
    registry_dir: Path | None = None
    """Former name of ``registry``, still read; ``registry`` wins when both are set."""
    replica: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """Name of this replica in fleet status."""
    registry_poll_ms: float = Field(200.0, gt=0, le=60_000)
    """How often the registry generation is checked for changes."""
    report_spread_per_agent_ms: float = Field(1.0, ge=0, le=1000)
    """Agents spread the status reports that follow an assignment over this many
    milliseconds per agent watching this replica (10,000 agents: 10 s), so a fleet's
    reports do not arrive at once; 0: every agent reports at once."""
    report_spread_max_ms: int = Field(30_000, ge=0, le=600_000)
    """The longest such spread."""
    trust_key: Path | None = None
    """Operator public key (PEM); with it, unsigned or wrongly signed publications are refused."""
    tls_cert: Path | None = None
    """Server certificate (PEM); with tls_key, the gateway serves TLS."""
    tls_key: Path | None = None
    """Private key of tls_cert (PEM)."""
    tls_client_ca: Path | None = None
    """CA of agent and operator certificates; with it every client must present one (mTLS),
    and the identity its URI SAN names (``edgecloud://agent/AGENT_ID``,
    ``edgecloud://operator/NAME``, ``edgecloud://viewer/NAME``) is the caller's."""
    behind_tls_proxy: bool = False
    """The listen address is reachable only through a proxy that terminates TLS (the example
    Envoy), so tokens travel in plaintext only on that last hop: no warning at start. The
    proxy hides client certificates, so identities then come from tokens."""
    tokens_file: Path | None = None
    """Bearer tokens with roles (YAML: operators, viewers, agents; each token, or its
    ``sha256:`` hash from ``edgecloud tokens hash``); without it (and without tls_client_ca)
    the gateway is open."""
    escalation_limits: EscalationLimitsSection = Field(
        default_factory=EscalationLimitsSection)
    """Per-agent limits on rows escalated to the cloud models."""
    batching: BatchingSection = Field(default_factory=BatchingSection)
    """Dynamic batching limits."""
    hard_examples: HardExamplesSection = Field(default_factory=HardExamplesSection)
    """Limits on hard-example uploads and storage."""
    review: ReviewSection = Field(default_factory=ReviewSection)
    """The human review queue (rows the policy's review_threshold sends)."""
    onnx_threads: int | None = Field(None, ge=1, le=256)
    """ONNX Runtime intra-op threads per model session (default: the cores this process may
    use, its container's CPU limit included, shared among the model's batch workers, at
    least 1: the batches of a model that run at the same time fill the cores without asking
    for more threads than there are cores)."""
    execution_providers: dict[str, list[ExecutionProvider]] = Field(default_factory=dict)
    """Model name (``--model`` or published) -> ONNX Runtime execution providers in order of
    preference, e.g. ``[CUDAExecutionProvider, CPUExecutionProvider]``; the key ``default``
    covers models not named (default: CPU alone). Providers the machine lacks are skipped
    with a warning and CPU is the fallback; ModelConfig's ``execution_provider`` parameter
    says which one a model got."""
    executor_threads: int = Field(4, ge=1, le=256)
    """Worker threads that run model batches."""
    max_concurrent_rpcs: int | None = Field(32768, ge=1)
    """RPCs the server runs at once, open streams included (each agent holds a watch stream
    and an escalation stream); past it new calls are refused with RESOURCE_EXHAUSTED.
    None: unlimited."""
    max_streams_per_connection: int = Field(256, ge=1)
    """HTTP/2 streams (calls) one connection may have open at once; more wait for a free one."""
    max_pending_rpcs: int = Field(32768, ge=1)
    """New calls held while the server is still taking earlier ones: when a whole fleet
    reconnects at once (a replica restarted, a load balancer moved connections) the calls
    arrive faster than one event loop takes them. Past it new calls are refused (and agents
    retry with backoff). gRPC's own default refuses calls from 1,000 waiting on, which
    turned most of a 10,000-agent reconnect away."""
    max_request_bytes: int = Field(64 * 2**20, ge=1024)
    """Largest inference request accepted."""
    max_connection_age_s: float | None = Field(600.0, gt=0)
    """Connections are closed after this long so a load balancer can rebalance them."""
    drain_grace_s: float = Field(10.0, ge=0)
    """On SIGTERM, time given to in-flight requests before the server stops."""
    http_listen: str | None = None
    """HOST:PORT of the HTTP port (v2 REST, Prometheus ``/metrics``); none when unset."""
    port_file: Path | None = None
    """Where to write the bound HOST:PORT once serving (for supervisors and the demo)."""
    log_format: LogFormat = "auto"
    """``json``, ``console``, or ``auto`` (console on a terminal)."""
    log_level: str = "info"
    """Lowest level logged."""

    def threads_for(self, model: str) -> int:
        """ONNX Runtime intra-op threads of ``model``'s session (see ``onnx_threads``)."""
        if self.onnx_threads is not None:
            return self.onnx_threads
        workers = int(self.batching.for_model(model)["workers"])
        return max(1, usable_cores() // workers)

    def providers_for(self, model: str) -> list[str]:
        """The execution providers asked for ``model``, in order of preference."""
        return list(self.execution_providers.get(
            model, self.execution_providers.get("default", ["CPUExecutionProvider"])))

    @field_validator("registry", mode="before")
    @classmethod
    def _location_text(cls, value: object) -> object:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @model_validator(mode="after")
    def _former_registry_name(self) -> GatewaySettings:
        if self.registry is None and self.registry_dir is not None:
            self.registry = str(self.registry_dir)
        return self
