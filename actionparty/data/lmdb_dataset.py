"""One LMDB per split, and a torch Dataset of clips read from it.

Layout (schema 2, documented in docs/DATASET.md). Every value starts with the CRC32 of the
rest (4 bytes, little endian), checked on every read (``__meta__`` when the LMDB is opened):

``__meta__``            JSON: schema_version, split, canvas_px, player_slots, games, episodes
``e/{episode:06d}``     uncompressed .npz of the episode's labels (actions, position, facing,
                        visible, interact_effect; see data.episodes)
``f/{episode:06d}/{t:04d}``  zlib-compressed frame t, uint8 (H, W, 3)

Clips are not stored: a reader asks for ``clip_steps`` actions (1 context frame + K
frames) and builds the index of every window from the episode lengths, so the same LMDB
serves 1-step training transitions and 20-step evaluation rollouts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import zlib
from pathlib import Path

import lmdb
import numpy as np
import torch
from tqdm import tqdm

from actionparty.atomic import atomic_path
from actionparty.data.episodes import load_manifest
from actionparty.data.npz import load_npz, npz_bytes, sha256_file
from actionparty.errors import DatasetError
from actionparty.games import PLAYER_SLOTS

# 2: __meta__ carries a CRC32 like every other record (schema 1 had none: a flipped byte could
# relabel a game unnoticed).
LMDB_SCHEMA_VERSION = 2
META_KEY = b"__meta__"
LMDB_FILES = ("data.mdb", "lock.mdb")
LABELS = ("actions", "position", "facing", "visible", "interact_effect")


def _frame_key(episode: int, t: int) -> bytes:
    return f"f/{episode:06d}/{t:04d}".encode()


def _labels_key(episode: int) -> bytes:
    return f"e/{episode:06d}".encode()


def _seal(payload: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(payload)) + payload


# id(env) -> (first, end) address of the data.mdb bytes in the memory map of a read handle.
_MAPPED: dict[int, tuple[int, int]] = {}


def _read(path: Path, env: lmdb.Environment, txn, key: bytes) -> memoryview:
    """The checked payload of record ``key`` (``txn`` opened with ``buffers=True``).

    LMDB takes a value's length from its node without checking it, so a damaged length can
    point past the end of data.mdb; touching those bytes would kill the process (SIGBUS on
    the memory map). The value's address range is checked against the file first.
    """
    value = txn.get(key)
    _check_inside(path, env, key, value)
    return _unseal(path, key, value)


def _check_inside(path: Path, env: lmdb.Environment, key: bytes, value) -> None:
    if value is not None and len(value) and id(env) in _MAPPED:
        first, end = _MAPPED[id(env)]
        address = np.frombuffer(value, np.uint8).ctypes.data  # the address only; no byte is read
        if not first <= address <= address + len(value) <= end:
            raise DatasetError(f"{path}: record {key.decode()} points outside data.mdb (corrupt LMDB; rebuild it)")


def _unseal(path: Path, key: bytes, value: bytes | memoryview | None) -> memoryview:
    if value is None:
        raise DatasetError(f"{path}: record {key.decode()} is missing (incomplete or mismatched LMDB)")
    value = memoryview(value)
    if len(value) < 4 or struct.unpack("<I", value[:4])[0] != zlib.crc32(value[4:]):
        raise DatasetError(f"{path}: record {key.decode()} failed its checksum (corrupt LMDB; rebuild it)")
    return value[4:]


@contextlib.contextmanager
def lmdb_errors(path: Path):
    """LMDB's own errors (a damaged B-tree, a bad page: ``lmdb.CorruptedError`` and kin) as
    one-line DatasetErrors naming the file."""
    try:
        yield
    except lmdb.MapFullError:
        raise
    except lmdb.Error as err:
        raise DatasetError(f"{path}: LMDB error ({type(err).__name__}: {str(err).strip()}); "
                           "the file is damaged or not an LMDB, rebuild it") from None


def check_replaceable(out_path: str | Path) -> None:
    """Refuse (DatasetError) an existing ``out_path`` that is not an LMDB folder: the build
    replaces the whole folder, so it may hold nothing but LMDB's own files."""
    out = Path(out_path)
    if not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_dir():
        raise DatasetError(f"{out}: exists and is not an LMDB folder; refusing to replace it (choose another --out)")
    stray = sorted(p.name for p in out.iterdir() if p.name not in LMDB_FILES)
    if stray:
        raise DatasetError(f"{out / stray[0]}: not an LMDB file; refusing to replace {out} (move it away first)")


