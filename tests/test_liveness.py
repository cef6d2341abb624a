"""A lease holder's liveness on its own host: gone, zombie, alive, or another process."""

from __future__ import annotations

import os
import subprocess
import sys

from ultra.collect import liveness


def test_this_process_is_alive_and_keeps_its_start_time():
    host, pid, started = liveness.me()
    assert pid == os.getpid() and host and started
    assert not liveness.process_gone(pid, started)


def test_an_exited_and_reaped_process_is_gone():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = liveness.start_time(proc.pid)
    proc.wait()
    assert liveness.process_gone(proc.pid, started)


def test_a_zombie_nobody_reaped_is_gone():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    started = liveness.start_time(proc.pid)
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, still not reaped
    try:
        assert liveness.process_gone(proc.pid, started)
    finally:
        proc.wait()


def test_a_pid_now_held_by_a_process_started_at_another_time_is_gone():
    _, pid, started = liveness.me()
    assert liveness.process_gone(pid, started + "0")  # same pid, another start: pid reuse
