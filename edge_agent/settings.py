"""Settings of the ``edgecloud agent run`` and ``agent batch`` processes."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from edgecloud.core.logging import LogFormat
from edgecloud.core.settings import EdgecloudSettings, state_dir


class HardExamplesSection(BaseModel):
    """The hard-example ledger (``DATA_DIR/hard/ledger.sqlite3``) and its upload."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(256 * 2**20, ge=2**16)
    """Disk the ledger may hold; past it the oldest records are evicted (and counted)."""
    max_age_s: float = Field(7 * 86400.0, gt=0)
    """Records older than this are evicted unsent (and counted)."""
    max_record_bytes: int = Field(4 * 2**20, ge=1024)
    """Largest record uploaded (bytes of input data); a larger one is quarantined on
    arrival, counted and never sent. Keep it within the gateway's own limit."""
    max_buffered_bytes: int = Field(32 * 2**20, ge=2**16)
    """Memory for rows not yet written; rows past it are dropped (and counted)."""
    flush_interval_s: float = Field(0.5, gt=0, le=60)
    """How often buffered rows are written to the ledger (a SIGTERM writes the rest)."""
    upload_interval_s: float = Field(2.0, gt=0)
    """How often the queue is sent to the gateway."""
    upload_batch_records: int = Field(256, ge=1, le=10_000)
    """Most records in one acknowledged upload."""
    upload_batch_bytes: int = Field(8 * 2**20, ge=1024)
    """Most bytes in one acknowledged upload (a single larger record goes alone)."""


class AnswersSection(BaseModel):
    """Better answers by id (``answer=fast_then_better``), kept in the hard-example
    ledger's file (``DATA_DIR/hard/ledger.sqlite3``, table ``answers``)."""

    model_config = ConfigDict(extra="forbid")

    max_answers: int = Field(100_000, ge=1)
    """Answers kept; past it the oldest are dropped."""
    max_age_s: float = Field(86400.0, gt=0)
    """Answers older than this are dropped (and no longer found by id)."""
    cloud_timeout_s: float = Field(10.0, gt=0)
    """Longest wait for the cloud's answer to rows escalated behind the fast answer; past
    it the answer is final as cloud_failed."""
    flush_interval_s: float = Field(0.5, gt=0, le=60)
    """How often changed answers are written (a SIGTERM writes the rest)."""


class AgentSettings(EdgecloudSettings):
    """Everything the agent process reads at start."""

    model_config = SettingsConfigDict(env_prefix="EDGECLOUD_AGENT_")

    listen: str = "127.0.0.1:8000"
    """Address of the local v2 server that device apps call (port 0 picks one)."""
    gateway: str | None = None
    """The cloud gateway: its load balancer's HOST:PORT, a name with several addresses, or an
    ``ipv4:``/``ipv6:`` list (see :mod:`core.targets`), spread round robin; none = edge
    only."""
    data_dir: Path = Field(default_factory=lambda: state_dir("agent"))
    """Directory for the agent's own files (default: ``$XDG_STATE_HOME/edgecloud/agent``,
    else ``~/.local/state/edgecloud/agent``)."""
    models: dict[str, Path] = Field(default_factory=dict)
    """Tasks served at start: task name -> edge ONNX file."""
    policies: list[Path] = Field(default_factory=list)
    """Routing policy files (YAML or JSON); each names its task."""
    policy_poll_s: float = Field(1.0, gt=0)
    """How often policy files are checked for changes (edits take effect live)."""
    cloud_models: dict[str, str] = Field(default_factory=dict)
    """Task name -> model name on the gateway, when it differs from the task name."""
    scores_outputs: dict[str, str] = Field(default_factory=dict)
    """Task name -> the edge model output holding class scores, for a task whose policy names
    none (default: the model's one float [N, classes] output)."""
    cloud_recheck_s: float = Field(30.0, gt=0)
    """While a task's cloud model is refused (or could not be checked), seconds between checks;
    a reconnection to the gateway always checks again."""
    agent_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    """Stable identity of this agent in the fleet."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Labels used by rollout selectors (site, hardware, ...)."""
    onnx_threads: int = Field(1, ge=1, le=256)
    """ONNX Runtime intra-op threads of the local model."""
    executor_threads: int = Field(2, ge=1, le=256)
    """Worker threads that run the local model."""
    max_request_bytes: int = Field(64 * 2**20, ge=1024)
    """Largest inference request accepted from apps."""
    max_escalation_rows: int = Field(256, ge=1)
    """Most rows sent to the cloud in one call: a request escalating more rows sends them as
    several calls of at most this many, at the same time."""
    reply_margin_ms: float = Field(5.0, ge=0)
    """Least time kept back from a request's deadline to answer it locally if the cloud
    does not answer in time."""
    reply_share: float = Field(0.1, ge=0, lt=1)
    """Share of each request's time budget kept back for that local answer when it is more
    than reply_margin_ms: many escalations timing out together (a stalled link) must
    still all be answered before their deadlines."""
    inline_run_below_ms: float = Field(0.5, ge=0)
    """Edge models faster than this per request run on the event loop, not a worker thread."""
    shadow_seed: int | None = None
    """Seed of the shadow sampler (for reproducible runs); random when unset."""
    tls_ca: Path | None = None
    """CA that signed the gateway's certificate; set it to talk TLS to the gateway."""
    tls_cert: Path | None = None
    """This agent's client certificate (PEM), for gateways that require mTLS."""
    tls_key: Path | None = None
    """Private key of tls_cert (PEM)."""
    token_file: Path | None = None
    """File holding this agent's bearer token for the gateway (first line)."""
    trust_key: Path | None = None
    """Operator public key (PEM); with it, only artifacts signed by that key are loaded."""
    fleet: bool = True
    """Follow the gateway's model and policy assignments (when a gateway is set)."""
    upload_hard_examples: bool = True
    """Keep the rows the router marks hard (low confidence, fell back, shadow-sampled) in
    a durable ledger and upload them to the gateway (when a gateway is set)."""
    hard_examples: HardExamplesSection = Field(default_factory=HardExamplesSection)
    """Bounds of the hard-example ledger and its upload."""
    answers: AnswersSection = Field(default_factory=AnswersSection)
    """Bounds of the better answers kept by id."""
    status_interval_s: float = Field(10.0, gt=0)
    """Seconds between periodic status reports to the gateway."""
    reconnect_max_s: float = Field(10.0, gt=0)
    """Longest wait between reconnection attempts (exponential backoff with jitter)."""
    drain_grace_s: float = Field(5.0, ge=0)
    """On SIGTERM, time given to in-flight requests before the server stops."""
    http_listen: str | None = None
    """HOST:PORT of the HTTP port (v2 REST, Prometheus ``/metrics``); none when unset."""
    port_file: Path | None = None
    """Where to write the bound HOST:PORT once serving (for supervisors and the demo)."""
    log_format: LogFormat = "auto"
    """``json``, ``console``, or ``auto`` (console on a terminal)."""
    log_level: str = "info"
    """Lowest level logged."""
