from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("json", "simulated")
    JSON_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    json: str
    simulated: bool
    def __init__(self, json: _Optional[str] = ..., simulated: _Optional[bool] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("metric", "labels", "window_seconds", "stat")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STAT_FIELD_NUMBER: _ClassVar[int]
    metric: str
    labels: _containers.ScalarMap[str, str]
    window_seconds: float
    stat: str
    def __init__(self, metric: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., window_seconds: _Optional[float] = ..., stat: _Optional[str] = ...) -> None: ...

class Series(_message.Message):
    __slots__ = ("labels", "value", "count")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, str]
    value: float
    count: int
    def __init__(self, labels: _Optional[_Mapping[str, str]] = ..., value: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class QueryReply(_message.Message):
    __slots__ = ("metric", "unit", "window_seconds", "stat", "ts", "series", "simulated")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STAT_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    metric: str
    unit: str
    window_seconds: float
    stat: str
    ts: float
    series: _containers.RepeatedCompositeFieldContainer[Series]
    simulated: bool
    def __init__(self, metric: _Optional[str] = ..., unit: _Optional[str] = ..., window_seconds: _Optional[float] = ..., stat: _Optional[str] = ..., ts: _Optional[float] = ..., series: _Optional[_Iterable[_Union[Series, _Mapping]]] = ..., simulated: _Optional[bool] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("interval_seconds", "metrics", "labels", "history_seconds", "include_status")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_STATUS_FIELD_NUMBER: _ClassVar[int]
    interval_seconds: float
    metrics: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    history_seconds: int
    include_status: bool
    def __init__(self, interval_seconds: _Optional[float] = ..., metrics: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., history_seconds: _Optional[int] = ..., include_status: _Optional[bool] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("metric", "labels", "value", "history")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    metric: str
    labels: _containers.ScalarMap[str, str]
    value: float
    history: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, metric: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., value: _Optional[float] = ..., history: _Optional[_Iterable[float]] = ...) -> None: ...

class WatchUpdate(_message.Message):
    __slots__ = ("ts", "points", "events_json", "coalesced", "events_dropped", "status_json", "simulated")
    TS_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    COALESCED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    ts: float
    points: _containers.RepeatedCompositeFieldContainer[Point]
    events_json: _containers.RepeatedScalarFieldContainer[str]
    coalesced: int
    events_dropped: int
    status_json: str
    simulated: bool
    def __init__(self, ts: _Optional[float] = ..., points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., events_json: _Optional[_Iterable[str]] = ..., coalesced: _Optional[int] = ..., events_dropped: _Optional[int] = ..., status_json: _Optional[str] = ..., simulated: _Optional[bool] = ...) -> None: ...
