"""Play mode: sessions (start, step, reset, switch model, record), what the model pane draws
against the rollout the metrics use, bad input, and the server's cap and idle timeout."""

from __future__ import annotations

import asyncio
import io
import json
import time
import urllib.request

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from actionparty.config import validate_profile
from actionparty.data.episodes import episode_seed, generate_episodes
from actionparty.data.lmdb_dataset import ClipDataset, build_lmdb
from actionparty.games import resolve_games
from actionparty.games.actions import CANONICAL_ACTIONS, NOOP, TURN_LEFT, TURN_RIGHT
from actionparty.model.checkpoint import save_checkpoint
from actionparty.model.factory import build_world_model
from actionparty.play.model import ModelBank, ModelPane, PlayError, parse_model_args
from actionparty.play.server import BackgroundServer, PlayConfig, bind, create_app, handle, parse
from actionparty.play.session import PlaySession
from actionparty.rollout.generate import rollout_windows
from actionparty.variants import load_variant
from conftest import REPO

MODELS = ("full", "global_action", "text_action")


# ------------------------------------------------------------------------ fixtures (also the browser test's)


def play_profile(tmp_path, games=("coins",)):
    """The smoke profile on ``games``, as a file and validated."""
    data = yaml.safe_load((REPO / "params/smoke.yaml").read_text())
    data["catalogue"] = str(REPO / "params/games.yaml")
    data["games"] = list(games)
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return validate_profile(data, str(path)), path


def random_checkpoint(profile, variant_name: str, path, seed: int = 0, scale: float = 0.05):
    """A finetune checkpoint of ``variant_name`` whose weights are the fresh ones plus seeded noise
    (fresh output layers are zero: such a model only copies its context, and nothing would move)."""
    variant = load_variant(variant_name, REPO / "params/variants")
    torch.manual_seed(seed)
    model, _, _ = build_world_model(profile, variant=variant)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    weights = model.state_dict()
    save_checkpoint(path, model=weights, ema={"shadow": weights}, step=0, profile=profile.model_dump(),
                    stage="finetune", train_clip_steps=1, variant=variant_name, variant_config=variant.model_dump())
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Smoke profile on coins, three random-weight models, and a real test split of coins."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the play server runs a model step
    root = tmp_path_factory.mktemp("play")
    profile, path = play_profile(root)
    checkpoints = {name: random_checkpoint(profile, name, root / f"{name}.pt", seed=i) for i, name in enumerate(MODELS)}
    specs = {s.name: s for s in resolve_games(profile)}
    bank = ModelBank(profile, checkpoints)
    generate_episodes(specs["coins"], "test", profile, root / "episodes/coins", progress=False)
    build_lmdb([root / "episodes/coins"], root / "test.lmdb", "test", map_size_mb=64, progress=False)
    yield dict(profile=profile, profile_path=path, specs=specs, bank=bank, checkpoints=checkpoints,
               lmdb=root / "test.lmdb", root=root)
    torch.set_num_threads(threads)


def session(world, detectors=None) -> PlaySession:
    return PlaySession(world["bank"], world["profile"], world["specs"], detectors)


# ------------------------------------------------------------------------ model pane = rollout


@pytest.mark.parametrize("name", MODELS)
def test_model_pane_draws_what_the_rollout_draws(world, name):
    """Same context, states and actions -> the same frames (and predicted states) as rollout_windows."""
    profile, loaded = world["profile"], world["bank"].get(name).loaded
    dataset = ClipDataset(world["lmdb"], clip_steps=4, expect_canvas_px=profile.canvas_px)
    windows = {"episode": np.array([1]), "start": np.array([2]), "game": np.array([0])}
    ref = rollout_windows(loaded, dataset, windows, profile, seed=profile.rollout.seed, batch_size=1, progress=False)
    clip = dataset.clip(1, 2)
    players = world["specs"]["coins"].num_players
    pane = ModelPane(world["bank"].get(name), profile, "coins", players)
    pane.start(clip["frames"][0].permute(1, 2, 0).numpy(), clip["position"][0, :players].numpy(),
               clip["facing"][0, :players].numpy())
    for t in range(4):
        frame, position, facing = pane.step(clip["actions"][t, :players].numpy())
        np.testing.assert_array_equal(frame, ref["frames"][0, t + 1])
        if "pred_position" in ref:
            np.testing.assert_array_equal(position, ref["pred_position"][0, t + 1, :players])
            np.testing.assert_array_equal(facing, ref["pred_facing"][0, t + 1, :players])
        else:
            assert position is None
    assert not np.array_equal(ref["frames"][0, 4], ref["frames"][0, 0])  # the model really draws


def test_test_window_replays_the_recorded_episode_policy(world):
    """A test-window start plays the episode's own policy: the actions are the recorded ones."""
    dataset = ClipDataset(world["lmdb"], clip_steps=4, expect_canvas_px=world["profile"].canvas_px)
    s = session(world)
    msg = s.start("coins", "full", episode=1, step=2, human=[False, False])
    seed = episode_seed(world["profile"].episodes.seed, "test", 1)
    assert msg["start"] == {"kind": "window", "seed": seed, "step": 2, "episode": 1}
    assert msg["episode_step"] == 2
    recorded = dataset.clip(1, 2)["actions"][:, :2].numpy()
    for t in range(4):
        assert s.step({})["actions"] == [CANONICAL_ACTIONS[a] for a in recorded[t]]
    s.close()


