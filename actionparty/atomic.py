"""Atomic writes: a killed job leaves either the old file or the new one, never half of one.

The temporary of ``path`` is a hidden sibling folder ``.{name}.{host}.{pid}.{random}.tmp``.
A job killed with SIGKILL cannot remove it, so the next write of the same ``path`` does:
it removes every such sibling made on this host by a process that no longer runs. Folders of
live processes (a concurrent writer), of other hosts (a shared file system: their processes
cannot be checked from here) and anything not named by this pattern are left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import Iterator


def _host() -> str:
    # Dots separate the name's fields, so the host keeps only characters that cannot clash.
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user: it runs
        return True
    return True


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporaries of ``path`` (see the module docstring) left by dead processes of this host."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp")
    host, stale = _host(), []
    try:
        siblings = list(path.parent.iterdir())
    except FileNotFoundError:
        return []
    for sibling in siblings:
        match = pattern.fullmatch(sibling.name)
        if (match and match["host"] == host and int(match["pid"]) != os.getpid()
                and not _pid_running(int(match["pid"])) and sibling.is_dir() and not sibling.is_symlink()):
            stale.append(sibling)
    return sorted(stale)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what :func:`stale_temporaries` finds; returns the removed folders."""
    removed = stale_temporaries(path)
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    Works for files and directories (the caller creates whichever it needs). On error
    the temporary is removed and ``path`` is left untouched. Temporaries that earlier,
    killed writes of ``path`` left behind are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.parent / f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir(mode=0o700)
    target = tmp / (path.name + suffix)
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            _replace_folder(target, path)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _replace_folder(new: Path, old: Path) -> None:
    """Put folder ``new`` where folder ``old`` is; ``old``'s content ends up at ``new`` (inside
    the temporary, removed with it). A rename cannot replace a non-empty folder, and removing
    ``old`` first would leave a moment with no output at all, so on Linux the two are swapped
    in one step (renameat2 RENAME_EXCHANGE); elsewhere ``old`` is moved aside first, which
    leaves at worst no output (never a partial one) if the process dies in between."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        exchange = libc.renameat2
    except (OSError, AttributeError):
        exchange = None
    if exchange is not None:
        at_cwd = -100  # AT_FDCWD
        if exchange(at_cwd, os.fsencode(new), at_cwd, os.fsencode(old), _RENAME_EXCHANGE) == 0:
            return
    aside = new.with_name(new.name + ".old")
    os.replace(old, aside)
    os.replace(new, old)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
