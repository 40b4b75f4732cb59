"""LMDB datasets: exact round trip, multi-worker reading, and refusal of bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from actionparty.data.lmdb_dataset import ClipDataset, build_lmdb, verify_lmdb
from actionparty.data.npz import load_npz
from actionparty.errors import DatasetError
from actionparty.games import PLAYER_SLOTS
from conftest import write_synthetic_episodes


@pytest.fixture
def dataset(tmp_path):
    write_synthetic_episodes(tmp_path / "eps/train/alpha", "alpha", "train", episodes=2, steps=6, players=2)
    write_synthetic_episodes(tmp_path / "eps/train/beta", "beta", "train", episodes=1, steps=6, players=4, seed=7)
    out = tmp_path / "train.lmdb"
    build_lmdb([tmp_path / "eps/train/alpha", tmp_path / "eps/train/beta"], out, "train", map_size_mb=64,
               progress=False)
    return tmp_path, out


def test_round_trip_is_exact(dataset):
    root, path = dataset
    ds = ClipDataset(path, clip_steps=3)
    assert ds.games == ["alpha", "beta"]
    assert len(ds) == 3 * (6 - 3 + 1)  # three episodes, windows of 3 steps with stride 1
    for i in range(len(ds)):
        item = ds[i]
        episode, start = int(item["episode"]), int(item["start"])
        game = ds.games[int(item["game"])]
        src = load_npz(root / "eps/train" / game / f"ep_{episode if game == 'alpha' else 0:05d}.npz")
        players = src["actions"].shape[1]
        clip = slice(start, start + 4)
        assert item["frames"].shape == (4, 3, 48, 48) and item["frames"].dtype == torch.uint8
        np.testing.assert_array_equal(item["frames"].permute(0, 2, 3, 1).numpy(), src["frames"][clip])
        np.testing.assert_array_equal(item["actions"][:, :players].numpy(), src["actions"][start : start + 3])
        np.testing.assert_array_equal(item["position"][:, :players].numpy(), src["position"][clip])
        np.testing.assert_array_equal(item["facing"][:, :players].numpy(), src["facing"][clip])
        np.testing.assert_array_equal(item["visible"][:, :players].numpy(), src["visible"][clip])
        assert item["present"].tolist() == [True] * players + [False] * (PLAYER_SLOTS - players)
        assert not item["visible"][:, players:].any() and (item["actions"][:, players:] == 0).all()


def test_stride_and_game_filter(dataset):
    _, path = dataset
    ds = ClipDataset(path, clip_steps=1, stride=2, games=["beta"])
    assert len(ds) == 3 and {int(ds[i]["game"]) for i in range(len(ds))} == {1}
    with pytest.raises(DatasetError, match="game 'gamma' not in this LMDB"):
        ClipDataset(path, clip_steps=1, games=["gamma"])
    with pytest.raises(DatasetError, match="no clips of 7 steps"):
        ClipDataset(path, clip_steps=7)


def test_multi_worker_dataloader_reads_every_clip_once(dataset):
    _, path = dataset
    ds = ClipDataset(path, clip_steps=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    seen = torch.cat([torch.stack([b["episode"], b["start"]], 1) for b in loader])
    expected = torch.stack([ds[i]["episode"] for i in range(len(ds))]), torch.stack([ds[i]["start"] for i in range(len(ds))])
    assert torch.equal(seen, torch.stack(expected, 1))
    first = next(iter(loader))
    assert torch.equal(first["frames"][1], ds[1]["frames"])


def test_canvas_mismatch_is_refused(dataset):
    _, path = dataset
    with pytest.raises(DatasetError, match="frames are 48 px, the profile expects 80 px"):
        ClipDataset(path, clip_steps=1, expect_canvas_px=80)


def test_corrupted_record_is_refused(dataset):
    _, path = dataset
    data = bytearray((path / "data.mdb").read_bytes())
    ds = ClipDataset(path, clip_steps=1)
    frame = ds._frame(ds._txn(), 0, 2).tobytes()
    # Flip bytes inside the stored (compressed) value of a frame: find a payload by
    # corrupting the middle of the file where frame records live.
    import zlib

    needle = zlib.compress(frame, 1)[8:40]
    at = bytes(data).find(needle)
    assert at > 0
    data[at + 5] ^= 0xFF
    (path / "data.mdb").write_bytes(bytes(data))
    ds = ClipDataset(path, clip_steps=1)
    with pytest.raises(DatasetError, match=r"record f/000000/0002 failed its checksum"):
        for i in range(len(ds)):
            ds[i]
    with pytest.raises(DatasetError, match="failed its checksum"):
        verify_lmdb(path, progress=False)


def test_truncated_file_is_refused(dataset):
    _, path = dataset
    data = (path / "data.mdb").read_bytes()
    (path / "data.mdb").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated|cannot open LMDB"):
        ClipDataset(path, clip_steps=1)


def test_missing_lmdb_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="not an LMDB dataset"):
        ClipDataset(tmp_path / "nope.lmdb", clip_steps=1)


def test_bad_episode_checksum_refused_and_nothing_written(tmp_path):
    write_synthetic_episodes(tmp_path / "eps/alpha", "alpha", "train", episodes=1, steps=3, players=2)
    with open(tmp_path / "eps/alpha/ep_00000.npz", "r+b") as f:
        f.seek(100)
        f.write(b"\x00garbage")
    out = tmp_path / "train.lmdb"
    with pytest.raises(DatasetError, match=r"ep_00000.npz: sha256 differs"):
        build_lmdb([tmp_path / "eps/alpha"], out, "train", map_size_mb=16, progress=False)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".train")]


def test_split_and_canvas_mismatch_refused(tmp_path):
    write_synthetic_episodes(tmp_path / "a", "alpha", "train", episodes=1, steps=3, players=2)
    write_synthetic_episodes(tmp_path / "b", "beta", "val", episodes=1, steps=3, players=2)
    with pytest.raises(DatasetError, match=r"split\(s\) \['train', 'val'\], expected 'train'"):
        build_lmdb([tmp_path / "a", tmp_path / "b"], tmp_path / "x.lmdb", "train", map_size_mb=16, progress=False)
    write_synthetic_episodes(tmp_path / "c", "gamma", "train", episodes=1, steps=3, players=2, canvas_cells=7)
    with pytest.raises(DatasetError, match="disagree on canvas size"):
        build_lmdb([tmp_path / "a", tmp_path / "c"], tmp_path / "x.lmdb", "train", map_size_mb=16, progress=False)


def _copy_with(path, tmp_path, edit) -> Path:
    """A copy of the LMDB folder ``path`` whose data.mdb bytes went through ``edit``."""
    copy = tmp_path / "damaged.lmdb"
    copy.mkdir()
    data = bytearray((path / "data.mdb").read_bytes())
    edit(data)
    (copy / "data.mdb").write_bytes(bytes(data))
    return copy


def test_flipped_byte_in_meta_is_refused(dataset, tmp_path):
    """One flipped bit in __meta__ renames a game ("alpha" -> "alphb"): the JSON stays valid,
    so only the checksum can tell, and it does, on open."""
    _, path = dataset

    def rename_game(data):
        # Every copy: LMDB may keep a stale one in a free page, and only the live one matters.
        pattern, at = b'"games": ["alpha"', -1
        while (at := bytes(data).find(pattern, at + 1)) >= 0:
            data[at + len(pattern) - 2] ^= 0x03  # 'a' -> 'b'

    damaged = _copy_with(path, tmp_path, rename_game)
    with pytest.raises(DatasetError, match=r"damaged.lmdb: record __meta__ failed its checksum"):
        ClipDataset(damaged, clip_steps=1)


def test_schema_1_lmdb_is_refused_with_its_version(dataset):
    """Schema 1 stored __meta__ as bare JSON (no checksum): named as such, not as corrupt."""
    import json

    import lmdb

    from actionparty.data.lmdb_dataset import META_KEY, _OPEN

    _, path = dataset
    _OPEN.clear()
    env = lmdb.open(str(path), subdir=True)
    with env.begin(write=True) as txn:
        txn.put(META_KEY, json.dumps({"schema_version": 1, "split": "train"}).encode())
    env.close()
    with pytest.raises(DatasetError, match=r"LMDB schema 1, this code reads 2 \(rebuild it\)"):
        ClipDataset(path, clip_steps=1)


def _meta_page(data, psize=4096):
    """(offset of the current LMDB meta page, its main-DB root page number). LMDB keeps two
    meta pages (0 and 1); the one with the higher txnid is current. In a meta page, the main
    DB's root pgno sits at byte 128 and the txnid at byte 144 (64-bit LMDB layout)."""
    import struct

    page = max((0, 1), key=lambda i: struct.unpack_from("<Q", data, i * psize + 144)[0])
    return page * psize, struct.unpack_from("<Q", data, page * psize + 128)[0]