# ------------------------------------------------------------------------ session logic


def test_start_step_reset_and_switch_model(world):
    s = session(world)
    first = s.start("coins", "full", seed=7)
    assert first["step"] == 0 and first["players"] == 2 and first["human"] == [True, True]
    assert first["pred_state"] is None and first["real"].startswith("data:image/png;base64,")
    facing0 = first["real_state"][0][2]
    msg = s.step({"0": "TURN_RIGHT"})  # a turn is never blocked
    assert msg["step"] == 1 and msg["actions"] == ["TURN_RIGHT", "NOOP"]  # person 2 idle: NOOP
    assert msg["real_state"][0][2] == (facing0 + 1) % 4
    assert msg["real_state"][1][:3] == first["real_state"][1][:3]  # a NOOP player stays put
    assert len(msg["pred_state"]) == 2 and len(msg["match"]) == 2
    assert all(m in (True, False) for m in msg["match"])  # both visible: both judged
    assert msg["score"]["MA_changing"] is None and msg["score"]["detectors"] is False  # no detectors: unavailable
    frames = [msg["model_frame"]] + [s.step({"0": a})["model_frame"] for a in ("FORWARD", "STRAFE_LEFT")]

    # Reset: the same start (the engine may need a few resets to respawn the same way).
    again = s.reset()
    assert again["step"] == 0 and again["same_start"] in (True, False)
    if again["same_start"]:
        assert again["real"] == first["real"]
        replay = [s.step({"0": a})["model_frame"] for a in ("TURN_RIGHT", "FORWARD", "STRAFE_LEFT")]
        assert replay == frames  # same start, same actions: the same frames (seeded sampler)

    # Policy players follow the episode policy of the start's seed.
    s.set_control(1, "policy")
    policy = s.engine.policy(s.engine.t)
    assert s.step({"0": NOOP})["actions"][1] == CANONICAL_ACTIONS[policy[1]]

    switched = s.switch_model("global_action")
    assert switched["model"] == "global_action" and switched["step"] == 0
    assert switched["predicts_state"] is False
    step = s.step({"0": TURN_LEFT})
    assert step["pred_state"] is None and step["match"] == [None, None]
    s.close()


def test_sessions_do_not_share_state(world):
    a, b = session(world), session(world)
    a.start("coins", "full", seed=1)
    b.start("coins", "full", seed=1)
    b_before = b.real_prev.facing.copy()
    for _ in range(3):
        a.step({"0": TURN_RIGHT})
    assert a.steps == 3 and b.steps == 0
    np.testing.assert_array_equal(b.real_prev.facing, b_before)
    assert a.pane.sampler is not b.pane.sampler and a.pane.sampler.cache is not None
    a.close(), b.close()


def test_record_gives_a_gif_of_both_panes(world):
    s = session(world)
    s.start("coins", "full", seed=2)
    s.record(True)
    for _ in range(3):
        s.step({"0": TURN_RIGHT})
    gif = Image.open(io.BytesIO(s.record(False)))
    assert gif.format == "GIF" and gif.n_frames == 4  # the frame recording started on + 3 steps
    px = world["profile"].canvas_px
    assert gif.size == ((2 * px + 4) * 3, px * 3)
    with pytest.raises(PlayError, match="not recording"):
        s.record(False)
    s.close()


def test_live_scores_with_detectors(world):
    """With detectors, the session's MA_changing and SP are shares in [0, 1] over counted steps."""
    from actionparty.eval.detectors import Detectors, build_models

    cfg = world["profile"].eval
    torch.manual_seed(0)
    tile, idm = build_models(1, cfg)
    detectors = Detectors(tile.eval(), idm.eval(), ["coins"], {"coins": np.ones((12, 12), bool)},
                          world["profile"].canvas_px, cfg)
    s = session(world, detectors)
    s.start("coins", "full", seed=3)
    for a in (TURN_RIGHT, TURN_LEFT, TURN_RIGHT):
        score = s.step({"0": a, "1": a})["score"]
    assert score["detectors"] and score["ma_counted"] == 6 and score["sp_counted"] == 6  # every turn changes facing
    assert 0.0 <= score["MA_changing"] <= 1.0 and 0.0 <= score["SP"] <= 1.0
    s.close()


# ------------------------------------------------------------------------ bad input


