"""One LMDB per split, and a torch Dataset of clips read from it.

Layout (schema 1, documented in docs/DATASET.md). Every value but ``__meta__`` starts
with the CRC32 of the rest (4 bytes, little endian), checked on every read:

``__meta__``            JSON: schema_version, split, canvas_px, player_slots, games, episodes
``e/{episode:06d}``     uncompressed .npz of the episode's labels (actions, position, facing,
                        visible, interact_effect; see data.episodes)
``f/{episode:06d}/{t:04d}``  zlib-compressed frame t, uint8 (H, W, 3)

Clips are not stored: a reader asks for ``clip_steps`` actions (1 context frame + K
frames) and builds the index of every window from the episode lengths, so the same LMDB
serves 1-step training transitions and 20-step evaluation rollouts.
"""

from __future__ import annotations

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
from actionparty.data.npz import load_npz, sha256_file
from actionparty.errors import DatasetError
from actionparty.games import PLAYER_SLOTS

LMDB_SCHEMA_VERSION = 1
META_KEY = b"__meta__"
LABELS = ("actions", "position", "facing", "visible", "interact_effect")


def _frame_key(episode: int, t: int) -> bytes:
    return f"f/{episode:06d}/{t:04d}".encode()


def _labels_key(episode: int) -> bytes:
    return f"e/{episode:06d}".encode()


def _seal(payload: bytes) -> bytes:
    return struct.pack("<I", zlib.crc32(payload)) + payload


def _unseal(path: Path, key: bytes, value: bytes | memoryview | None) -> memoryview:
    if value is None:
        raise DatasetError(f"{path}: record {key.decode()} is missing (incomplete or mismatched LMDB)")
    value = memoryview(value)
    if len(value) < 4 or struct.unpack("<I", value[:4])[0] != zlib.crc32(value[4:]):
        raise DatasetError(f"{path}: record {key.decode()} failed its checksum (corrupt LMDB; rebuild it)")
    return value[4:]


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

    meta = {"schema_version": LMDB_SCHEMA_VERSION, "split": split, "player_slots": PLAYER_SLOTS,
            "games": games, "episodes": []}
    total = sum(len(m["episodes"]) for _, m in manifests)
    with atomic_path(out_path) as tmp:
        env = lmdb.open(str(tmp), map_size=map_size_mb << 20, subdir=True, meminit=False, map_async=False)
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
                        buf = io.BytesIO()
                        np.savez(buf, **{k: arrays[k] for k in LABELS})
                        txn.put(_labels_key(index), _seal(buf.getvalue()))
                    meta["episodes"].append({"game": game_index, "num_players": int(arrays["actions"].shape[1]),
                                             "steps": int(arrays["actions"].shape[0]), "seed": entry["seed"],
                                             "source": f"{manifest['game']}/{entry['file']}"})
                    index += 1
                    bar.update()
            bar.close()
            with env.begin(write=True) as txn:
                txn.put(META_KEY, json.dumps(meta).encode())
            env.sync(True)
        except lmdb.MapFullError:
            raise DatasetError(f"{out_path}: LMDB map full; raise lmdb.map_size_mb (now {map_size_mb})") from None
        finally:
            env.close()
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
    info, stat = env.info(), env.stat()
    needed = (info["last_pgno"] + 1) * stat["psize"]
    if data_file.stat().st_size < needed:
        env.close()
        raise DatasetError(f"{path}: data.mdb is truncated ({data_file.stat().st_size} of {needed} bytes; rebuild it)")
    return env


def read_meta(env: lmdb.Environment, path: Path) -> dict:
    with env.begin() as txn:
        raw = txn.get(META_KEY)
    if raw is None:
        raise DatasetError(f"{path}: no __meta__ record (incomplete LMDB)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise DatasetError(f"{path}: __meta__ is not valid JSON (corrupt LMDB)") from None
    if meta.get("schema_version") != LMDB_SCHEMA_VERSION:
        raise DatasetError(f"{path}: LMDB schema {meta.get('schema_version')}, this code reads {LMDB_SCHEMA_VERSION}")
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
        return state

    def _txn(self):
        return open_lmdb(self.path).begin(buffers=True)

    def _frame(self, txn, episode: int, t: int) -> np.ndarray:
        key = _frame_key(episode, t)
        raw = zlib.decompress(_unseal(self.path, key, txn.get(key)))
        size = self.canvas_px * self.canvas_px * 3
        if len(raw) != size:
            raise DatasetError(f"{self.path}: record {key.decode()} has {len(raw)} bytes, expected {size}")
        return np.frombuffer(raw, np.uint8).reshape(self.canvas_px, self.canvas_px, 3)

    def labels(self, episode: int) -> dict[str, np.ndarray]:
        """All labels of one episode (unpadded, P players)."""
        with self._txn() as txn:
            return self._labels(txn, episode)

    def _labels(self, txn, episode: int) -> dict[str, np.ndarray]:
        # Labels are a few kB per episode: parse each once per process.
        if episode not in self._label_cache:
            key = _labels_key(episode)
            with np.load(io.BytesIO(bytes(_unseal(self.path, key, txn.get(key))))) as z:
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
        with self._txn() as txn:
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
    with ds._txn() as txn:
        for e, ep in enumerate(tqdm(ds.meta["episodes"], desc=f"verify {path.name}", unit="ep", disable=not progress)):
            ds._labels(txn, e)
            for t in range(ep["steps"] + 1):
                ds._frame(txn, e, t)
    return ds.meta
