from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RolloutState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLLOUT_STATE_UNSPECIFIED: _ClassVar[RolloutState]
    ROLLOUT_STATE_NONE: _ClassVar[RolloutState]
    ROLLOUT_STATE_ACTIVE: _ClassVar[RolloutState]
    ROLLOUT_STATE_PAUSED: _ClassVar[RolloutState]
    ROLLOUT_STATE_HALTED: _ClassVar[RolloutState]
    ROLLOUT_STATE_PROMOTED: _ClassVar[RolloutState]
    ROLLOUT_STATE_ROLLED_BACK: _ClassVar[RolloutState]

class SignatureState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNATURE_STATE_UNSPECIFIED: _ClassVar[SignatureState]
    SIGNATURE_STATE_NONE: _ClassVar[SignatureState]
    SIGNATURE_STATE_UNCHECKED: _ClassVar[SignatureState]
    SIGNATURE_STATE_VERIFIED: _ClassVar[SignatureState]
ROLLOUT_STATE_UNSPECIFIED: RolloutState
ROLLOUT_STATE_NONE: RolloutState
ROLLOUT_STATE_ACTIVE: RolloutState
ROLLOUT_STATE_PAUSED: RolloutState
ROLLOUT_STATE_HALTED: RolloutState
ROLLOUT_STATE_PROMOTED: RolloutState
ROLLOUT_STATE_ROLLED_BACK: RolloutState
SIGNATURE_STATE_UNSPECIFIED: SignatureState
SIGNATURE_STATE_NONE: SignatureState
SIGNATURE_STATE_UNCHECKED: SignatureState
SIGNATURE_STATE_VERIFIED: SignatureState

