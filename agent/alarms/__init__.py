"""Alarm rules evaluated on the node (issue 4).

Operators must hear that a GPU runs hot or has failed even while the network to the central
collector is down, so rules run here, beside the data: `rules` (the `[[alarm]]` model and its
validation), `schedule` (effective time windows), `engine` (the per-label-set state machine
on an injectable clock), `store` (state that survives restarts), `hooks` (per-rule commands
off the evaluation path), `builtin` (the default health rules), `component` (how it all plugs
into the daemon), `service` (the gRPC API) and `cli` (the operator's verbs).
"""
