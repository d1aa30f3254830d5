"""OS thread names (agent/threads.py): what `top -H` and the daemon bench see."""
from __future__ import annotations

import threading
from pathlib import Path

from agent.threads import name_os_thread


def _comm(native_id: int) -> str:
    return Path(f"/proc/self/task/{native_id}/comm").read_text().strip()


def test_a_thread_gets_its_python_name_cut_to_the_kernels_15_bytes():
    seen = {}

    def run():
        name_os_thread()
        seen["comm"] = _comm(threading.get_native_id())

    t = threading.Thread(target=run, name="egs-a-rather-long-thread-name")
    t.start()
    t.join(5)
    assert seen["comm"] == "egs-a-rather-lo"


def test_an_explicit_name_wins_and_other_threads_keep_theirs():
    seen = {}

    def run():
        name_os_thread("egs-explicit")
        seen["comm"] = _comm(threading.get_native_id())

    main_before = _comm(threading.get_native_id())
    t = threading.Thread(target=run, name="ignored")
    t.start()
    t.join(5)
    assert seen["comm"] == "egs-explicit"
    assert _comm(threading.get_native_id()) == main_before
