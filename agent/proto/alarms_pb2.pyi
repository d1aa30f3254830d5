from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ListAlarmsRequest(_message.Message):
    __slots__ = ("active_only",)
    ACTIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    active_only: bool
    def __init__(self, active_only: _Optional[bool] = ...) -> None: ...

class ListAlarmsReply(_message.Message):
    __slots__ = ("json", "simulated")
    JSON_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    json: str
    simulated: bool
    def __init__(self, json: _Optional[str] = ..., simulated: _Optional[bool] = ...) -> None: ...

class ListRecordingsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRecordingsReply(_message.Message):
    __slots__ = ("headers_json", "recorder_json")
    HEADERS_JSON_FIELD_NUMBER: _ClassVar[int]
    RECORDER_JSON_FIELD_NUMBER: _ClassVar[int]
    headers_json: _containers.RepeatedScalarFieldContainer[str]
    recorder_json: str
    def __init__(self, headers_json: _Optional[_Iterable[str]] = ..., recorder_json: _Optional[str] = ...) -> None: ...

class GetRecordingRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RecordingChunk(_message.Message):
    __slots__ = ("header_json", "data")
    HEADER_JSON_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header_json: str
    data: bytes
    def __init__(self, header_json: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class RecordRequest(_message.Message):
    __slots__ = ("gpus", "seconds")
    GPUS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    gpus: _containers.RepeatedScalarFieldContainer[int]
    seconds: float
    def __init__(self, gpus: _Optional[_Iterable[int]] = ..., seconds: _Optional[float] = ...) -> None: ...

class RecordReply(_message.Message):
    __slots__ = ("header_json",)
    HEADER_JSON_FIELD_NUMBER: _ClassVar[int]
    header_json: str
    def __init__(self, header_json: _Optional[str] = ...) -> None: ...
