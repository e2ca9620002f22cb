// A minimal Orange-Meets-style publisher: the page talks to the app's own backend
// (/call/api/...), which adds the app secret and forwards to the Realtime API, so the
// secret never reaches the browser.
//
// Query parameters: role (track names are ROLE-mic and ROLE-cam), codec (vp8 | h264),
// simulcast (rids, full size first: "a,b" as Orange Meets publishes, or "h,m,l"; each
// further rid is half the size of the one before it), camera (WIDTHxHEIGHT asked of the
// camera, 640x360 by default).
"use strict";

const params = new URLSearchParams(location.search);
const role = params.get("role") || "participant";
const codecName = (params.get("codec") || "vp8").toLowerCase();
const simulcastRids = (params.get("simulcast") || "").split(",").filter((rid) => rid);
const [cameraWidth, cameraHeight] = (params.get("camera") || "640x360").split("x").map(Number);

const statusEl = document.getElementById("status");
const tracksEl = document.getElementById("tracks");
const errorEl = document.getElementById("error");

let pc = null;
let videoSender = null;

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

// Chrome offers every codec it has; the preference list only reorders them, so the SFU
// still sees Chrome's full offer (rtx, red, ulpfec, other profiles) and must pick.
function preferCodec(transceiver) {
  const codecs = RTCRtpSender.getCapabilities("video").codecs;
  const wanted = (c) => {
    const mime = c.mimeType.toLowerCase();
    if (codecName === "h264") {
      const fmtp = c.sdpFmtpLine || "";
      return mime === "video/h264" && fmtp.includes("packetization-mode=1") && fmtp.includes("profile-level-id=42e01f");
    }
    return mime === `video/${codecName}`;
  };
  const first = codecs.filter(wanted);
  if (first.length === 0) {
    throw new Error(`this browser cannot send ${codecName}`);
  }
  transceiver.setCodecPreferences([...first, ...codecs.filter((c) => !wanted(c))]);
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
  const { sessionId } = await api("POST", "sessions/new");
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    video: { width: cameraWidth, height: cameraHeight, frameRate: 30 },
  });
  document.getElementById("preview").srcObject = stream;
  pc = new RTCPeerConnection({ bundlePolicy: "max-bundle" });
  const audio = pc.addTransceiver(stream.getAudioTracks()[0], { direction: "sendonly" });
  const video = pc.addTransceiver(stream.getVideoTracks()[0], {
    direction: "sendonly",
    sendEncodings: simulcastRids.length
      ? simulcastRids.map((rid, i) => ({ rid, scaleResolutionDownBy: 2 ** i }))
      : undefined,
  });
  preferCodec(video);
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
  });
  statusEl.textContent = "published";
}

// Test hooks: scale the camera down mid-call (Chrome with fake devices does not ramp by
// itself), and read what the encoder is sending.
window.scaleVideo = async (factor) => {
  const parameters = videoSender.getParameters();
  parameters.encodings[0].scaleResolutionDownBy = factor;
  await videoSender.setParameters(parameters);
};

window.videoSendStats = async () => {
  const report = await videoSender.getStats();
  for (const stat of report.values()) {
    if (stat.type === "outbound-rtp") {
      return { width: stat.frameWidth || 0, height: stat.frameHeight || 0, framesSent: stat.framesSent || 0, encoder: stat.encoderImplementation || "" };
    }
  }
  return { width: 0, height: 0, framesSent: 0, encoder: "" };
};

// Per simulcast layer: what the encoder sends on each rid, and on which SSRC.
window.layerSendStats = async () => {
  const report = await videoSender.getStats();
  const layers = [];
  for (const stat of report.values()) {
    if (stat.type === "outbound-rtp" && stat.rid) {
      layers.push({ rid: stat.rid, ssrc: stat.ssrc, width: stat.frameWidth || 0, height: stat.frameHeight || 0, framesSent: stat.framesSent || 0, active: stat.active !== false });
    }
  }
  return layers;
};

// Stop or restart one simulcast layer, as a publisher short of bandwidth or CPU does.
window.setLayerActive = async (rid, active) => {
  const parameters = videoSender.getParameters();
  const encoding = parameters.encodings.find((e) => e.rid === rid);
  if (!encoding) throw new Error(`no simulcast layer ${rid}`);
  encoding.active = active;
  await videoSender.setParameters(parameters);
};

start().catch((err) => {
  statusEl.textContent = "failed";
  errorEl.textContent = String(err && err.message ? err.message : err);
});