class FetchRequest(_message.Message):
    __slots__ = ("digest", "offset", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("offset", "data", "size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    size: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class PublishHeader(_message.Message):
    __slots__ = ("manifest", "signature", "promote")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    signature: bytes
    promote: bool
    def __init__(self, manifest: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., promote: _Optional[bool] = ...) -> None: ...

class PublishChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: PublishHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[PublishHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ReserveVersionRequest(_message.Message):
    __slots__ = ("name", "target")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    name: str
    target: str
    def __init__(self, name: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class ReserveVersionReply(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class PublishPolicyRequest(_message.Message):
    __slots__ = ("header", "document")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    header: PublishHeader
    document: bytes
    def __init__(self, header: _Optional[_Union[PublishHeader, _Mapping]] = ..., document: _Optional[bytes] = ...) -> None: ...

class PublishFloorRequest(_message.Message):
    __slots__ = ("document", "signature")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    document: bytes
    signature: bytes
    def __init__(self, document: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class PublishReply(_message.Message):
    __slots__ = ("name", "version", "digest", "generation")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    digest: str
    generation: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., digest: _Optional[str] = ..., generation: _Optional[int] = ...) -> None: ...

class RolloutRequest(_message.Message):
    __slots__ = ("action", "name", "version", "percent", "selector", "max_failures", "agent_id", "target")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACTION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURES_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    action: str
    name: str
    version: str
    percent: float
    selector: _containers.ScalarMap[str, str]
    max_failures: int
    agent_id: str
    target: str
    def __init__(self, action: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., percent: _Optional[float] = ..., selector: _Optional[_Mapping[str, str]] = ..., max_failures: _Optional[int] = ..., agent_id: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class RolloutRecord(_message.Message):
    __slots__ = ("generation", "rollout")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    generation: int
    rollout: Rollout
    def __init__(self, generation: _Optional[int] = ..., rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("name", "target", "stable", "candidate", "percent", "selector", "max_failures", "state", "pinned", "failures", "history", "updated")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class PinnedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FailuresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    name: str
    target: str
    stable: str
    candidate: str
    percent: float
    selector: _containers.ScalarMap[str, str]
    max_failures: int
    state: RolloutState
    pinned: _containers.ScalarMap[str, str]
    failures: _containers.ScalarMap[str, str]
    history: _containers.RepeatedScalarFieldContainer[str]
    updated: str
    def __init__(self, name: _Optional[str] = ..., target: _Optional[str] = ..., stable: _Optional[str] = ..., candidate: _Optional[str] = ..., percent: _Optional[float] = ..., selector: _Optional[_Mapping[str, str]] = ..., max_failures: _Optional[int] = ..., state: _Optional[_Union[RolloutState, str]] = ..., pinned: _Optional[_Mapping[str, str]] = ..., failures: _Optional[_Mapping[str, str]] = ..., history: _Optional[_Iterable[str]] = ..., updated: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListModelsReply(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "target", "digest", "size", "created", "signature", "signed_by")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNED_BY_FIELD_NUMBER: _ClassVar[int]
    version: str
    target: str
    digest: str
    size: int
    created: str
    signature: SignatureState
    signed_by: str
    def __init__(self, version: _Optional[str] = ..., target: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., created: _Optional[str] = ..., signature: _Optional[_Union[SignatureState, str]] = ..., signed_by: _Optional[str] = ...) -> None: ...

class ModelFloor(_message.Message):
    __slots__ = ("version", "created", "signed")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    version: str
    created: str
    signed: bool
    def __init__(self, version: _Optional[str] = ..., created: _Optional[str] = ..., signed: _Optional[bool] = ...) -> None: ...

class ReplicaServing(_message.Message):
    __slots__ = ("replica", "version", "candidate", "percent", "updated")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    replica: str
    version: str
    candidate: str
    percent: float
    updated: float
    def __init__(self, replica: _Optional[str] = ..., version: _Optional[str] = ..., candidate: _Optional[str] = ..., percent: _Optional[float] = ..., updated: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "versions", "rollout", "cloud_rollout", "floor", "served_by")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    CLOUD_ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    FLOOR_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    rollout: Rollout
    cloud_rollout: Rollout
    floor: ModelFloor
    served_by: _containers.RepeatedCompositeFieldContainer[ReplicaServing]
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., rollout: _Optional[_Union[Rollout, _Mapping]] = ..., cloud_rollout: _Optional[_Union[Rollout, _Mapping]] = ..., floor: _Optional[_Union[ModelFloor, _Mapping]] = ..., served_by: _Optional[_Iterable[_Union[ReplicaServing, _Mapping]]] = ...) -> None: ...

class FleetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FleetStatusReply(_message.Message):
    __slots__ = ("json", "agents")
    JSON_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    json: str
    agents: _containers.RepeatedCompositeFieldContainer[FleetAgent]
    def __init__(self, json: _Optional[str] = ..., agents: _Optional[_Iterable[_Union[FleetAgent, _Mapping]]] = ...) -> None: ...

class FleetAgent(_message.Message):
    __slots__ = ("status", "replica", "last_seen", "swap_history", "connected_here")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    SWAP_HISTORY_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_HERE_FIELD_NUMBER: _ClassVar[int]
    status: AgentStatus
    replica: str
    last_seen: float
    swap_history: _containers.RepeatedCompositeFieldContainer[SwapOutcome]
    connected_here: bool
    def __init__(self, status: _Optional[_Union[AgentStatus, _Mapping]] = ..., replica: _Optional[str] = ..., last_seen: _Optional[float] = ..., swap_history: _Optional[_Iterable[_Union[SwapOutcome, _Mapping]]] = ..., connected_here: _Optional[bool] = ...) -> None: ...

class ExportHardExamplesRequest(_message.Message):
    __slots__ = ("task", "since")
    TASK_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    task: str
    since: float
    def __init__(self, task: _Optional[str] = ..., since: _Optional[float] = ...) -> None: ...

class AgentHello(_message.Message):
    __slots__ = ("agent_id", "labels", "agent_version", "known_generation")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    KNOWN_GENERATION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    labels: _containers.ScalarMap[str, str]
    agent_version: str
    known_generation: int
    def __init__(self, agent_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., agent_version: _Optional[str] = ..., known_generation: _Optional[int] = ...) -> None: ...

class ArtifactRef(_message.Message):
    __slots__ = ("name", "version", "digest", "size", "manifest", "signature")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    digest: str
    size: int
    manifest: bytes
    signature: bytes
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., manifest: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("generation", "models", "policies", "replica", "floors", "report_spread_ms")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    FLOORS_FIELD_NUMBER: _ClassVar[int]
    REPORT_SPREAD_MS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    models: _containers.RepeatedCompositeFieldContainer[ArtifactRef]
    policies: _containers.RepeatedCompositeFieldContainer[ArtifactRef]
    replica: str
    floors: _containers.RepeatedCompositeFieldContainer[VersionFloor]
    report_spread_ms: int
    def __init__(self, generation: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ArtifactRef, _Mapping]]] = ..., policies: _Optional[_Iterable[_Union[ArtifactRef, _Mapping]]] = ..., replica: _Optional[str] = ..., floors: _Optional[_Iterable[_Union[VersionFloor, _Mapping]]] = ..., report_spread_ms: _Optional[int] = ...) -> None: ...

class VersionFloor(_message.Message):
    __slots__ = ("document", "signature")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    document: bytes
    signature: bytes
    def __init__(self, document: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SwapOutcome(_message.Message):
    __slots__ = ("name", "version", "kind", "ok", "reason", "at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    kind: str
    ok: bool
    reason: str
    at: float
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., kind: _Optional[str] = ..., ok: _Optional[bool] = ..., reason: _Optional[str] = ..., at: _Optional[float] = ...) -> None: ...

class TaskCounters(_message.Message):
    __slots__ = ("name", "model_version", "policy_version", "requests", "rows", "escalated_rows", "fallback_rows", "errors", "score_histogram", "score_bin_edges", "drift_psi", "drift_ks", "drift_ks_pvalue", "drift_status", "shadow_rows", "shadow_agree", "waiting_for", "cloud_problem")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ESCALATED_ROWS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_ROWS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SCORE_HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    SCORE_BIN_EDGES_FIELD_NUMBER: _ClassVar[int]
    DRIFT_PSI_FIELD_NUMBER: _ClassVar[int]
    DRIFT_KS_FIELD_NUMBER: _ClassVar[int]
    DRIFT_KS_PVALUE_FIELD_NUMBER: _ClassVar[int]
    DRIFT_STATUS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_ROWS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_AGREE_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_FIELD_NUMBER: _ClassVar[int]
    CLOUD_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_version: str
    policy_version: str
    requests: int
    rows: int
    escalated_rows: int
    fallback_rows: int
    errors: int
    score_histogram: _containers.RepeatedScalarFieldContainer[int]
    score_bin_edges: _containers.RepeatedScalarFieldContainer[float]
    drift_psi: float
    drift_ks: float
    drift_ks_pvalue: float
    drift_status: str
    shadow_rows: int
    shadow_agree: int
    waiting_for: str
    cloud_problem: str
    def __init__(self, name: _Optional[str] = ..., model_version: _Optional[str] = ..., policy_version: _Optional[str] = ..., requests: _Optional[int] = ..., rows: _Optional[int] = ..., escalated_rows: _Optional[int] = ..., fallback_rows: _Optional[int] = ..., errors: _Optional[int] = ..., score_histogram: _Optional[_Iterable[int]] = ..., score_bin_edges: _Optional[_Iterable[float]] = ..., drift_psi: _Optional[float] = ..., drift_ks: _Optional[float] = ..., drift_ks_pvalue: _Optional[float] = ..., drift_status: _Optional[str] = ..., shadow_rows: _Optional[int] = ..., shadow_agree: _Optional[int] = ..., waiting_for: _Optional[str] = ..., cloud_problem: _Optional[str] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("agent_id", "labels", "agent_version", "tasks", "last_swap", "sent_at", "swaps", "applied_generation", "status_interval_s", "diagnostics", "hard_examples")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    LAST_SWAP_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    SWAPS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    HARD_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    labels: _containers.ScalarMap[str, str]
    agent_version: str
    tasks: _containers.RepeatedCompositeFieldContainer[TaskCounters]
    last_swap: SwapOutcome
    sent_at: float
    swaps: _containers.RepeatedCompositeFieldContainer[SwapOutcome]
    applied_generation: int
    status_interval_s: float
    diagnostics: _containers.RepeatedCompositeFieldContainer[TaskDiagnostics]
    hard_examples: HardExampleLedgerStatus
    def __init__(self, agent_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., agent_version: _Optional[str] = ..., tasks: _Optional[_Iterable[_Union[TaskCounters, _Mapping]]] = ..., last_swap: _Optional[_Union[SwapOutcome, _Mapping]] = ..., sent_at: _Optional[float] = ..., swaps: _Optional[_Iterable[_Union[SwapOutcome, _Mapping]]] = ..., applied_generation: _Optional[int] = ..., status_interval_s: _Optional[float] = ..., diagnostics: _Optional[_Iterable[_Union[TaskDiagnostics, _Mapping]]] = ..., hard_examples: _Optional[_Union[HardExampleLedgerStatus, _Mapping]] = ...) -> None: ...

class TaskDiagnostics(_message.Message):
    __slots__ = ("name", "fallback_rows_by_reason", "drift_rows", "drift_min_rows")
    class FallbackRowsByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_ROWS_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    DRIFT_ROWS_FIELD_NUMBER: _ClassVar[int]
    DRIFT_MIN_ROWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    fallback_rows_by_reason: _containers.ScalarMap[str, int]
    drift_rows: int
    drift_min_rows: int
    def __init__(self, name: _Optional[str] = ..., fallback_rows_by_reason: _Optional[_Mapping[str, int]] = ..., drift_rows: _Optional[int] = ..., drift_min_rows: _Optional[int] = ...) -> None: ...

class HardExampleLedgerStatus(_message.Message):
    __slots__ = ("kept", "queued", "queued_bytes", "uploaded", "evicted_age", "evicted_space", "quarantined", "dropped")
    KEPT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_FIELD_NUMBER: _ClassVar[int]
    EVICTED_AGE_FIELD_NUMBER: _ClassVar[int]
    EVICTED_SPACE_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    kept: int
    queued: int
    queued_bytes: int
    uploaded: int
    evicted_age: int
    evicted_space: int
    quarantined: int
    dropped: int
    def __init__(self, kept: _Optional[int] = ..., queued: _Optional[int] = ..., queued_bytes: _Optional[int] = ..., uploaded: _Optional[int] = ..., evicted_age: _Optional[int] = ..., evicted_space: _Optional[int] = ..., quarantined: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class StatusAck(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...

class TensorBlob(_message.Message):
    __slots__ = ("name", "datatype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class HardExample(_message.Message):
    __slots__ = ("agent_id", "task", "model_version", "inputs", "edge_scores", "cloud_scores", "route", "reason", "confidence", "at", "record_id", "seq", "policy_version", "cloud_model_version", "has_cloud_answer", "answer_id", "answer_row")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    EDGE_SCORES_FIELD_NUMBER: _ClassVar[int]
    CLOUD_SCORES_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLOUD_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HAS_CLOUD_ANSWER_FIELD_NUMBER: _ClassVar[int]
    ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_ROW_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    task: str
    model_version: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorBlob]
    edge_scores: _containers.RepeatedScalarFieldContainer[float]
    cloud_scores: _containers.RepeatedScalarFieldContainer[float]
    route: str
    reason: str
    confidence: float
    at: float
    record_id: str
    seq: int
    policy_version: str
    cloud_model_version: str
    has_cloud_answer: bool
    answer_id: str
    answer_row: int
    def __init__(self, agent_id: _Optional[str] = ..., task: _Optional[str] = ..., model_version: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorBlob, _Mapping]]] = ..., edge_scores: _Optional[_Iterable[float]] = ..., cloud_scores: _Optional[_Iterable[float]] = ..., route: _Optional[str] = ..., reason: _Optional[str] = ..., confidence: _Optional[float] = ..., at: _Optional[float] = ..., record_id: _Optional[str] = ..., seq: _Optional[int] = ..., policy_version: _Optional[str] = ..., cloud_model_version: _Optional[str] = ..., has_cloud_answer: _Optional[bool] = ..., answer_id: _Optional[str] = ..., answer_row: _Optional[int] = ...) -> None: ...

class ListReviewsRequest(_message.Message):
    __slots__ = ("task", "limit")
    TASK_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    task: str
    limit: int
    def __init__(self, task: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ReviewItem(_message.Message):
    __slots__ = ("review_id", "example", "classes", "edge_class", "edge_score", "cloud_class", "cloud_score", "expires_at")
    REVIEW_ID_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    EDGE_CLASS_FIELD_NUMBER: _ClassVar[int]
    EDGE_SCORE_FIELD_NUMBER: _ClassVar[int]
    CLOUD_CLASS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_SCORE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    review_id: str
    example: HardExample
    classes: int
    edge_class: int
    edge_score: float
    cloud_class: int
    cloud_score: float
    expires_at: float
    def __init__(self, review_id: _Optional[str] = ..., example: _Optional[_Union[HardExample, _Mapping]] = ..., classes: _Optional[int] = ..., edge_class: _Optional[int] = ..., edge_score: _Optional[float] = ..., cloud_class: _Optional[int] = ..., cloud_score: _Optional[float] = ..., expires_at: _Optional[float] = ...) -> None: ...

class ListReviewsReply(_message.Message):
    __slots__ = ("items", "waiting")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ReviewItem]
    waiting: int
    def __init__(self, items: _Optional[_Iterable[_Union[ReviewItem, _Mapping]]] = ..., waiting: _Optional[int] = ...) -> None: ...

class LabelReviewRequest(_message.Message):
    __slots__ = ("review_id", "label")
    REVIEW_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    review_id: str
    label: int
    def __init__(self, review_id: _Optional[str] = ..., label: _Optional[int] = ...) -> None: ...

class ReviewLabel(_message.Message):
    __slots__ = ("review_id", "agent_id", "task", "answer_id", "answer_row", "label", "reviewer", "labelled_at")
    REVIEW_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    ANSWER_ROW_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    LABELLED_AT_FIELD_NUMBER: _ClassVar[int]
    review_id: str
    agent_id: str
    task: str
    answer_id: str
    answer_row: int
    label: int
    reviewer: str
    labelled_at: float
    def __init__(self, review_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., task: _Optional[str] = ..., answer_id: _Optional[str] = ..., answer_row: _Optional[int] = ..., label: _Optional[int] = ..., reviewer: _Optional[str] = ..., labelled_at: _Optional[float] = ...) -> None: ...

class ExportLabelsRequest(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: str
    def __init__(self, task: _Optional[str] = ...) -> None: ...

class WatchLabelsRequest(_message.Message):
    __slots__ = ("agent_id", "after")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    after: float
    def __init__(self, agent_id: _Optional[str] = ..., after: _Optional[float] = ...) -> None: ...

class RejectedHardExample(_message.Message):
    __slots__ = ("record_id", "reason")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    reason: str
    def __init__(self, record_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class HardExampleAck(_message.Message):
    __slots__ = ("accepted", "duplicates", "rejected")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    rejected: _containers.RepeatedCompositeFieldContainer[RejectedHardExample]
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[RejectedHardExample, _Mapping]]] = ...) -> None: ...
