"""Files a projection writes: atomically (a temporary file beside the target, fsynced, then
renamed), and the temporaries a killed writer left behind cleared."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from pathlib import Path

from ultra.errors import UserError


def temp_beside(path: Path) -> tuple[int, str]:
    """A new file only this call created, in `path`'s directory, open for writing: what
    `tempfile.mkstemp` does, without importing tempfile (with shutil and random) into
    every `ultra project`."""
    _remove_dead_temps(path)
    while True:
        # The writer's pid in the name: a killed writer's file is found and removed later.
        tmp = os.path.join(path.parent, f".{path.name}.{os.getpid()}-{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue  # 48 random bits taken: draw again


def _remove_dead_temps(path: Path) -> None:
    """Remove the temp files that writers of `path` killed mid-write left (a results.db
    rebuild's can be 100 MB): those whose writer's pid is gone from this host."""
    from ultra.collect import liveness

    prefix = f".{path.name}."
    try:
        entries = [e.name for e in os.scandir(path.parent)
                   if e.name.startswith(prefix) and e.name.endswith(".tmp")]
    except OSError:
        return  # no directory yet: nothing left over
    for name in entries:
        pid, dash, _ = name[len(prefix):-len(".tmp")].partition("-")
        if dash and pid.isdigit() and liveness.process_gone(int(pid), None):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(path.parent, name))


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename: readers see old or new, never half.

    The path given is written through, never replaced by a regular file: a symlink's target
    is written (atomically), and a device or FIFO is written into directly; both are said
    on stderr.
    """
    path = Path(path)
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        print(f"ultra: note: {path} is a symlink; writing its target {target}", file=sys.stderr)
        path = target
    if path.exists() and not path.is_file() and not path.is_dir():
        kind = "a character device" if stat.S_ISCHR(path.stat().st_mode) else "not a regular file"
        print(f"ultra: note: {path} is {kind}; writing into it, not replacing it", file=sys.stderr)
        try:
            with path.open("wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise UserError(f"{path}: cannot write ({exc.strerror})") from None
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_beside(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o644)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise UserError(f"{path}: cannot write ({exc.strerror})") from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


__all__ = ["temp_beside", "write_atomic"]
