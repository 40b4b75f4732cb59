"""Fast compressed .npz files (readable by ``numpy.load``).

``numpy.savez_compressed`` always deflates at level 6; game frames are flat colours and
compress nearly as well at level 1 at several times the speed, which keeps writing from
dominating episode generation.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np

from actionparty.atomic import atomic_path


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], level: int = 1) -> str:
    """Write ``arrays`` atomically as a deflated .npz; return the file's sha256."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
            for name, array in arrays.items():
                # A fixed timestamp keeps equal arrays byte-identical across runs.
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=False)
                zf.writestr(info, buf.getbuffer(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=level)
        digest = sha256_file(tmp)
    return digest


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``arrays`` as the bytes of an uncompressed .npz. ``numpy.savez`` stamps every member
    with the current time, so equal arrays would give other bytes a second later; here the
    timestamp is fixed, as in :func:`save_npz`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
            zf.writestr(info, member.getbuffer(), compress_type=zipfile.ZIP_STORED)
    return buf.getvalue()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(Path(path), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
