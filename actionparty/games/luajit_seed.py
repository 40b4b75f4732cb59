"""Give LuaJIT a seeded PRNG while dmlab2d builds a Lua state.

Why this exists: the LuaJIT inside dmlab2d's wheel (2.1, built with the default
``LUAJIT_SECURITY_PRNG=1`` and ``LUAJIT_SECURITY_STRID=1``) seeds its global PRNG in every
``lua_newstate`` from the kernel (``syscall(SYS_getrandom, buf, 32, 0)`` in
``lj_prng_seed_secure``). That PRNG decides every string's table-hash id (``GCstr.sid``,
re-drawn at random intervals), and string-keyed Lua tables are walked by ``pairs()`` in sid
order. Melting Pot's Lua walks such tables where order matters: ``BaseSimulation:_avatarStart``
draws the shuffled spawn points of each spawn group in ``pairs(avatarsPerSpawnGroup)`` order and
hands them out in ``pairs(avatarObjects)`` order. So the same episode seed gave a different
spawn permutation in every Lua state: across processes and across resets in one process.

No setting or environment variable reaches that seed, so while ``dmlab2d.Lab2d(...)`` is being
constructed (the only place a Lua state is created) the import slot of ``syscall`` in
``dmlab2d_pybind.so`` points at a Python function that answers ``getrandom`` with bytes derived
from our seed and forwards every other system call to libc. The slot is restored before the
constructor returns. The patch checks what it overwrites (the slot must hold libc's
``syscall``). Where it cannot be applied (not x86_64 Linux, another dmlab2d build) episodes
are still generated, but not byte-reproducibly, and a warning says so once per process: a
laptop without the patch can still run the pipeline.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import mmap
import os
import struct
import threading
from pathlib import Path
from typing import Iterator

from actionparty.errors import UserError

SYS_GETRANDOM = 318  # x86_64 Linux
_R_X86_64_GLOB_DAT = 6
_R_X86_64_JUMP_SLOT = 7
_PROT_READ, _PROT_WRITE = 0x1, 0x2

_lock = threading.Lock()


log = logging.getLogger(__name__)


class LuaSeedError(UserError):
    """The installed dmlab2d cannot be given a seeded LuaJIT PRNG (another platform or binary
    layout)."""


def _elf_import_slots(path: str, symbol: str) -> list[int]:
    """Virtual addresses (relative to the load base) of the GOT slots through which the shared
    object at ``path`` calls ``symbol`` (JUMP_SLOT / GLOB_DAT relocations in .rela.*)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise LuaSeedError(f"{path}: not a little-endian 64-bit ELF file")
    e_shoff, = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = []
    for i in range(e_shnum):
        name, kind, _flags, _addr, offset, size, link, _info, _align, entsize = struct.unpack_from(
            "<IIQQQQIIQQ", data, e_shoff + i * e_shentsize)
        sections.append((name, kind, offset, size, link, entsize))
    slots = []
    for _name, kind, offset, size, link, entsize in sections:
        if kind != 4:  # SHT_RELA
            continue
        sym_offset, sym_entsize = sections[link][2], sections[link][5]
        str_offset = sections[sections[link][4]][2]
        for r in range(offset, offset + size, entsize or 24):
            r_offset, r_info, _addend = struct.unpack_from("<QQq", data, r)
            if (r_info & 0xFFFFFFFF) not in (_R_X86_64_JUMP_SLOT, _R_X86_64_GLOB_DAT):
                continue
            st_name, = struct.unpack_from("<I", data, sym_offset + (r_info >> 32) * sym_entsize)
            end = data.index(b"\0", str_offset + st_name)
            if data[str_offset + st_name:end] == symbol.encode():
                slots.append(r_offset)
    return slots


def _load_base(path: str) -> int:
    """Where the shared object at ``path`` is mapped in this process (its offset-0 mapping)."""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == real and int(fields[2], 16) == 0:
                return int(fields[0].split("-")[0], 16)
    raise LuaSeedError(f"{path}: not mapped in this process")


@functools.lru_cache(maxsize=1)
def _patch_site():
    """(slot addresses, libc's syscall, libc's mprotect) for dmlab2d's pybind module."""
    if os.uname().machine != "x86_64" or not os.path.exists("/proc/self/maps"):
        raise LuaSeedError("seeding LuaJIT is implemented for x86_64 Linux only")
    import dmlab2d.dmlab2d_pybind as pybind

    libc = ctypes.CDLL(None, use_errno=True)
    real_syscall = ctypes.cast(libc.syscall, ctypes.c_void_p).value
    base = _load_base(pybind.__file__)
    slots = [base + offset for offset in _elf_import_slots(pybind.__file__, "syscall")]
    if not slots:
        raise LuaSeedError(f"{pybind.__file__}: no import of 'syscall' (another dmlab2d build?)")
    for slot in slots:
        if ctypes.c_void_p.from_address(slot).value != real_syscall:
            raise LuaSeedError(f"{pybind.__file__}: the 'syscall' import slot does not hold libc's syscall")
    mprotect = libc.mprotect
    mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    mprotect.restype = ctypes.c_int
    forward = ctypes.CFUNCTYPE(ctypes.c_long, *[ctypes.c_long] * 7)(real_syscall)
    return tuple(slots), real_syscall, mprotect, forward


_SYSCALL = ctypes.CFUNCTYPE(ctypes.c_long, *[ctypes.c_long] * 7)


def _write_slot(mprotect, slot: int, value: int) -> None:
    page = slot & ~(mmap.PAGESIZE - 1)
    if mprotect(page, mmap.PAGESIZE, _PROT_READ | _PROT_WRITE) != 0:
        raise LuaSeedError(f"mprotect failed (errno {ctypes.get_errno()})")
    ctypes.c_void_p.from_address(slot).value = value
    # The slot lives in the RELRO segment, read-only after loading: make it so again.
    mprotect(page, mmap.PAGESIZE, _PROT_READ)


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether :func:`seeded_luajit` can seed LuaJIT here (else it warns once and does nothing)."""
    try:
        _patch_site()
    except LuaSeedError as err:
        log.warning("episodes will not be byte-reproducible on this machine: %s", err)
        return False
    return True


@contextlib.contextmanager
def seeded_luajit(seed: int) -> Iterator[None]:
    """While inside, every LuaJIT state dmlab2d creates seeds its PRNG from ``seed``."""
    if not available():
        yield
        return
    slots, real_syscall, mprotect, forward = _patch_site()
    stream = hashlib.shake_256(b"actionparty luajit prng %d" % seed)
    used = 0

    def fake_syscall(number, a1, a2, a3, a4, a5, a6):
        nonlocal used
        if number == SYS_GETRANDOM:
            size = a2
            chunk = stream.digest(used + size)[used:]
            used += size
            ctypes.memmove(a1, chunk, size)
            return size
        return forward(number, a1, a2, a3, a4, a5, a6)

    callback = _SYSCALL(fake_syscall)
    address = ctypes.cast(callback, ctypes.c_void_p).value
    with _lock:
        for slot in slots:
            _write_slot(mprotect, slot, address)
        try:
            yield
        finally:
            for slot in slots:
                _write_slot(mprotect, slot, real_syscall)
