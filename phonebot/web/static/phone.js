// The softphone page: one web call at a time, speaking Twilio's Media Streams protocol to phonebot
// (`connected`, `start`, `media`, `mark`, `stop` up; `media`, `mark`, `clear` down), so the call
// runs through the very code a phone call does. The audio itself is the worklet's (worklet.js);
// this thread moves frames between it and the WebSocket, and shows what phonebot tells web calls
// alone: the transcript as it goes (`turn`, `tool`), why the call ended (`ended`) and what the
// caller would have heard on a phone when the call cannot go on (`notice`).
//
// The API key is kept in sessionStorage: asked once per tab (a reload keeps it), gone when the tab
// closes, seen by no other tab and no other site, sent only as the Authorization header of
// POST /web/calls, never in a URL. localStorage would keep a bearer key on disk for good; a cookie
// would go with every request.

const KEY_STORE = "phonebot.apiKey";
const MIC = { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 };
const HANG_UP_WAIT_MS = 2000; // after `stop`: for phonebot to close, with the call's end reason first
const ENDINGS = {
  caller_hung_up: "You hung up.",
  bot_ended: "The bot ended the call.",
  max_duration: "The call reached its time limit.",
  caller_silent: "The call ended after a long silence.",
  model_unreachable: "The bot could not be reached.",
  error: "The call failed.",
  shutdown: "The service is restarting; call again in a moment.",
};
const REFUSED = "This call's link was refused (expired, or used already). Press Call to try again.";

const $ = (id) => document.getElementById(id);
const view = {
  call: $("call"),
  state: $("state"),
  level: $("level"),
  timer: $("timer"),
  notice: $("notice"),
  transcript: $("transcript"),
  keyForm: $("key-form"),
  key: $("key"),
  forget: $("forget"),
};
// Tests set `window.phonebotTap = {}` before the page loads: the worklet then posts what it plays.
const tap = window.phonebotTap ? Object.assign(window.phonebotTap, { chunks: [], events: [] }) : null;

let call = null;

function epochMs() {
  return performance.timeOrigin + performance.now();
}

