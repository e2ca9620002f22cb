// An Orange-Meets-style publisher whose frames are end-to-end encrypted by Orange Meets' own
// MLS worker (served unmodified at /e2ee/worker.js, as the app serves it). The page talks
// to the app's backend (/call/api/..., which adds the Realtime app secret) to publish, and
// leaves the room's part -- relaying MLS handshake messages between members -- to the test
// driving it, through window.e2eeEvent.
//
// Query parameters: role (track names ROLE-mic and ROLE-cam), camera (WIDTHxHEIGHT, 640x360
// by default), fps (the camera's frame rate, 30 by default), transform: "streams" (default: RTCPeerConnection { encodedInsertableStreams:
// true } and sender.createEncodedStreams(), the frames posted to the worker as an
// encryptStream event, as Orange does in Chrome) or "script" (RTCRtpScriptTransform with
// { operation: "encryptStream" }, the path Orange's app takes wherever the browser has it).
"use strict";

const params = new URLSearchParams(location.search);
const role = params.get("role") || "participant";
const transformMode = params.get("transform") || "streams";
const [cameraWidth, cameraHeight] = (params.get("camera") || "640x360").split("x").map(Number);
const cameraFps = Number(params.get("fps") || 30);

const statusEl = document.getElementById("status");
const safetyEl = document.getElementById("safety");
const tracksEl = document.getElementById("tracks");
const errorEl = document.getElementById("error");

let pc = null;
let videoSender = null;

// --- Orange's worker -----------------------------------------------------------------------

const worker = new Worker("/e2ee/worker.js");
const outputs = []; // every message the worker posted (but workerReady), in order
const workerErrors = [];
let lastOutputAt = 0;
let safetyNumber = null;

const workerReady = new Promise((resolve) => {
  worker.addEventListener("message", (event) => {
    const data = event.data;
    if (data && data.type === "workerReady") {
      resolve();
      return;
    }
    outputs.push(data);
    lastOutputAt = performance.now();
    if (data && data.type === "newSafetyNumber") {
      safetyNumber = new Uint8Array(data.hash);
      // As Orange shows it: each byte in decimal, two digits at least.
      safetyEl.textContent = Array.from(safetyNumber, (b) => String(b).padStart(2, "0")).join("");
    }
  });
});
worker.addEventListener("error", (event) => {
  workerErrors.push(event.message || String(event));
});
worker.addEventListener("messageerror", () => workerErrors.push("messageerror"));

function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

// Bytes cross the Playwright boundary as base64 in fields named NAME_b64 (both ways); the
// worker itself gets and gives ArrayBuffers, as in Orange's app.
function encodeOutput(output) {
  const encoded = {};
  for (const [name, value] of Object.entries(output)) {
    if (value instanceof ArrayBuffer) encoded[`${name}_b64`] = toBase64(value);
    else if (ArrayBuffer.isView(value)) encoded[`${name}_b64`] = toBase64(value.buffer);
    else encoded[name] = value;
  }
  return encoded;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Post one event to the worker; resolves with what it posts back. The worker posts all of
// an event's outputs at once, so once the first has come the rest follow within quietMs.
// Events that answer nothing (userJoined at a member that is not the designated committer,
// a Welcome for somebody else) are awaited idleMs, when the caller says none is expected.
window.e2eeEvent = async (event, options = {}) => {
  const { expectOutput = true, quietMs = 200, idleMs = 1500, timeoutMs = 30000 } = options;
  await workerReady;
  const message = {};
  for (const [name, value] of Object.entries(event)) {
    if (name.endsWith("_b64")) message[name.slice(0, -4)] = fromBase64(value);
    else message[name] = value;
  }
  const first = outputs.length;
  const errorsBefore = workerErrors.length;
  const posted = performance.now();
  worker.postMessage(message);
  for (;;) {
    await sleep(20);
    if (workerErrors.length > errorsBefore) {
      throw new Error(`Orange's worker failed on ${event.type}: ${workerErrors.slice(errorsBefore).join("; ")}`);
    }
    const now = performance.now();
    if (outputs.length > first) {
      if (now - lastOutputAt >= quietMs) break;
    } else if (!expectOutput && now - posted >= idleMs) {
      break;
    } else if (now - posted >= timeoutMs) {
      throw new Error(`Orange's worker answered nothing to ${event.type} in ${timeoutMs} ms`);
    }
  }
  return outputs.slice(first).map(encodeOutput);
};

window.e2eeSafetyNumber = () => (safetyNumber ? toBase64(safetyNumber) : null);
window.e2eeErrors = () => workerErrors.slice();

// Every frame this sender encodes goes through the worker's encryptStream before it is
// packetized, exactly as Orange's EncryptionWorker.setupSenderTransform does.
function encryptSender(sender) {
  if (transformMode === "script") {
    sender.transform = new RTCRtpScriptTransform(worker, { operation: "encryptStream" });
    return;
  }
  const { readable, writable } = sender.createEncodedStreams();
  worker.postMessage({ type: "encryptStream", in: readable, out: writable }, [readable, writable]);
}

// Orange forces VP8 (and its RTX) on an encrypted call: its clear prefix rule is VP8's.
function forceVp8(transceiver) {
  const capability = RTCRtpSender.getCapabilities("video");
  const codecs = capability ? capability.codecs : [];
  transceiver.setCodecPreferences(
    codecs.filter((c) => c.mimeType === "video/VP8" || c.mimeType === "video/rtx")
  );
}

// --- publishing through the app's backend --------------------------------------------------

async function api(method, path, body) {
  const response = await fetch(`/call/api/${path}`, {
    method,
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
  });
  const data = await response.json();
  if (!response.ok || data.errorCode) {
    throw new Error(`${method} ${path}: HTTP ${response.status} ${data.errorCode || ""} ${data.errorDescription || ""}`);
  }
  return data;
}

function iceGatheringComplete(peer) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    peer.addEventListener("icegatheringstatechange", () => {
      if (peer.iceGatheringState === "complete") resolve();
    });
  });
}