def build_lmdb(episode_dirs: list[str | Path], out_path: str | Path, split: str, map_size_mb: int,
               zlib_level: int = 1, progress: bool = True) -> dict:
    """Pack the episode folders (one per game, same canvas) into one LMDB at ``out_path``."""
    out_path = Path(out_path)
    manifests = [(Path(d), load_manifest(d)) for d in episode_dirs]
    if not manifests:
        raise DatasetError(f"{out_path}: no episode folders given")
    canvas = {m["canvas_cells"] for _, m in manifests}
    if len(canvas) != 1:
        raise DatasetError(f"{out_path}: episode folders disagree on canvas size {sorted(canvas)}")
    splits = {m["split"] for _, m in manifests}
    if splits != {split}:
        raise DatasetError(f"{out_path}: episode folders are of split(s) {sorted(splits)}, expected '{split}'")
    games = [m["game"] for _, m in manifests]
    if len(set(games)) != len(games):
        raise DatasetError(f"{out_path}: a game appears twice among the episode folders")
    # An extra evaluation protocol's episodes (manifest field 'protocol'; none: the split's own).
    protocols = {m.get("protocol") for _, m in manifests}
    if len(protocols) != 1:
        raise DatasetError(f"{out_path}: episode folders of different protocols "
                           f"{sorted(p or 'episodes' for p in protocols)}")
    (protocol,) = protocols

    check_replaceable(out_path)

    meta = {"schema_version": LMDB_SCHEMA_VERSION, "split": split, **({"protocol": protocol} if protocol else {}),
            "player_slots": PLAYER_SLOTS, "games": games, "episodes": []}
    total = sum(len(m["episodes"]) for _, m in manifests)
    with atomic_path(out_path) as tmp, lmdb_errors(out_path):
        # meminit: LMDB zeroes the unused part of every page it writes; without it, whatever
        # that memory held before lands in data.mdb and equal input gives other bytes.
        env = lmdb.open(str(tmp), map_size=map_size_mb << 20, subdir=True, meminit=True, map_async=False)
        try:
            index = 0
            bar = tqdm(total=total, desc=f"lmdb {split}", unit="ep", disable=not progress)
            for game_index, (folder, manifest) in enumerate(manifests):
                for entry in manifest["episodes"]:
                    file = folder / entry["file"]
                    if sha256_file(file) != entry["sha256"]:
                        raise DatasetError(f"{file}: sha256 differs from {folder / 'manifest.json'} (corrupt episode)")
                    arrays = load_npz(file)
                    frames = arrays["frames"]
                    meta.setdefault("canvas_px", int(frames.shape[1]))
                    with env.begin(write=True) as txn:
                        for t in range(frames.shape[0]):
                            txn.put(_frame_key(index, t), _seal(zlib.compress(frames[t].tobytes(), zlib_level)))
                        txn.put(_labels_key(index), _seal(npz_bytes({k: arrays[k] for k in LABELS})))
                    meta["episodes"].append({"game": game_index, "num_players": int(arrays["actions"].shape[1]),
                                             "steps": int(arrays["actions"].shape[0]), "seed": entry["seed"],
                                             "source": f"{manifest['game']}/{entry['file']}"})
                    index += 1
                    bar.update()
            bar.close()
            with env.begin(write=True) as txn:
                txn.put(META_KEY, _seal(json.dumps(meta).encode()))
            env.sync(True)
        except lmdb.MapFullError:
            raise DatasetError(f"{out_path}: LMDB map full; raise lmdb.map_size_mb (now {map_size_mb})") from None
        finally:
            env.close()
        # Readers open without locking; the lock file only holds this writer's process state
        # (different bytes on every build), so it does not become part of the dataset.
        (tmp / "lock.mdb").unlink(missing_ok=True)
    return meta


