"""The local API on the daemon's Unix socket: server (`server`, `watch`), client, CLI verbs."""