@pytest.mark.parametrize("damage", ["root pointer", "root page flags"])
def test_lmdb_errors_are_one_line_dataset_errors(dataset, tmp_path, capsys, damage):
    """B-tree damage surfaces in py-lmdb as lmdb.Error subclasses (PageNotFoundError,
    CorruptedError, ...): refused in one line naming the file, by the reader and the CLI."""
    from actionparty.cli import main

    _, path = dataset

    def edit(data):
        meta, root = _meta_page(data)
        if damage == "root pointer":
            data[meta + 129] ^= 0x40  # the root page number now lies far past the file
        else:
            data[root * 4096 + 10] = 0x04  # page flags: the root now claims to be an overflow page

    damaged = _copy_with(path, tmp_path, edit)
    with pytest.raises(DatasetError, match=r"damaged.lmdb: LMDB error \(\w+Error"):
        verify_lmdb(damaged, progress=False)
    assert main(["verify-lmdb", "--quiet", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "damaged.lmdb" in err and "Traceback" not in err


def test_record_length_pointing_past_the_file_is_refused(dataset, tmp_path):
    """A damaged value length that reaches past the end of data.mdb is refused before a byte
    of it is read (reading it would kill the process with SIGBUS)."""
    import struct

    from actionparty.data.lmdb_dataset import META_KEY

    _, path = dataset

    def grow_meta(data):
        # A leaf node is: data size (u32), flags (u16), key size (u16), key, data.
        at = bytes(data).index(META_KEY) - 8
        assert struct.unpack_from("<H", data, at + 6)[0] == len(META_KEY)
        struct.pack_into("<I", data, at, 1 << 30)

    damaged = _copy_with(path, tmp_path, grow_meta)
    with pytest.raises(DatasetError, match=r"damaged.lmdb: (record __meta__ points outside data.mdb|LMDB error)"):
        ClipDataset(damaged, clip_steps=1)


def test_same_episodes_give_the_same_lmdb_bytes(tmp_path):
    """DVC reruns everything downstream when data bytes change, so an LMDB is a function of its
    episodes: built in another process (other leftover memory, another pid) and more than one
    zip-timestamp tick (2 s) later, the folder is the same bytes (no lock file, zeroed page
    slack, fixed timestamps in the label records)."""
    import subprocess
    import sys
    import time

    from conftest import REPO, subprocess_env

    folder = tmp_path / "eps/alpha"
    write_synthetic_episodes(folder, "alpha", "train", episodes=2, steps=4, players=2)
    start = time.monotonic()
    build_lmdb([folder], tmp_path / "a.lmdb", "train", map_size_mb=16, progress=False)
    time.sleep(max(0.0, 2.1 - (time.monotonic() - start)))
    code = (f"from actionparty.data.lmdb_dataset import build_lmdb; "
            f"build_lmdb([{str(folder)!r}], {str(tmp_path / 'b.lmdb')!r}, 'train', map_size_mb=16, progress=False)")
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env(), cwd=REPO)
    files = {name: sorted(p.name for p in (tmp_path / name).iterdir()) for name in ("a.lmdb", "b.lmdb")}
    assert files["a.lmdb"] == files["b.lmdb"] == ["data.mdb"]
    assert (tmp_path / "a.lmdb/data.mdb").read_bytes() == (tmp_path / "b.lmdb/data.mdb").read_bytes()