# py-lmdb allows one open handle per file and process: datasets of the same LMDB share it.
# A handle is reopened when the file changed (rebuilt), and never crosses a fork (pid check).
_OPEN: dict[Path, tuple[tuple, lmdb.Environment]] = {}


def open_lmdb(path: str | Path) -> lmdb.Environment:
    """The process's read-only handle of an LMDB; refuses missing, truncated or unreadable files
    in one line."""
    path = Path(path).resolve()
    data_file = path / "data.mdb"
    if not data_file.is_file():
        raise DatasetError(f"{path}: not an LMDB dataset (no data.mdb; run the lmdb stage)")
    st = data_file.stat()
    signature = (os.getpid(), st.st_ino, st.st_size, st.st_mtime_ns)
    if path in _OPEN:
        old_signature, env = _OPEN.pop(path)
        if old_signature == signature:
            _OPEN[path] = (old_signature, env)
            return env
        # Also a handle inherited through a fork: py-lmdb refuses to open a path twice in a
        # process, and closing a read-only, lock-free handle only unmaps it in this process.
        _MAPPED.pop(id(env), None)
        env.close()
    env = _open_checked(path, data_file)
    _OPEN[path] = (signature, env)
    return env


def _open_checked(path: Path, data_file: Path) -> lmdb.Environment:
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=512)
    except lmdb.Error as err:
        raise DatasetError(f"{path}: cannot open LMDB ({err})") from None
    # Reading a page past the end of a truncated file would kill the process (SIGBUS on
    # the memory map), so compare LMDB's own page count with the file size first.
    with lmdb_errors(path):
        info, stat = env.info(), env.stat()
    needed = (info["last_pgno"] + 1) * stat["psize"]
    size = data_file.stat().st_size
    if size < needed:
        env.close()
        raise DatasetError(f"{path}: data.mdb is truncated ({size} of {needed} bytes; rebuild it)")
    first = _map_address(data_file)
    if first is not None:
        _MAPPED[id(env)] = (first, first + size)
    return env


def _map_address(data_file: Path) -> int | None:
    """Where this process maps ``data_file`` (LMDB's own ``map_addr`` is 0 unless the map is
    fixed), from /proc/self/maps; None where that is not available."""
    try:
        inode = data_file.stat().st_ino
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and int(fields[4]) == inode and int(fields[2], 16) == 0 \
                        and fields[5].rstrip("\n") == str(data_file):
                    return int(fields[0].split("-")[0], 16)
    except OSError:
        return None
    return None


# Fields of __meta__ and their JSON types; each episode entry's fields likewise.
_META_FIELDS = {"split": str, "canvas_px": int, "player_slots": int, "games": list, "episodes": list}
_EPISODE_FIELDS = {"game": int, "num_players": int, "steps": int}


def _bare_schema(raw: bytes):
    try:
        return json.loads(raw).get("schema_version")
    except (ValueError, AttributeError):
        return None


