from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Point(_message.Message):
    __slots__ = ("metric", "labels", "ts", "count", "sum", "min", "max", "last")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    metric: str
    labels: _containers.ScalarMap[str, str]
    ts: float
    count: int
    sum: float
    min: float
    max: float
    last: float
    def __init__(self, metric: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., ts: _Optional[float] = ..., count: _Optional[int] = ..., sum: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., last: _Optional[float] = ...) -> None: ...

class SeriesDesc(_message.Message):
    __slots__ = ("metric", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    metric: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, metric: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SeriesTable(_message.Message):
    __slots__ = ("series",)
    SERIES_FIELD_NUMBER: _ClassVar[int]
    series: _containers.RepeatedCompositeFieldContainer[SeriesDesc]
    def __init__(self, series: _Optional[_Iterable[_Union[SeriesDesc, _Mapping]]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("kind", "ts", "labels", "data_json")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DATA_JSON_FIELD_NUMBER: _ClassVar[int]
    kind: str
    ts: float
    labels: _containers.ScalarMap[str, str]
    data_json: str
    def __init__(self, kind: _Optional[str] = ..., ts: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ..., data_json: _Optional[str] = ...) -> None: ...

class AgentStatus(_message.Message):
    __slots__ = ("spool_backlog_records", "spool_backlog_bytes", "dropped_records", "health")
    SPOOL_BACKLOG_RECORDS_FIELD_NUMBER: _ClassVar[int]
    SPOOL_BACKLOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    spool_backlog_records: int
    spool_backlog_bytes: int
    dropped_records: int
    health: str
    def __init__(self, spool_backlog_records: _Optional[int] = ..., spool_backlog_bytes: _Optional[int] = ..., dropped_records: _Optional[int] = ..., health: _Optional[str] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("host_id", "labels", "epoch", "seq", "created", "events", "nic_json", "recording_json", "status", "series_table", "ts", "count", "sum", "min", "max", "last")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NIC_JSON_FIELD_NUMBER: _ClassVar[int]
    RECORDING_JSON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SERIES_TABLE_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    labels: _containers.ScalarMap[str, str]
    epoch: int
    seq: int
    created: float
    events: _containers.RepeatedCompositeFieldContainer[Event]
    nic_json: str
    recording_json: str
    status: AgentStatus
    series_table: bytes
    ts: _containers.RepeatedScalarFieldContainer[float]
    count: _containers.RepeatedScalarFieldContainer[int]
    sum: _containers.RepeatedScalarFieldContainer[float]
    min: _containers.RepeatedScalarFieldContainer[float]
    max: _containers.RepeatedScalarFieldContainer[float]
    last: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, host_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ..., created: _Optional[float] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., nic_json: _Optional[str] = ..., recording_json: _Optional[str] = ..., status: _Optional[_Union[AgentStatus, _Mapping]] = ..., series_table: _Optional[bytes] = ..., ts: _Optional[_Iterable[float]] = ..., count: _Optional[_Iterable[int]] = ..., sum: _Optional[_Iterable[float]] = ..., min: _Optional[_Iterable[float]] = ..., max: _Optional[_Iterable[float]] = ..., last: _Optional[_Iterable[float]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("epoch", "seq", "duplicate")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    seq: int
    duplicate: bool
    def __init__(self, epoch: _Optional[int] = ..., seq: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("hosts", "labels", "metrics", "event_kinds", "heartbeat_seconds", "max_pending", "no_snapshot")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EVENT_KINDS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_PENDING_FIELD_NUMBER: _ClassVar[int]
    NO_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    metrics: _containers.RepeatedScalarFieldContainer[str]
    event_kinds: _containers.RepeatedScalarFieldContainer[str]
    heartbeat_seconds: float
    max_pending: int
    no_snapshot: bool
    def __init__(self, hosts: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., metrics: _Optional[_Iterable[str]] = ..., event_kinds: _Optional[_Iterable[str]] = ..., heartbeat_seconds: _Optional[float] = ..., max_pending: _Optional[int] = ..., no_snapshot: _Optional[bool] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("host", "point", "received")
    HOST_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    host: str
    point: Point
    received: float
    def __init__(self, host: _Optional[str] = ..., point: _Optional[_Union[Point, _Mapping]] = ..., received: _Optional[float] = ...) -> None: ...

class HostEvent(_message.Message):
    __slots__ = ("host", "event")
    HOST_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    host: str
    event: Event
    def __init__(self, host: _Optional[str] = ..., event: _Optional[_Union[Event, _Mapping]] = ...) -> None: ...

class Update(_message.Message):
    __slots__ = ("samples", "events", "snapshot", "snapshot_done", "heartbeat", "sent", "coalesced", "dropped")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_DONE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    COALESCED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    events: _containers.RepeatedCompositeFieldContainer[HostEvent]
    snapshot: bool
    snapshot_done: bool
    heartbeat: bool
    sent: float
    coalesced: int
    dropped: int
    def __init__(self, samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[HostEvent, _Mapping]]] = ..., snapshot: _Optional[bool] = ..., snapshot_done: _Optional[bool] = ..., heartbeat: _Optional[bool] = ..., sent: _Optional[float] = ..., coalesced: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("host", "metric", "labels", "start", "end", "resolution", "limit")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOST_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    host: str
    metric: str
    labels: _containers.ScalarMap[str, str]
    start: float
    end: float
    resolution: str
    limit: int
    def __init__(self, host: _Optional[str] = ..., metric: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., start: _Optional[float] = ..., end: _Optional[float] = ..., resolution: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class Series(_message.Message):
    __slots__ = ("host", "metric", "labels", "points")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOST_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    host: str
    metric: str
    labels: _containers.ScalarMap[str, str]
    points: _containers.RepeatedCompositeFieldContainer[Point]
    def __init__(self, host: _Optional[str] = ..., metric: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("resolution", "series")
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    resolution: str
    series: _containers.RepeatedCompositeFieldContainer[Series]
    def __init__(self, resolution: _Optional[str] = ..., series: _Optional[_Iterable[_Union[Series, _Mapping]]] = ...) -> None: ...

class AgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("host", "labels", "epoch", "last_seq", "last_seen", "connected", "peer", "status", "batches", "duplicates", "collector")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOST_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    COLLECTOR_FIELD_NUMBER: _ClassVar[int]
    host: str
    labels: _containers.ScalarMap[str, str]
    epoch: int
    last_seq: int
    last_seen: float
    connected: bool
    peer: str
    status: AgentStatus
    batches: int
    duplicates: int
    collector: str
    def __init__(self, host: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., epoch: _Optional[int] = ..., last_seq: _Optional[int] = ..., last_seen: _Optional[float] = ..., connected: _Optional[bool] = ..., peer: _Optional[str] = ..., status: _Optional[_Union[AgentStatus, _Mapping]] = ..., batches: _Optional[int] = ..., duplicates: _Optional[int] = ..., collector: _Optional[str] = ...) -> None: ...

class AgentsResponse(_message.Message):
    __slots__ = ("agents", "now", "store")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    NOW_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    now: float
    store: str
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ..., now: _Optional[float] = ..., store: _Optional[str] = ...) -> None: ...