def test_bad_input_gets_a_message_and_the_session_goes_on(world):
    s = session(world)
    bad = [
        ({"type": "step", "actions": {}}, "start one first"),
        ({"type": "start", "game": "chess", "model": "full"}, "unknown game 'chess'"),
        ({"type": "start", "game": "coins", "model": "/etc/passwd"}, "unknown model"),
        ({"type": "start", "game": "coins", "model": "full", "seed": -1}, "seed must be"),
        ({"type": "start", "game": "coins", "model": "full", "episode": 0, "step": 10**6}, "step must be"),
        ({"type": "start", "game": "coins", "model": "full", "episode": 2}, "test episode must be"),  # smoke: 2
        ({"type": "dance"}, "unknown message type"),
    ]
    for message, expected in bad:
        with pytest.raises(PlayError, match=expected):
            handle(s, message)
    handle(s, {"type": "start", "game": "coins", "model": "full"})
    for message, expected in [({"type": "step", "actions": {"0": "JUMP"}}, "unknown action 'JUMP'"),
                              ({"type": "step", "actions": {"5": 1}}, "player 5 does not exist"),
                              ({"type": "step", "actions": [1, 2]}, "actions must be an object"),
                              ({"type": "model", "model": "nope"}, "unknown model 'nope'"),
                              ({"type": "control", "player": 0, "mode": "robot"}, "mode must be"),
                              ({"type": "record", "on": "yes"}, "record needs on")]:
        with pytest.raises(PlayError, match=expected):
            handle(s, message)
    for text, expected in [("not json", "not JSON"), ("[1, 2]", "JSON object"), ("x" * 5000, "longer than")]:
        with pytest.raises(PlayError, match=expected):
            parse(text)
    assert handle(s, {"type": "step", "actions": {"0": 6}})["step"] == 1  # still playing
    s.close()


def test_model_list_is_checked(world, tmp_path, capsys):
    for values, expected in [(["full"], "expected NAME=CHECKPOINT"), (["Full=x.pt"], "variant name"),
                             (["full=a.pt", "full=b.pt"], "given twice"), ([], "at least one")]:
        with pytest.raises(PlayError, match=expected):
            parse_model_args(values)
    with pytest.raises(PlayError, match="checkpoint of 'full', not of model 'global_action'"):
        ModelBank(world["profile"], {"global_action": world["checkpoints"]["full"]})
    from actionparty.cli import main

    args = ["play", "--profile", str(world["profile_path"]), "--model", f"full={tmp_path / 'missing.pt'}"]
    assert main(args + ["--port", "0"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {tmp_path / 'missing.pt'}: checkpoint not found"]
    taken = bind("127.0.0.1", 0)  # a port in use: refused in one line before any model loads
    try:
        port = taken.getsockname()[1]
        assert main(args[:-1] + [f"full={world['checkpoints']['full']}", "--port", str(port)]) == 2
    finally:
        taken.close()
    assert capsys.readouterr().err.splitlines() == [
        f"error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use)"]


# ------------------------------------------------------------------------ server


def test_server_caps_sessions_frees_idle_ones_and_survives_bad_messages(world):
    from websockets.asyncio.client import connect

    app = create_app(world["bank"], world["profile"], world["specs"],
                     cfg=PlayConfig(max_sessions=1, idle_timeout_s=1.5, workers=1))
    server = BackgroundServer(app)
    url = server.url.replace("http://", "ws://") + "ws"

    async def scenario():
        async with connect(url) as first:
            hello = json.loads(await first.recv())
            assert hello["type"] == "hello" and [m["name"] for m in hello["models"]] == list(MODELS)
            assert all("path" not in m and ".pt" not in json.dumps(m) for m in hello["models"])  # names, never paths
            async with connect(url) as second:  # over the cap
                refused = json.loads(await second.recv())
                assert refused["type"] == "error" and "server is full" in refused["message"]
            await first.send("{oops")
            reply = json.loads(await first.recv())
            assert reply["type"] == "error" and "malformed message" in reply["message"]
            await first.send(json.dumps({"type": "start", "game": "coins", "model": "full", "id": 7}))
            frame = json.loads(await first.recv())
            assert frame["type"] == "frame" and frame["id"] == 7
            idle = json.loads(await asyncio.wait_for(first.recv(), 10))  # nothing sent for 1.5 s
            assert idle["type"] == "error" and "idle" in idle["message"]
        await asyncio.sleep(0.2)
        async with connect(url) as third:  # the idle session was freed: room again
            assert json.loads(await third.recv())["type"] == "hello"
            await third.send(json.dumps({"type": "start", "game": "coins", "model": "full"}))
            await third.send(json.dumps({"type": "step", "actions": {"0": 1}}))  # dropped before the reply
        for _ in range(200):  # the server finishes the dropped tab's work, then frees its session
            if json.loads(urllib.request.urlopen(server.url + "health", timeout=5).read())["sessions"] == 0:
                break
            await asyncio.sleep(0.05)
        async with connect(url) as fourth:  # the dropped tab's session was freed; the server is up
            assert json.loads(await fourth.recv())["type"] == "hello"
            await fourth.send(json.dumps({"type": "start", "game": "coins", "model": "global_action"}))
            assert json.loads(await fourth.recv())["model"] == "global_action"

    try:
        asyncio.run(asyncio.wait_for(scenario(), 60))
        deadline = time.monotonic() + 5
        while app.state.manager.sessions and time.monotonic() < deadline:  # the last socket's close is async
            time.sleep(0.05)
        assert app.state.manager.sessions == set()
    finally:
        server.stop()
