"""Play mode: a trained world model as a game in the browser, beside the real Melting Pot engine.

    engine.py     EnginePane: the real game on the profile's canvas, the episode policy, starts
    model.py      ModelBank (the --model list, loaded once, read-only) and ModelPane (the
                  rollout Sampler, one game step at a time)
    session.py    PlaySession: one tab's game: both panes, controls, live marks, recording
    server.py     the ASGI app (one page, one websocket per tab), session cap and idle timeout
    page.py       the page (self-contained HTML/JS)
    bench.py      bench-play: steps/s, latency, concurrent sessions, memory
    commands.py   CLI: play, bench-play
"""
