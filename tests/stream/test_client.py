"""The stream client's channel: plaintext only to loopback, decided as the [stream] section decides."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from agent.stream.client import make_channel

SETTINGS = SimpleNamespace(plaintext=True, max_message_bytes=4 << 20, keepalive_time=30.0,
                           keepalive_timeout=10.0, connect_timeout=20.0)


@pytest.mark.parametrize("target", ["127.0.0.1:7443", "[::1]:7443", "localhost:7443"])
def test_a_plaintext_channel_to_loopback_is_made(target):
    async def make():
        await make_channel(target, SETTINGS).close()
    asyncio.run(make())


@pytest.mark.parametrize("target", ["127.evil.example:7443", "10.0.0.1:7443", "[::]:7443"])
def test_a_plaintext_channel_anywhere_else_is_refused(target):
    with pytest.raises(ValueError, match="only allowed to loopback"):
        make_channel(target, SETTINGS)