def read_meta(env: lmdb.Environment, path: Path) -> dict:
    """The checked ``__meta__`` record: checksum, schema version, field types."""
    with lmdb_errors(path), env.begin(buffers=True) as txn:
        value = txn.get(META_KEY)
        if value is None:
            raise DatasetError(f"{path}: no __meta__ record (incomplete LMDB)")
        _check_inside(path, env, META_KEY, value)
        raw = bytes(value)
    if raw[:1] == b"{" and _bare_schema(raw) == 1:  # schema 1 stored bare JSON, no checksum
        raise DatasetError(f"{path}: LMDB schema 1, this code reads {LMDB_SCHEMA_VERSION} (rebuild it)")
    payload = _unseal(path, META_KEY, raw)
    try:
        meta = json.loads(bytes(payload))
    except (ValueError, UnicodeDecodeError):
        raise DatasetError(f"{path}: __meta__ is not valid JSON (corrupt LMDB)") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: __meta__ is not a JSON object (corrupt LMDB)")
    if meta.get("schema_version") != LMDB_SCHEMA_VERSION:
        raise DatasetError(f"{path}: LMDB schema {meta.get('schema_version')}, this code reads {LMDB_SCHEMA_VERSION}")
    for field, kind in _META_FIELDS.items():
        if not isinstance(meta.get(field), kind):
            raise DatasetError(f"{path}: __meta__ field '{field}' is missing or not a {kind.__name__}")
    for i, ep in enumerate(meta["episodes"]):
        for field, kind in _EPISODE_FIELDS.items():
            if not isinstance(ep, dict) or not isinstance(ep.get(field), kind):
                raise DatasetError(f"{path}: __meta__ field 'episodes[{i}].{field}' is missing or not a {kind.__name__}")
        if not 0 <= ep["game"] < len(meta["games"]):
            raise DatasetError(f"{path}: __meta__ field 'episodes[{i}].game' is {ep['game']}, "
                               f"not one of the {len(meta['games'])} games")
    return meta


class ClipDataset(torch.utils.data.Dataset):
    """Clips of 1 context frame + ``clip_steps`` action steps, players padded to 8 slots.

    Item (K = clip_steps, S = 8 slots, H = W = canvas pixels):
      frames (K+1, 3, H, W) uint8 · actions (K, S) int64 (NOOP in empty slots)
      position (K+1, S, 2) int64 (x, y) canvas cells · facing (K+1, S) int64
      visible (K+1, S) bool · interact_effect (K, S) bool · present (S,) bool
      game, episode, start: int64 scalars

    The LMDB handle is looked up per process (:func:`open_lmdb`), so the dataset is safe with
    multi-worker DataLoaders (a handle is never shared across a fork).
    """

    def __init__(self, path: str | Path, clip_steps: int, stride: int = 1, games: list[str] | None = None,
                 expect_canvas_px: int | None = None):
        self.path = Path(path)
        self.clip_steps = clip_steps
        self.meta = read_meta(open_lmdb(self.path), self.path)
        self.canvas_px = int(self.meta["canvas_px"])
        if expect_canvas_px is not None and expect_canvas_px != self.canvas_px:
            raise DatasetError(f"{self.path}: frames are {self.canvas_px} px, the profile expects {expect_canvas_px} px")
        self.games = list(self.meta["games"])
        wanted = set(range(len(self.games))) if games is None else {self._game_index(g) for g in games}
        windows = []
        for e, ep in enumerate(self.meta["episodes"]):
            if ep["game"] in wanted:
                windows += [(e, s) for s in range(0, ep["steps"] - clip_steps + 1, stride)]
        if not windows:
            raise DatasetError(f"{self.path}: no clips of {clip_steps} steps (episodes too short or no games)")
        self.index = np.asarray(windows, dtype=np.int64)
        self._label_cache: dict[int, dict[str, np.ndarray]] = {}
        self._env: lmdb.Environment | None = None  # this process's handle, set by _txn()

    def _game_index(self, name: str) -> int:
        if name not in self.games:
            raise DatasetError(f"{self.path}: game '{name}' not in this LMDB ({', '.join(self.games)})")
        return self.games.index(name)

    def __len__(self) -> int:
        return len(self.index)

    def index_games(self) -> np.ndarray:
        """(len,) game index of every item."""
        games = np.asarray([ep["game"] for ep in self.meta["episodes"]], dtype=np.int64)
        return games[self.index[:, 0]]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_label_cache"] = {}
        state["_env"] = None  # handles never cross a process boundary
        return state

    def _txn(self):
        self._env = open_lmdb(self.path)
        return self._env.begin(buffers=True)

    def _frame(self, txn, episode: int, t: int) -> np.ndarray:
        key = _frame_key(episode, t)
        raw = zlib.decompress(_read(self.path, self._env, txn, key))
        size = self.canvas_px * self.canvas_px * 3
        if len(raw) != size:
            raise DatasetError(f"{self.path}: record {key.decode()} has {len(raw)} bytes, expected {size}")
        return np.frombuffer(raw, np.uint8).reshape(self.canvas_px, self.canvas_px, 3)

    def labels(self, episode: int) -> dict[str, np.ndarray]:
        """All labels of one episode (unpadded, P players)."""
        with lmdb_errors(self.path), self._txn() as txn:
            return self._labels(txn, episode)

    def _labels(self, txn, episode: int) -> dict[str, np.ndarray]:
        # Labels are a few kB per episode: parse each once per process.
        if episode not in self._label_cache:
            key = _labels_key(episode)
            with np.load(io.BytesIO(bytes(_read(self.path, self._env, txn, key)))) as z:
                self._label_cache[episode] = {k: z[k] for k in LABELS}
        return self._label_cache[episode]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        episode, start = (int(v) for v in self.index[i])
        return self.clip(episode, start)

    def clip(self, episode: int, start: int) -> dict[str, torch.Tensor]:
        """The clip of ``clip_steps`` steps of ``episode`` from step ``start`` (see the class doc)."""
        k = self.clip_steps
        if not 0 <= episode < len(self.meta["episodes"]) or not 0 <= start <= self.meta["episodes"][episode]["steps"] - k:
            raise DatasetError(f"{self.path}: no clip of {k} steps at episode {episode}, step {start}")
        with lmdb_errors(self.path), self._txn() as txn:
            frames = np.stack([self._frame(txn, episode, t) for t in range(start, start + k + 1)])
            labels = self._labels(txn, episode)
        players = labels["actions"].shape[1]

        def pad(a: np.ndarray, fill=0) -> np.ndarray:
            out = np.full(a.shape[:1] + (PLAYER_SLOTS,) + a.shape[2:], fill, dtype=a.dtype)
            out[:, :players] = a
            return out

        present = np.zeros(PLAYER_SLOTS, bool)
        present[:players] = True
        clip = slice(start, start + k + 1)
        steps = slice(start, start + k)
        return {
            "frames": torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(),
            "actions": torch.from_numpy(pad(labels["actions"][steps]).astype(np.int64)),
            "position": torch.from_numpy(pad(labels["position"][clip]).astype(np.int64)),
            "facing": torch.from_numpy(pad(labels["facing"][clip]).astype(np.int64)),
            "visible": torch.from_numpy(pad(labels["visible"][clip])),
            "interact_effect": torch.from_numpy(pad(labels["interact_effect"][steps])),
            "present": torch.from_numpy(present),
            "game": torch.tensor(self.meta["episodes"][episode]["game"]),
            "episode": torch.tensor(episode),
            "start": torch.tensor(start),
        }


