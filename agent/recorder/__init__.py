"""The flight recorder: full-resolution samples around alarms and health events.

`store` keeps the recording files (taking them from the native ring on its own thread,
reading them back, bounding the directory); `component` is how it plugs into the daemon:
it is triggered by the events other rooms emit, and tells everyone when a file is ready.
"""
