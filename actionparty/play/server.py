"""The play server: one page and one websocket per tab (Starlette on uvicorn).

Protocol (JSON text messages). The page sends ``{"type": ..., ...}``:

    start    game, model, seed | episode + step, [human: [bool per player]]
    step     actions: {player: action}   (people's players; the others follow the policy)
    reset    back to the same start          model   name: the same start, another model
    control  player, mode: human | policy    record  on: true | false (false -> a "gif")
    ping

and gets ``hello`` (games, models, keymaps; on connect), ``frame`` (both panes, states, marks,
scores, timings), ``controls``, ``gif`` (base64), ``pong`` or ``error`` (a message for the
page). Bad input of any kind is answered with an ``error`` and the session goes on; a dropped
socket frees its session. Sessions are capped (``max_sessions``; a tab over the cap is told so)
and freed after ``idle_timeout_s`` without a message. The model and engine work of a message
runs in a thread pool (``workers``), so one session's step never blocks another's socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from actionparty.errors import UserError
from actionparty.games.actions import CANONICAL_ACTIONS
from actionparty.play.model import ModelBank, PlayError
from actionparty.play.page import PAGE
from actionparty.play.session import PlaySession

log = logging.getLogger(__name__)
MAX_MESSAGE_CHARS = 4096
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass
class PlayConfig:
    max_sessions: int = 4
    idle_timeout_s: float = 600.0
    workers: int = 2


class SessionManager:
    """The open sessions (one per socket) under a cap."""

    def __init__(self, bank: ModelBank, profile, specs, detectors, cfg: PlayConfig):
        self.bank, self.profile, self.specs, self.detectors, self.cfg = bank, profile, specs, detectors, cfg
        self.sessions: set[PlaySession] = set()
        self._lock = threading.Lock()

    def open(self) -> PlaySession | None:
        with self._lock:
            if len(self.sessions) >= self.cfg.max_sessions:
                return None
            session = PlaySession(self.bank, self.profile, self.specs, self.detectors)
            self.sessions.add(session)
            return session

    def close(self, session: PlaySession) -> None:
        with self._lock:
            self.sessions.discard(session)
        session.close()

    def hello(self) -> dict:
        return {"type": "hello",
                "games": [{"name": s.name, "players": s.num_players, "substrate": s.substrate}
                          for s in self.specs.values()],
                "models": [m.describe() for m in self.bank.models.values()],
                "actions": list(CANONICAL_ACTIONS),
                "detectors": self.detectors is not None,
                "max_sessions": self.cfg.max_sessions, "idle_timeout_s": self.cfg.idle_timeout_s,
                "test_episodes": self.profile.episodes.per_split.test,
                "episode_steps": self.profile.episodes.steps}


def handle(session: PlaySession, message: dict) -> dict:
    """One page message -> the reply (PlayError for bad input)."""
    kind = message.get("type")
    if kind == "start":
        return session.start(message.get("game"), message.get("model"), seed=message.get("seed"),
                             episode=message.get("episode"), step=message.get("step", 0), human=message.get("human"))
    if kind == "step":
        return session.step(message.get("actions", {}))
    if kind == "reset":
        return session.reset()
    if kind == "model":
        return session.switch_model(message.get("model"))
    if kind == "control":
        return session.set_control(message.get("player"), message.get("mode"))
    if kind == "record":
        gif = session.record(message.get("on"))
        if gif is None:
            return {"type": "recording", "on": True}
        return {"type": "gif", "data": base64.b64encode(gif).decode(), "bytes": len(gif)}
    if kind == "ping":
        return {"type": "pong"}
    raise PlayError(f"unknown message type {kind!r} (known: start, step, reset, model, control, record, ping)")


def parse(text: str) -> dict:
    if len(text) > MAX_MESSAGE_CHARS:
        raise PlayError(f"message of {len(text)} characters is longer than {MAX_MESSAGE_CHARS}")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as err:
        raise PlayError(f"malformed message (not JSON: {err.msg} at character {err.pos})") from None
    if not isinstance(message, dict) or "type" not in message:
        raise PlayError("malformed message: expected a JSON object with a 'type'")
    return message


def create_app(bank: ModelBank, profile, specs, detectors=None, cfg: PlayConfig | None = None):
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    cfg = cfg or PlayConfig()
    manager = SessionManager(bank, profile, specs, detectors, cfg)
    executor = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="play")

    async def page(request):
        return HTMLResponse(PAGE)

    async def favicon(request):
        return Response(status_code=204)

    async def health(request):
        return JSONResponse({"ok": True, "sessions": len(manager.sessions), "max_sessions": cfg.max_sessions})

    async def socket_endpoint(ws: WebSocket):
        await ws.accept()
        session = manager.open()
        if session is None:
            await ws.send_json({"type": "error", "fatal": True,
                                "message": f"the server is full ({cfg.max_sessions} sessions); close a tab or try later"})
            await ws.close(code=1013)
            return
        loop = asyncio.get_running_loop()
        try:
            await ws.send_json(manager.hello())
            while True:
                try:
                    event = await asyncio.wait_for(ws.receive(), timeout=cfg.idle_timeout_s)
                except asyncio.TimeoutError:
                    await ws.send_json({"type": "error", "fatal": True,
                                        "message": f"idle for {cfg.idle_timeout_s:.0f} s: the session was freed; reload the page"})
                    await ws.close(code=1001)
                    return
                if event["type"] == "websocket.disconnect":
                    return
                message = None
                try:
                    if event.get("text") is None:
                        raise PlayError("malformed message: binary data (send JSON text)")
                    message = parse(event["text"])
                    # Awaited before the next message is read: one message of a session at a time.
                    reply = await loop.run_in_executor(executor, handle, session, message)
                except UserError as err:
                    reply = {"type": "error", "message": str(err)}
                except Exception as err:  # noqa: BLE001 - a bug in one session must not stop the server
                    log.exception("play session error")
                    reply = {"type": "error", "message": f"internal error: {type(err).__name__}: {err}"}
                if message is not None and "id" in message:  # the page matches replies to requests
                    reply["id"] = message["id"]
                await ws.send_json(reply)
        except WebSocketDisconnect:
            return
        except Exception as err:  # noqa: BLE001 - e.g. a reply to a socket the tab just dropped
            log.debug("play socket closed: %s", err)
        finally:
            manager.close(session)

    app = Starlette(routes=[Route("/", page), Route("/health", health), Route("/favicon.ico", favicon),
                            WebSocketRoute("/ws", socket_endpoint)])
    app.state.manager = manager
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (UserError naming the address if it is taken)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror})") from None
    sock.listen(64)
    sock.setblocking(False)
    return sock


class BackgroundServer:
    """uvicorn serving ``app`` on a socket in a thread (tests, bench-play): ``url``, ``stop()``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}/"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="websockets-sansio", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the play server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def serve(app, sock: socket.socket) -> None:
    """Serve on a socket from :func:`bind` until interrupted (the play command)."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    print(f"play: open http://{url_host}:{port}/  (Ctrl-C stops)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="websockets-sansio", lifespan="off")).run(sockets=[sock])