# Batch fields with one entry per frame (1 + K) and per step (K), as ClipDataset returns them.
FRAME_FIELDS = ("frames", "position", "facing", "visible")
STEP_FIELDS = ("actions", "interact_effect")


def split_first_step(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A batch of (1 + K)-step clips -> (the one-step clips of their first step, the K-step clips
    that follow it, whose context frame is the first clips' last frame)."""
    first, rest = dict(batch), dict(batch)
    for key in FRAME_FIELDS:
        first[key], rest[key] = batch[key][:, :2], batch[key][:, 1:]
    for key in STEP_FIELDS:
        first[key], rest[key] = batch[key][:, :1], batch[key][:, 1:]
    rest["start"] = batch["start"] + 1
    return first, rest


def verify_lmdb(path: str | Path, progress: bool = True) -> dict:
    """Read every record and check its checksum and size; return the meta."""
    path = Path(path)
    ds = ClipDataset(path, clip_steps=1)
    with lmdb_errors(path), ds._txn() as txn:
        for e, ep in enumerate(tqdm(ds.meta["episodes"], desc=f"verify {path.name}", unit="ep", disable=not progress)):
            ds._labels(txn, e)
            for t in range(ep["steps"] + 1):
                ds._frame(txn, e, t)
    return ds.meta
