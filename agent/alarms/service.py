"""The `Alarms` gRPC service on the local socket: thin, over the alarms component's published
view and the flight recorder's files (the recorder is a component of its own, built beside
the alarms one; None when `[recorder] enabled = false`).

Reads come from the copy the component publishes each tick, so a slow client never holds
up evaluation; `Record` waits for its file on the recorder's own thread, not the main loop.
Domain errors become status codes with a message an operator can act on.
"""
from __future__ import annotations

import json

import grpc

from agent.proto import alarms_pb2, alarms_pb2_grpc
from agent.recorder.store import NoSuchRecording, RecordingError

CHUNK = 256 * 1024
MAX_RECORD_SECONDS = 3600.0


class AlarmsService(alarms_pb2_grpc.AlarmsServicer):
    def __init__(self, component, recorder=None):
        self.component = component
        self.recorder = recorder  # agent.recorder.component.RecorderComponent, or None

    def ListAlarms(self, request, context):
        view = dict(self.component.view())
        view["recorder"] = self.recorder.recorder.status() if self.recorder is not None else {"available": False}
        if request.active_only:
            view["states"] = [s for s in view.get("states", []) if s.get("state") != "ok"]
        return alarms_pb2.ListAlarmsReply(json=json.dumps(view),
                                          simulated=self.component.ctx.simulated)

    def _recorder(self, context):
        if self.recorder is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the flight recorder is off ([recorder] enabled = false)")
        return self.recorder.recorder

    def ListRecordings(self, request, context):
        recorder = self._recorder(context)
        return alarms_pb2.ListRecordingsReply(headers_json=[json.dumps(h) for h in recorder.list()],
                                              recorder_json=json.dumps(recorder.status()))

    def GetRecording(self, request, context):
        recorder = self._recorder(context)
        try:
            header = recorder.header(request.id)
            path = recorder.path(request.id)
            with open(path, "rb") as f:  # opened once: a later size-bound deletion cannot cut it short
                first = True
                while True:
                    data = f.read(CHUNK)
                    if not data and not first:
                        break
                    yield alarms_pb2.RecordingChunk(header_json=json.dumps(header) if first else "", data=data)
                    first = False
        except NoSuchRecording as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except FileNotFoundError:
            context.abort(grpc.StatusCode.NOT_FOUND, f"recording {request.id!r} was just dropped to keep the size bound")

    def Record(self, request, context):
        recorder = self._recorder(context)
        seconds = request.seconds
        if not 0 < seconds <= MAX_RECORD_SECONDS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"seconds must be in (0, {MAX_RECORD_SECONDS:g}], got {seconds:g}")
        try:
            header = recorder.record_now(list(request.gpus), seconds)
        except TimeoutError:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the recording was not written in time; see the daemon's log")
        except RecordingError as e:
            code = grpc.StatusCode.FAILED_PRECONDITION if not recorder.available else grpc.StatusCode.INVALID_ARGUMENT
            context.abort(code, str(e))
        return alarms_pb2.RecordReply(header_json=json.dumps(header))


def add_to_server(server, component, recorder=None) -> None:
    alarms_pb2_grpc.add_AlarmsServicer_to_server(AlarmsService(component, recorder), server)
