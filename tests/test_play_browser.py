"""Play mode in a real browser: headless Chromium (Debian's package) driven by Playwright.

Opens the page, starts a game, presses keys and checks that the real pane's player moved as the
keys say, that the model pane updated, that two tabs do not share state, and that a malformed
message shows an error while the server stays up. Skipped, with the reason, where Chromium or
Playwright's Python package is missing. ACTIONPARTY_PLAY_SCREENSHOT=<png> also saves a
screenshot of the page (docs/figures/play.png is one).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request

import pytest

from actionparty.games import resolve_games
from actionparty.games.actions import FACING_STEP
from actionparty.play.model import ModelBank
from actionparty.play.server import BackgroundServer, PlayConfig, create_app
from test_play import play_profile, random_checkpoint

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium executable (apt-get install chromium)")
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the play server runs a model step
    root = tmp_path_factory.mktemp("play_browser")
    profile, _ = play_profile(root)
    checkpoints = {name: random_checkpoint(profile, name, root / f"{name}.pt", seed=i)
                   for i, name in enumerate(("full", "global_action"))}
    specs = {s.name: s for s in resolve_games(profile)}
    app = create_app(ModelBank(profile, checkpoints), profile, specs, cfg=PlayConfig(max_sessions=4, workers=2))
    srv = BackgroundServer(app)
    yield srv
    srv.stop()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, url, seed: int):
    page = browser.new_page(viewport={"width": 1300, "height": 780})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_function("window.play && window.play.ready")
    page.fill("#seed", str(seed))
    page.click("#start")
    page.wait_for_function("document.getElementById('real').dataset.step === '0'")
    return page


def step_count(page) -> int:
    return int(page.get_attribute("#real", "data-step"))


def press(page, key: str) -> None:
    """Press a key that takes one step (step mode) and wait for both panes to show it."""
    before = step_count(page)
    page.keyboard.press(key)
    page.wait_for_function(f"document.getElementById('real').dataset.step === '{before + 1}'"
                           f" && document.getElementById('gen').dataset.step === '{before + 1}'")


def player(page, p: int) -> dict:
    row = page.locator(f"#players tr[data-player='{p}']")
    return {k: int(row.get_attribute(f"data-{k}")) for k in ("x", "y", "facing")}


def test_keys_move_the_real_player_and_update_the_model_pane(server, browser):
    page = open_page(browser, server.url, seed=0)
    try:
        model_hash = page.get_attribute("#gen", "data-frame-hash")
        other = player(page, 1)
        moved = False
        for _ in range(4):  # some direction from the spawn cell is open
            before = player(page, 0)
            press(page, "w")  # first keymap, player 1: forward
            after = player(page, 0)
            dx, dy = FACING_STEP[before["facing"]]
            assert after["facing"] == before["facing"]
            assert (after["x"], after["y"]) in {(before["x"] + dx, before["y"] + dy), (before["x"], before["y"])}
            if (after["x"], after["y"]) != (before["x"], before["y"]):
                moved = True
                break
            press(page, "e")  # turn right: never blocked
            assert player(page, 0)["facing"] == (before["facing"] + 1) % 4
        assert moved, "forward never moved player 1 in four directions"
        assert player(page, 1) == other  # player 2 is a person who pressed nothing: NOOP
        before = player(page, 1)
        press(page, ",")  # second keymap, player 2: turn left
        assert player(page, 1)["facing"] == (before["facing"] - 1) % 4
        assert page.get_attribute("#gen", "data-frame-hash") != model_hash  # the model pane was redrawn
        assert page.inner_text("#model-name") == "full"
        shot = os.environ.get("ACTIONPARTY_PLAY_SCREENSHOT")
        if shot:
            page.screenshot(path=shot)
    finally:
        page.close()


def test_two_tabs_do_not_share_state(server, browser):
    a = open_page(browser, server.url, seed=1)
    b = open_page(browser, server.url, seed=1)
    try:
        b_player = player(b, 0)
        for key in ("e", "e", "q"):
            press(a, key)
        assert step_count(a) == 3
        b.wait_for_timeout(200)
        assert step_count(b) == 0 and player(b, 0) == b_player
        press(b, "n")  # one step of b's own: its own step count
        assert step_count(b) == 1 and step_count(a) == 3
    finally:
        a.close(), b.close()


def test_malformed_message_shows_an_error_and_the_server_stays_up(server, browser):
    page = open_page(browser, server.url, seed=2)
    try:
        page.evaluate("window.play.sendRaw('{this is not json')")
        page.wait_for_function("document.getElementById('error').style.display === 'block'")
        assert "malformed message" in page.inner_text("#error")
        page.evaluate("window.play.send({type: 'step', actions: {'0': 'JUMP'}})")
        page.wait_for_function("document.getElementById('error').textContent.includes('unknown action')")
        press(page, "n")  # the same session still steps
        assert step_count(page) == 1
        health = json.loads(urllib.request.urlopen(server.url + "health", timeout=10).read())
        assert health["ok"] is True
    finally:
        page.close()


def test_tick_mode_pause_model_switch_and_record(server, browser):
    page = open_page(browser, server.url, seed=3)
    try:
        page.fill("#rate", "10")
        page.dispatch_event("#rate", "change")
        page.select_option("#mode", "tick")
        page.wait_for_function("Number(document.getElementById('real').dataset.step) >= 3")  # ticks, no key needed
        page.keyboard.press("p")  # pause: the steps stop
        page.wait_for_function("window.play.paused && window.play.inFlight === null")  # the last tick is back
        paused_at = step_count(page)
        page.wait_for_timeout(600)
        assert step_count(page) == paused_at
        press(page, "n")  # one step while paused
        page.select_option("#mode", "step")
        page.keyboard.press("p")  # resume (paused, step mode ignores the movement keys too)
        page.keyboard.press("m")  # player 1 to the episode policy, and back
        page.wait_for_function("document.querySelector(\"#players tr[data-player='0']\").textContent.includes('episode policy')")
        page.keyboard.press("m")
        page.wait_for_function("document.querySelector(\"#players tr[data-player='0']\").textContent.includes('person')")

        page.select_option("#model", "global_action")  # the same start, the other model
        page.wait_for_function("document.getElementById('model-name').textContent === 'global_action'")
        assert step_count(page) == 0
        assert "predicts no state" in page.inner_text("#state-match")

        page.click("#record")
        page.wait_for_function("window.play.recording === true")
        for key in ("e", "e"):
            press(page, key)
        with page.expect_download(timeout=TIMEOUT_MS) as download:
            page.click("#record")
        assert download.value.suggested_filename == "actionparty-coins-global_action.gif"
        with open(download.value.path(), "rb") as f:
            assert f.read(6) == b"GIF89a"
    finally:
        page.close()
