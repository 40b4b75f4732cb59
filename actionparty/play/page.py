"""The play page: one self-contained HTML document (no external scripts, styles or fonts)."""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ActionParty play</title>
<style>
 body { font: 14px/1.4 system-ui, sans-serif; margin: 12px; background: #f6f6f4; color: #222; }
 h1 { font-size: 18px; margin: 0 0 8px; }
 .bar { display: flex; flex-wrap: wrap; gap: 8px 14px; align-items: center; margin-bottom: 8px; }
 .bar label { white-space: nowrap; }
 input[type=number] { width: 6em; }
 .panes { display: flex; gap: 16px; align-items: flex-start; }
 .pane { background: #fff; padding: 6px; border: 1px solid #ccc; }
 .pane h2 { font-size: 14px; margin: 0 0 4px; }
 canvas { image-rendering: pixelated; display: block; background: #000; }
 #error { color: #fff; background: #b00020; padding: 4px 8px; display: none; margin-bottom: 8px; }
 #status { color: #555; min-height: 1.4em; }
 table { border-collapse: collapse; background: #fff; margin-top: 8px; }
 td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: center; }
 .ok { color: #0a7d24; font-weight: bold; } .bad { color: #b00020; font-weight: bold; } .na { color: #999; }
 .stats span { margin-right: 14px; }
 .help { color: #555; font-size: 12px; max-width: 900px; }
 kbd { border: 1px solid #aaa; border-radius: 3px; padding: 0 3px; background: #fff; font-size: 12px; }
 tr.km1 td:first-child { background: #ffe9a8; } tr.km2 td:first-child { background: #cfe6ff; }
</style>
</head>
<body>
<h1>ActionParty play: the world model beside the real Melting Pot engine</h1>
<div id="error" role="alert"></div>
<div class="bar">
 <label>game <select id="game"></select></label>
 <label>model <select id="model"></select></label>
 <label><input type="radio" name="kind" value="seed" checked> reset with seed <input id="seed" type="number" min="0" value="0"></label>
 <label><input type="radio" name="kind" value="window"> test window: episode <input id="episode" type="number" min="0" value="0">
  step <input id="wstep" type="number" min="0" value="0"></label>
 <button id="start">start</button>
</div>
<div class="bar">
 <label>mode <select id="mode"><option value="step">step (one step per key)</option><option value="tick">tick (fixed steps/s)</option></select></label>
 <label>steps/s <input id="rate" type="number" min="1" max="30" value="8"></label>
 <label><input id="markers" type="checkbox" checked> predicted-state markers</label>
 <button id="record">record</button>
 <span id="paused"></span>
</div>
<div class="panes">
 <div class="pane"><h2>world model: <span id="model-name">-</span></h2><canvas id="gen" width="384" height="384"></canvas></div>
 <div class="pane"><h2>real Melting Pot engine</h2><canvas id="real" width="384" height="384"></canvas></div>
 <div>
  <div class="stats">
   <div><span>step <b id="step">-</b></span><span>steps/s <b id="sps">-</b></span></div>
   <div><span>latency <b id="latency">-</b></span></div>
   <div><span>model <b id="model-ms">-</b> ms</span><span>engine <b id="engine-ms">-</b> ms</span></div>
   <div style="margin-top:6px">session: <span>MA_changing <b id="ma">-</b></span><span>SP <b id="sp">-</b></span></div>
   <div><span>model's own state = engine's <b id="state-match">-</b></span></div>
   <div class="help" id="score-note"></div>
  </div>
  <table id="players"><thead><tr><th>player</th><th>driven by</th><th>engine (x, y, facing)</th><th>model's state</th><th>match</th></tr></thead><tbody></tbody></table>
 </div>
</div>
<div id="status"></div>
<p class="help">
 Keys: first person <kbd>W</kbd>/<kbd>S</kbd> forward/back, <kbd>A</kbd>/<kbd>D</kbd> strafe, <kbd>Q</kbd>/<kbd>E</kbd> turn,
 <kbd>Space</kbd> interact; <kbd>1</kbd>..<kbd>7</kbd> pick the player (it becomes a person's).
 Second person: arrows, <kbd>,</kbd>/<kbd>.</kbd> turn, <kbd>/</kbd> interact (Enter resets); <kbd>Shift</kbd>+number picks its player.
 <kbd>Enter</kbd> reset to the same start, <kbd>P</kbd> pause, <kbd>N</kbd> one step (while paused or in step mode),
 <kbd>M</kbd> switch the first person's player between person and episode policy.
 Players nobody drives follow the episode policy; a person's idle player does NOOP.
 The match column compares the model's <i>own predicted state</i> (cell and facing) with the engine's, not a detector's reading of the frame
 (models without subject states predict none). MA_changing and SP use the evaluation detectors when the server has them.
</p>
<script>
"use strict";
const KEYMAPS = [
  {KeyW: 1, KeyS: 2, KeyA: 3, KeyD: 4, KeyQ: 5, KeyE: 6, Space: 7},
  {ArrowUp: 1, ArrowDown: 2, ArrowLeft: 3, ArrowRight: 4, Comma: 5, Period: 6, Slash: 7},
];
const COLOURS = ["#ff3b30", "#34c759", "#007aff", "#ffcc00", "#af52de", "#ff9500", "#5ac8fa", "#ff2d55"];
const $ = (id) => document.getElementById(id);
const play = {
  ws: null, hello: null, frame: null, nextId: 1, inFlight: null, sentAt: {}, paused: false,
  keymapPlayer: [0, 1], held: [null, null], latched: [null, null], arrivals: [], latencies: [], errors: 0,
};
window.play = play;

function showError(text) { const e = $("error"); e.textContent = text; e.style.display = "block"; play.errors++; play.lastError = text; }
function clearError() { $("error").style.display = "none"; }
function status(text) { $("status").textContent = text; }

function send(obj) {
  if (!play.ws || play.ws.readyState !== 1) { showError("not connected to the play server (reload the page)"); return null; }
  obj.id = play.nextId++;
  play.sentAt[obj.id] = performance.now();
  play.ws.send(JSON.stringify(obj));
  return obj.id;
}
play.send = send;
play.sendRaw = (text) => play.ws.send(text);

function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  play.ws = ws;
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { showError("unreadable reply from the server"); return; }
    const sent = play.sentAt[msg.id];
    if (sent !== undefined) { delete play.sentAt[msg.id]; }
    if (msg.id !== undefined && msg.id === play.inFlight) play.inFlight = null;
    if (msg.type === "hello") onHello(msg);
    else if (msg.type === "frame") { if (sent !== undefined && msg.actions) { play.latencies.push(performance.now() - sent); } onFrame(msg); }
    else if (msg.type === "controls") { if (play.frame) { play.frame.human = msg.human; drawPlayers(); } }
    else if (msg.type === "gif") saveGif(msg);
    else if (msg.type === "recording") { play.recording = true; $("record").textContent = "stop recording (download GIF)"; }
    else if (msg.type === "error") { showError(msg.message); if (msg.fatal) status("session closed by the server"); }
  };
  ws.onclose = () => { status("disconnected from the play server: reload the page to start a new session"); play.connected = false; };
  ws.onopen = () => { play.connected = true; };
}

function onHello(msg) {
  play.hello = msg;
  $("episode").max = msg.test_episodes - 1; $("wstep").max = msg.episode_steps - 1;
  $("game").innerHTML = msg.games.map((g) => `<option value="${g.name}">${g.name} (${g.players} players)</option>`).join("");
  $("model").innerHTML = msg.models.map((m) => `<option value="${m.name}">${m.name} (${m.conditioning})</option>`).join("");
  $("score-note").textContent = msg.detectors ? "MA_changing/SP: evaluation detectors on the model's frames vs the engine's states."
    : "MA_changing/SP unavailable: the server was started without --detectors.";
  status(`connected: ${msg.games.length} games, ${msg.models.length} models; press start`);
  play.ready = true;
}

function startMessage() {
  const kind = document.querySelector("input[name=kind]:checked").value;
  const msg = {type: "start", game: $("game").value, model: $("model").value};
  if (kind === "seed") msg.seed = parseInt($("seed").value, 10);
  else { msg.episode = parseInt($("episode").value, 10); msg.step = parseInt($("wstep").value, 10); }
  return msg;
}

function onFrame(msg) {
  clearError();
  const newGame = !play.frame || play.frame.game !== msg.game;
  play.frame = msg;
  if (newGame) { play.keymapPlayer = [0, Math.min(1, msg.players - 1)]; }
  $("model-name").textContent = msg.model;
  $("step").textContent = msg.step;
  drawImage("real", msg.real, msg, false);
  drawImage("gen", msg.model_frame, msg, true);
  $("real").dataset.step = msg.step; $("gen").dataset.step = msg.step;
  $("gen").dataset.frameHash = hash(msg.model_frame); $("real").dataset.frameHash = hash(msg.real);
  $("model-ms").textContent = msg.timing.model_ms ?? "-"; $("engine-ms").textContent = msg.timing.engine_ms ?? "-";
  const now = performance.now();
  if (msg.actions) { play.arrivals.push(now); }
  play.arrivals = play.arrivals.filter((t) => now - t < 3000);
  if (play.arrivals.length > 1) {
    const span = (play.arrivals[play.arrivals.length - 1] - play.arrivals[0]) / 1000;
    $("sps").textContent = span > 0 ? ((play.arrivals.length - 1) / span).toFixed(1) : "-";
  }
  play.latencies = play.latencies.slice(-50);
  if (play.latencies.length) {
    const s = [...play.latencies].sort((a, b) => a - b);
    const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))].toFixed(0);
    $("latency").textContent = `p50 ${q(0.5)} ms, p95 ${q(0.95)} ms (page to page)`;
  }
  const sc = msg.score;
  const fmt = (v) => v === null || v === undefined ? "unavailable" : v.toFixed(3);
  $("ma").textContent = sc.detectors ? `${fmt(sc.MA_changing)} (${sc.ma_counted} changing steps)` : "unavailable";
  $("sp").textContent = sc.detectors ? `${fmt(sc.SP)} (${sc.sp_counted})` : "unavailable";
  $("state-match").textContent = msg.predicts_state ? `${fmt(sc.state_match)} (${sc.match_counted} player-steps)` : "n/a: this model predicts no state";
  drawPlayers();
  let note = `${msg.game}, ${msg.start.kind === "seed" ? "reset with seed " + msg.start.seed : "test episode " + msg.start.episode + " at step " + msg.start.step}`;
  if (msg.same_start === false) note += " (the engine respawned players differently for this seed: the start differs)";
  if (!msg.running) note += ": the episode has ended, press Enter to reset";
  status(note);
}

function hash(text) { let h = 0; for (let i = 0; i < text.length; i += 7) h = (h * 31 + text.charCodeAt(i)) | 0; return String(h); }

function drawImage(id, url, msg, isModel) {
  const img = new Image();
  img.onload = () => {
    const c = $(id), ctx = c.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(img, 0, 0, c.width, c.height);
    const cell = c.width / msg.canvas_cells;
    if (isModel && $("markers").checked && msg.pred_state) {
      msg.pred_state.forEach(([x, y, f], p) => marker(ctx, cell, x, y, f, COLOURS[p], false));
    }
    if (!isModel && $("markers").checked) {
      msg.real_state.forEach(([x, y, f, v], p) => { if (v) marker(ctx, cell, x, y, f, COLOURS[p], true); });
    }
  };
  img.src = url;
}

function marker(ctx, cell, x, y, f, colour, small) {
  const cx = (x + 0.5) * cell, cy = (y + 0.5) * cell, r = cell * (small ? 0.12 : 0.45);
  ctx.strokeStyle = colour; ctx.lineWidth = 2;
  ctx.beginPath(); ctx.arc(cx, cy, r, 0, 2 * Math.PI); ctx.stroke();
  if (!small) {
    const d = [[0, -1], [1, 0], [0, 1], [-1, 0]][f];
    ctx.beginPath(); ctx.moveTo(cx, cy); ctx.lineTo(cx + d[0] * r * 1.4, cy + d[1] * r * 1.4); ctx.stroke();
  }
}

function drawPlayers() {
  const m = play.frame; if (!m) return;
  const facing = "NESW";
  const rows = [];
  for (let p = 0; p < m.players; p++) {
    const km = play.keymapPlayer[0] === p ? 1 : play.keymapPlayer[1] === p ? 2 : 0;
    const [x, y, f, v] = m.real_state[p];
    const pred = m.pred_state ? m.pred_state[p] : null;
    const mark = m.match[p] === true ? '<span class="ok">&#10003;</span>' : m.match[p] === false ? '<span class="bad">&#10007;</span>' : '<span class="na">-</span>';
    rows.push(`<tr class="${km ? "km" + km : ""}" data-player="${p}" data-x="${x}" data-y="${y}" data-facing="${f}" data-visible="${v}">` +
      `<td style="color:${COLOURS[p]}">&#9679; ${p + 1}</td><td>${m.human[p] ? "person" + (km ? " (keys " + km + ")" : "") : "episode policy"}</td>` +
      `<td>${x}, ${y}, ${facing[f]}${v ? "" : " (hidden)"}</td><td>${pred ? pred[0].toFixed(1) + ", " + pred[1].toFixed(1) + ", " + facing[pred[2]] : "-"}</td><td>${mark}</td></tr>`);
  }
  $("players").querySelector("tbody").innerHTML = rows.join("");
}

function stepWith(actions) {
  if (!play.frame || play.inFlight !== null) return false;
  play.inFlight = send({type: "step", actions});
  return true;
}

function currentActions(useLatched) {
  const actions = {};
  for (let k = 0; k < 2; k++) {
    const a = play.held[k] ?? (useLatched ? play.latched[k] : null);
    if (a !== null && play.frame && play.frame.human[play.keymapPlayer[k]]) actions[play.keymapPlayer[k]] = a;
  }
  return actions;
}

function tick() {
  if ($("mode").value !== "tick" || play.paused || !play.frame || !play.frame.running) return;
  if (stepWith(currentActions(true))) play.latched = [null, null];
}
let timer = null;
function retime() { if (timer) clearInterval(timer); timer = setInterval(tick, 1000 / Math.max(1, Math.min(30, parseInt($("rate").value, 10) || 8))); }

function pick(k, p) {
  if (!play.frame || p >= play.frame.players) return;
  play.keymapPlayer[k] = p;
  if (!play.frame.human[p]) send({type: "control", player: p, mode: "human"});
  drawPlayers();
}

document.addEventListener("keydown", (ev) => {
  const tag = (ev.target.tagName || "").toLowerCase();
  if (tag === "input" || tag === "select" || tag === "textarea") return;
  const code = ev.code;
  if (code === "Enter") { ev.preventDefault(); if (play.frame) send({type: "reset"}); return; }
  if (code === "KeyP") { play.paused = !play.paused; $("paused").textContent = play.paused ? "paused (N steps)" : ""; return; }
  if (code === "KeyN") { stepWith(currentActions(false)); return; }
  if (code === "KeyM") {
    if (!play.frame) return;
    const p = play.keymapPlayer[0];
    send({type: "control", player: p, mode: play.frame.human[p] ? "policy" : "human"}); return;
  }
  const digit = /^Digit([1-8])$/.exec(code);
  if (digit) { pick(ev.shiftKey ? 1 : 0, parseInt(digit[1], 10) - 1); return; }
  for (let k = 0; k < 2; k++) {
    if (code in KEYMAPS[k]) {
      ev.preventDefault();
      const a = KEYMAPS[k][code];
      if ($("mode").value === "step") {
        if (play.paused) return;
        const actions = currentActions(false);
        if (play.frame && play.frame.human[play.keymapPlayer[k]]) actions[play.keymapPlayer[k]] = a;
        else if (play.frame) status(`player ${play.keymapPlayer[k] + 1} follows the episode policy: press M (or its number) to drive it`);
        stepWith(actions);
      } else { play.held[k] = a; play.latched[k] = a; }
      return;
    }
  }
});
document.addEventListener("keyup", (ev) => {
  for (let k = 0; k < 2; k++) if (KEYMAPS[k][ev.code] !== undefined && play.held[k] === KEYMAPS[k][ev.code]) play.held[k] = null;
});

function saveGif(msg) {
  play.recording = false; $("record").textContent = "record";
  const bytes = Uint8Array.from(atob(msg.data), (c) => c.charCodeAt(0));
  const url = URL.createObjectURL(new Blob([bytes], {type: "image/gif"}));
  const a = document.createElement("a");
  a.href = url; a.download = `actionparty-${play.frame ? play.frame.game + "-" + play.frame.model : "play"}.gif`;
  document.body.appendChild(a); a.click(); a.remove();
  play.lastGifBytes = msg.bytes;
  status(`recording saved (${(msg.bytes / 1024).toFixed(0)} KiB GIF)`);
}

$("start").onclick = (ev) => { ev.target.blur(); send(startMessage()); };
$("model").onchange = (ev) => { ev.target.blur(); if (play.frame) send({type: "model", model: $("model").value}); };
$("record").onclick = (ev) => { ev.target.blur(); send({type: "record", on: !play.recording}); };
$("markers").onchange = (ev) => { ev.target.blur(); if (play.frame) onFrame(play.frame); };
$("mode").onchange = (ev) => ev.target.blur();
$("rate").onchange = (ev) => { ev.target.blur(); retime(); };
retime();
connect();
</script>
</body>
</html>
"""