function hex(bytes) {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function toBase64(bytes) {
  return btoa(String.fromCharCode(...bytes));
}

function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function setState(state, text) {
  document.body.dataset.state = state;
  view.state.textContent = text;
  view.call.textContent = state === "idle" || state === "ended" ? "Call" : "Hang up";
  view.call.classList.toggle("hang-up", view.call.textContent === "Hang up");
  view.call.disabled = !sessionStorage.getItem(KEY_STORE);
}

function showLevel(dbfs) {
  // -60 dBFS (quiet room) to 0 (full scale), as the meter's fill.
  view.level.style.setProperty("--level", `${Math.max(0, Math.min(100, ((dbfs + 60) / 60) * 100))}%`);
  view.level.dataset.level = Number.isFinite(dbfs) ? dbfs.toFixed(1) : "";
}

function showNotice(text, speak = false) {
  view.notice.textContent = text;
  view.notice.hidden = !text;
  // What a phone caller would hear; the model cannot say it (it is what failed), the browser can.
  if (speak && "speechSynthesis" in window) speechSynthesis.speak(new SpeechSynthesisUtterance(text));
}

// -- the transcript ------------------------------------------------------------------------------

function entry(seq, kind) {
  let item = view.transcript.querySelector(`[data-seq="${seq}"]`);
  if (!item) {
    item = document.createElement("li");
    item.dataset.seq = seq;
    item.className = kind;
    const later = [...view.transcript.children].find((other) => Number(other.dataset.seq) > seq);
    view.transcript.insertBefore(item, later || null);
  }
  return item;
}

function showTurn(turn) {
  const item = entry(turn.seq, `turn ${turn.role}`);
  item.replaceChildren();
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = turn.role === "caller" ? "You" : "Bot";
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = turn.text;
  item.append(who, text);
  if (turn.interrupted) {
    // The record keeps what was heard; the words the caller cut off are shown struck through.
    const said = item.dataset.said || "";
    if (said.startsWith(turn.text) && said.length > turn.text.length) {
      const cut = document.createElement("del");
      cut.textContent = said.slice(turn.text.length);
      item.append(cut);
    }
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "interrupted";
    item.append(badge);
    item.classList.add("interrupted");
  } else {
    item.dataset.said = turn.text;
  }
  item.classList.toggle("live", !turn.final);
  item.scrollIntoView({ block: "nearest" });
}

function showTool(tool) {
  const item = entry(tool.seq, "tool");
  item.replaceChildren();
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = "Tool";
  const name = document.createElement("code");
  name.textContent = `${tool.name}(${Object.entries(tool.args || {}).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ")})`;
  const status = document.createElement("span");
  status.className = "status";
  status.textContent = !tool.done ? "running…" : tool.ok ? "done" : "failed";
  item.append(who, name, status);
  if (tool.done) {
    const result = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "result";
    const body = document.createElement("pre");
    body.textContent = JSON.stringify(tool.result, null, 2);
    result.append(summary, body);
    item.append(result);
  }
  item.classList.toggle("running", !tool.done);
  item.classList.toggle("failed", tool.done && !tool.ok);
  item.scrollIntoView({ block: "nearest" });
}

// -- one call --------------------------------------------------------------------------------------

class KeyRefused extends Error {}

class WebCall {
  constructor(key) {
    this.key = key;
    this.sequence = 0;
    this.chunk = 0;
    this.streaming = false;
    this.ended = null; // phonebot's end reason, once it said
    this.finished = false;
  }

  async start() {
    if (!navigator.mediaDevices) {
      throw new Error("The microphone needs a secure page: open it as https://, or as http://127.0.0.1 on this machine.");
    }
    setState("starting", "Getting the microphone…");
    this.mic = await navigator.mediaDevices.getUserMedia({ audio: MIC });
    if (this.finished) return this.finish(null); // hung up meanwhile: let the microphone go
    this.context = new AudioContext({ latencyHint: "interactive" });
    await this.context.resume(); // made in the Call click, so allowed to play; resume says so explicitly
    await this.context.audioWorklet.addModule(new URL("worklet.js", import.meta.url));
    this.node = new AudioWorkletNode(this.context, "phone", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { tap: Boolean(tap) },
    });
    this.node.port.onmessage = (event) => this.fromWorklet(event.data);
    this.context.createMediaStreamSource(this.mic).connect(this.node);
    this.node.connect(this.context.destination);
    if (tap) tap.sampleRate = this.context.sampleRate;
    setState("connecting", "Connecting…");
    const response = await fetch("web/calls", { method: "POST", headers: { Authorization: `Bearer ${this.key}` } });
    const body = await response.json().catch(() => ({}));
    if (response.status === 401) throw new KeyRefused(body.error?.message || "The API key was refused.");
    if (!response.ok) throw new Error(body.error?.message || `phonebot answered ${response.status}`);
    if (this.finished) return; // hung up meanwhile: the unused call lapses with its token
    this.callSid = body.call_sid;
    const url = new URL(`web/media/${encodeURIComponent(body.token)}`, location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    this.socket = new WebSocket(url);
    this.socket.onopen = () => this.open();
    this.socket.onmessage = (event) => this.fromServer(JSON.parse(event.data));
    this.socket.onclose = (event) => this.finish(event);
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  open() {
    this.streamSid = `MZ${hex(16)}`;
    this.send({ event: "connected", protocol: "Call", version: "1.0.0" });
    this.send({
      event: "start",
      sequenceNumber: String(++this.sequence),
      start: {
        accountSid: "",
        streamSid: this.streamSid,
        callSid: this.callSid,
        tracks: ["inbound"],
        customParameters: {},
        mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
      },
      streamSid: this.streamSid,
    });
    this.streaming = true;
    this.since = performance.now();
    setState("in-call", "In call");
    this.clock = setInterval(() => this.tick(), 1000);
    this.tick();
  }

  tick() {
    const seconds = Math.floor((performance.now() - this.since) / 1000);
    view.timer.textContent = `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
  }

  fromWorklet(message) {
    switch (message.type) {
      case "frame":
        showLevel(message.level);
        if (!this.streaming) return;
        this.chunk += 1;
        this.send({
          event: "media",
          sequenceNumber: String(++this.sequence),
          media: { track: "inbound", chunk: String(this.chunk), timestamp: String((this.chunk - 1) * 20), payload: toBase64(message.mulaw) },
          streamSid: this.streamSid,
        });
        break;
      case "played":
        this.mark(message.name);
        break;
      case "cleared":
        if (tap) tap.events.push({ type: "cleared", at: epochMs(), frame: message.frame, dropped: message.dropped, output: this.outputTime(message.frame) });
        message.marks.forEach((name) => this.mark(name));
        break;
      case "tap":
        tap.chunks.push({ frame: message.frame, samples: message.samples });
        break;
    }
  }

  outputTime(frame) {
    // When the speaker plays the sample at `frame` (epoch ms), by the context's own clock pairing.
    const stamp = this.context.getOutputTimestamp();
    const ahead = (frame / this.context.sampleRate - stamp.contextTime) * 1000;
    return performance.timeOrigin + stamp.performanceTime + ahead;
  }

  mark(name) {
    this.send({ event: "mark", sequenceNumber: String(++this.sequence), streamSid: this.streamSid, mark: { name } });
  }

  fromServer(message) {
    switch (message.event) {
      case "media":
        this.node.port.postMessage({ type: "play", mulaw: fromBase64(message.media.payload) });
        break;
      case "mark":
        this.node.port.postMessage({ type: "mark", name: message.mark.name });
        break;
      case "clear":
        if (tap) tap.events.push({ type: "clear", at: epochMs() });
        this.node.port.postMessage({ type: "clear" });
        break;
      case "turn":
        showTurn(message.turn);
        break;
      case "tool":
        showTool(message.tool);
        break;
      case "ended":
        this.ended = message.ended.reason;
        break;
      case "notice":
        showNotice(message.notice.text, true);
        break;
    }
  }

  hangUp() {
    if (!this.streaming) return this.finish(null);
    this.send({ event: "stop", sequenceNumber: String(++this.sequence), streamSid: this.streamSid, stop: { accountSid: "", callSid: this.callSid } });
    this.streaming = false;
    this.node.port.postMessage({ type: "stop" });
    setState("ending", "Hanging up…");
    // phonebot closes once the call has ended (its end reason first); close anyway if it does not.
    setTimeout(() => this.socket && this.socket.close(1000), HANG_UP_WAIT_MS);
  }

  finish(event) {
    if (this.finished) {
      if (this.mic) this.mic.getTracks().forEach((track) => track.stop());
      return;
    }
    this.finished = true;
    this.streaming = false;
    clearInterval(this.clock);
    if (this.mic) this.mic.getTracks().forEach((track) => track.stop());
    if (this.context) this.context.close();
    if (this.socket && this.socket.readyState < WebSocket.CLOSING) this.socket.close(1000);
    showLevel(-Infinity);
    let text = "Call ended.";
    if (this.ended) text = `Call ended. ${ENDINGS[this.ended] || ""}`.trim();
    else if (event && event.code === 1008) text = REFUSED;
    else if (event && event.code !== 1000) text = `The connection to phonebot was lost (${event.code}).`;
    setState("ended", text);
    call = null;
  }
}

// -- the controls ----------------------------------------------------------------------------------

async function startCall() {
  const key = sessionStorage.getItem(KEY_STORE);
  if (!key) return askForKey();
  view.transcript.replaceChildren();
  view.timer.textContent = "";
  showNotice("");
  call = new WebCall(key);
  try {
    await call.start();
  } catch (error) {
    const current = call;
    if (current) current.finish(null);
    if (error instanceof KeyRefused) {
      sessionStorage.removeItem(KEY_STORE);
      askForKey();
    }
    const text = error.name === "NotAllowedError" ? "The microphone is blocked: allow it for this page and press Call again." : error.message;
    setState("ended", text);
  }
}

function askForKey() {
  view.keyForm.hidden = false;
  view.key.focus();
  setState("idle", "Enter the API key (PHONEBOT_API_KEY) to make calls.");
}

view.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = view.key.value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  view.key.value = "";
  view.keyForm.hidden = true;
  setState("idle", "Ready. Press Call and speak.");
});

view.forget.addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORE);
  if (call) call.hangUp();
  askForKey();
});

view.call.addEventListener("click", () => (call ? call.hangUp() : startCall()));
window.addEventListener("pagehide", () => call && call.hangUp());

if (sessionStorage.getItem(KEY_STORE)) setState("idle", "Ready. Press Call and speak.");
else askForKey();