function connected(peer) {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (peer.connectionState === "connected") resolve();
      if (peer.connectionState === "failed") reject(new Error("transport failed"));
    };
    peer.addEventListener("connectionstatechange", check);
    check();
  });
}

async function start() {
  if (transformMode === "script" && !window.RTCRtpScriptTransform) {
    throw new Error("this browser has no RTCRtpScriptTransform");
  }
  if (transformMode === "streams" && !("createEncodedStreams" in RTCRtpSender.prototype)) {
    throw new Error("this browser has no RTCRtpSender.createEncodedStreams");
  }
  await workerReady;
  const { sessionId } = await api("POST", "sessions/new");
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    video: { width: cameraWidth, height: cameraHeight, frameRate: cameraFps },
  });
  document.getElementById("preview").srcObject = stream;
  pc = new RTCPeerConnection({
    bundlePolicy: "max-bundle",
    encodedInsertableStreams: transformMode === "streams",
  });
  const audio = pc.addTransceiver(stream.getAudioTracks()[0], { direction: "sendonly" });
  const video = pc.addTransceiver(stream.getVideoTracks()[0], { direction: "sendonly" });
  forceVp8(video);
  encryptSender(audio.sender);
  encryptSender(video.sender);
  videoSender = video.sender;
  await pc.setLocalDescription(await pc.createOffer());
  await iceGatheringComplete(pc);
  const names = { audio: `${role}-mic`, video: `${role}-cam` };
  const result = await api("POST", `sessions/${sessionId}/tracks/new`, {
    sessionDescription: { type: "offer", sdp: pc.localDescription.sdp },
    tracks: [
      { location: "local", mid: audio.mid, trackName: names.audio },
      { location: "local", mid: video.mid, trackName: names.video },
    ],
  });
  const failed = result.tracks.filter((t) => t.errorCode);
  if (failed.length) throw new Error(`tracks/new: ${JSON.stringify(failed)}`);
  await pc.setRemoteDescription(result.sessionDescription);
  await connected(pc);
  const answerVideo = result.sessionDescription.sdp.split("m=video")[1] || "";
  const rtpmap = answerVideo.match(/a=rtpmap:\d+ ([A-Za-z0-9]+)\//);
  tracksEl.textContent = JSON.stringify({
    sessionId,
    role,
    audio: `${sessionId}/${names.audio}`,
    video: `${sessionId}/${names.video}`,
    videoCodec: rtpmap ? rtpmap[1] : null,
    transform: transformMode,
  });
  statusEl.textContent = "published";
}

window.videoSendStats = async () => {
  const report = await videoSender.getStats();
  for (const stat of report.values()) {
    if (stat.type === "outbound-rtp") {
      return { width: stat.frameWidth || 0, height: stat.frameHeight || 0, framesSent: stat.framesSent || 0, encoder: stat.encoderImplementation || "" };
    }
  }
  return { width: 0, height: 0, framesSent: 0, encoder: "" };
};

start().catch((err) => {
  statusEl.textContent = "failed";
  errorEl.textContent = String(err && err.message ? err.message : err);
});
