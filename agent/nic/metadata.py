"""Learn the instance type from the cloud metadata service, off the start-up path.

The lookup runs on its own thread with a short per-request timeout and retries with backoff
until it gets an answer, so a host whose metadata service is slow or unreachable starts
normally and reports the lookup as pending or failed with the reason. Proxies from the
environment are bypassed on purpose: the metadata address is link-local to the host and a
proxy would answer for some other machine or not at all.
"""
from __future__ import annotations

import re
import socket
import threading
from typing import Callable

from agent.backoff import Backoff
from agent.threads import name_os_thread

_TYPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
MAX_BODY = 256


class MetadataError(Exception):
    """The metadata service did not give a usable instance type; the message says why."""


def fetch(url: str, timeout: float) -> str:
    """One request: the instance type the service answers, or MetadataError saying why not."""
    # Imported here: only a host with metadata_enabled asks, and urllib.request (http.client,
    # email) is 1.8 MiB of a daemon's RSS that the others never use.
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            body = response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as e:
        raise MetadataError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (TimeoutError, socket.timeout):
        raise MetadataError(f"{url}: no answer within {timeout:g} s") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise MetadataError(f"{url}: no answer within {timeout:g} s") from None
        raise MetadataError(f"{url}: {reason}") from None
    except OSError as e:  # connection reset mid-body and the like
        raise MetadataError(f"{url}: {e}") from None
    text = body[:MAX_BODY].decode("utf-8", errors="replace").strip()
    if len(body) > MAX_BODY or not _TYPE_NAME.fullmatch(text):
        raise MetadataError(f"{url}: the answer is not an instance type name: {text[:60]!r}")
    return text


class MetadataLookup:
    """Background lookup: `start()` returns at once; `on_found(name)` runs on the lookup thread."""

    def __init__(self, url: str, timeout: float, on_found: Callable[[str], None] | None = None,
                 retry_s: float = 5.0, max_retry_s: float = 300.0):
        self.url, self.timeout = url, timeout
        self._on_found = on_found
        self._retry_s, self._max_retry_s = retry_s, max_retry_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.state, self.detail, self.value, self.attempts = "pending", "not asked yet", None, 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nic-metadata", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            # A request in flight ends within its own timeout; daemon=True covers the rest.
            self._thread.join(timeout)

    def status(self) -> dict:
        with self._lock:
            return {"url": self.url, "state": self.state, "detail": self.detail, "value": self.value,
                    "attempts": self.attempts}

    def _run(self) -> None:
        name_os_thread()
        backoff = Backoff(self._retry_s, multiplier=2, jitter=0, maximum=self._max_retry_s)
        while not self._stop.is_set():
            try:
                value = fetch(self.url, self.timeout)
            except MetadataError as e:
                delay = backoff.next()
                with self._lock:
                    self.attempts += 1
                    self.state, self.detail = "error", f"{e}; retrying in {delay:g} s"
                if self._stop.wait(delay):
                    return
                continue
            with self._lock:
                self.attempts += 1
                self.state, self.detail, self.value = "ok", f"answered {value!r}", value
            if self._on_found is not None:
                self._on_found(value)
            return
