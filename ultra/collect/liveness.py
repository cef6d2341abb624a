"""Who a lease's holder is, and whether that process is gone (same machine only).

A lease records its holder's host, pid and process start time. On the machine that holds
it, a holder whose pid is missing, or whose pid now belongs to a process started at
another time (pid reuse, a reboot), is provably dead, and its leases are free at once;
a holder on another machine cannot be asked, so there the ttl decides.

`host` is the host name plus the pid namespace, so two containers that share a host name
but not their pids never judge each other's processes. The start time is Linux's
`/proc/<pid>/stat` starttime (clock ticks since boot) with the boot id, so a reboot
changes it; elsewhere it is unknown (None) and only a missing pid counts as gone.
"""

from __future__ import annotations

import functools
import os
import socket


@functools.cache
def this_host() -> str:
    try:
        ns = os.readlink("/proc/self/ns/pid")  # 'pid:[4026531836]'
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}#{ns.removeprefix('pid:')}"


@functools.cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()[:8]
    except OSError:
        return ""


def _stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: count fields after its last ')'.
    fields = stat[stat.rfind(b")") + 2:].split()
    return fields if len(fields) >= 20 else None


def start_time(pid: int) -> str | None:
    """The process's start time as the kernel tells it, or None (no /proc, or no such pid)."""
    fields = _stat(pid)
    return None if fields is None else f"{_boot_id()}:{fields[19].decode()}"  # field 22


def _ended(pid: int) -> bool:
    """A zombie (or dead) process has ended, though its pid still answers signal 0: a
    killed collector's orphaned shards stay zombies where nobody reaps them."""
    fields = _stat(pid)
    return fields is not None and fields[0] in (b"Z", b"X")


def process_gone(pid: int, started: str | None) -> bool:
    """Whether process `pid` that started at `started` has ended (asked on its own host)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists (another user's): its start time still tells
    except OSError:
        return False
    if _ended(pid):
        return True
    if started is None:
        return False  # no start time to compare: alive as far as we can tell
    now = start_time(pid)
    return now is not None and now != started


def me() -> tuple[str, int, str | None]:
    """(host, pid, start time) of this process."""
    pid = os.getpid()
    return this_host(), pid, start_time(pid)


__all__ = ["me", "process_gone", "start_time", "this_host"]
