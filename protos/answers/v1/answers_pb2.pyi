from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AnswerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ANSWER_STATE_UNSPECIFIED: _ClassVar[AnswerState]
    ANSWER_STATE_PENDING: _ClassVar[AnswerState]
    ANSWER_STATE_ANSWERED: _ClassVar[AnswerState]
    ANSWER_STATE_CLOUD_FAILED: _ClassVar[AnswerState]
    ANSWER_STATE_NOT_ESCALATED: _ClassVar[AnswerState]
ANSWER_STATE_UNSPECIFIED: AnswerState
ANSWER_STATE_PENDING: AnswerState
ANSWER_STATE_ANSWERED: AnswerState
ANSWER_STATE_CLOUD_FAILED: AnswerState
ANSWER_STATE_NOT_ESCALATED: AnswerState

class GetAnswerRequest(_message.Message):
    __slots__ = ("answer_id",)
    ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    answer_id: str
    def __init__(self, answer_id: _Optional[str] = ...) -> None: ...

class WatchAnswersRequest(_message.Message):
    __slots__ = ("answer_ids",)
    ANSWER_IDS_FIELD_NUMBER: _ClassVar[int]
    answer_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, answer_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AnswerTensor(_message.Message):
    __slots__ = ("name", "datatype", "shape", "raw")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    raw: bytes
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., raw: _Optional[bytes] = ...) -> None: ...

class Answer(_message.Message):
    __slots__ = ("answer_id", "task", "state", "source", "answered_by", "created_at", "answered_at", "route", "better", "classes", "confidence", "outputs", "labels", "detail")
    ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_AT_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    BETTER_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    answer_id: str
    task: str
    state: AnswerState
    source: str
    answered_by: str
    created_at: float
    answered_at: float
    route: _containers.RepeatedScalarFieldContainer[str]
    better: _containers.RepeatedScalarFieldContainer[str]
    classes: _containers.RepeatedScalarFieldContainer[int]
    confidence: _containers.RepeatedScalarFieldContainer[float]
    outputs: _containers.RepeatedCompositeFieldContainer[AnswerTensor]
    labels: _containers.RepeatedScalarFieldContainer[int]
    detail: str
    def __init__(self, answer_id: _Optional[str] = ..., task: _Optional[str] = ..., state: _Optional[_Union[AnswerState, str]] = ..., source: _Optional[str] = ..., answered_by: _Optional[str] = ..., created_at: _Optional[float] = ..., answered_at: _Optional[float] = ..., route: _Optional[_Iterable[str]] = ..., better: _Optional[_Iterable[str]] = ..., classes: _Optional[_Iterable[int]] = ..., confidence: _Optional[_Iterable[float]] = ..., outputs: _Optional[_Iterable[_Union[AnswerTensor, _Mapping]]] = ..., labels: _Optional[_Iterable[int]] = ..., detail: _Optional[str] = ...) -> None: ...
