// Orange Meets' shipped MLS worker (wasm-pkg) driven from Node, one WASM instance per member.
// JSON-lines protocol on stdin/stdout; bytes are base64. Driven by testbed.orange.
//   {"op":"new","m":"alice"}                                -> creates a member (own WASM instance)
//   {"op":"event","m":"alice","ev":{type:..., keyPkg_b64:...}} -> processEvent, returns [{type, field_b64...}]
//   {"op":"encrypt","m":"alice","kind":"video"|"audio","frame":b64} -> encryptStream path, returns {frame}
//   {"op":"decrypt","m":"alice","kind":...,"frame":b64}      -> decryptStream path, returns {frame}
const fs = require('fs');
const path = require('path');
const readline = require('readline');
const PKG = process.env.ORANGE_E2EE;
if (!PKG) throw new Error('set ORANGE_E2EE to the orange-e2ee interop folder');
const src = fs.readFileSync(path.join(PKG, 'wasm-pkg/orange_mls_worker.js'), 'utf8');
const wasmBytes = fs.readFileSync(path.join(PKG, 'wasm-pkg/orange_mls_worker_bg.wasm'));

// Browser globals the WASM checks with instanceof
class RTCEncodedVideoFrame { constructor(d) { this._d = d } get data() { return this._d } set data(v) { this._d = v } }
class RTCEncodedAudioFrame { constructor(d) { this._d = d } get data() { return this._d } set data(v) { this._d = v } }
globalThis.RTCEncodedVideoFrame = RTCEncodedVideoFrame;
globalThis.RTCEncodedAudioFrame = RTCEncodedAudioFrame;
if (!process.env.ORANGE_LOG) { console.info = () => {}; console.debug = () => {}; console.log = () => {}; }
console.error = (...a) => process.stderr.write('[orange] ' + a.join(' ') + '\n');
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');

const members = {};
const b64 = (buf) => Buffer.from(buf instanceof ArrayBuffer ? new Uint8Array(buf) : buf).toString('base64');
const ab = (s) => { const u = Buffer.from(s, 'base64'); return u.buffer.slice(u.byteOffset, u.byteOffset + u.byteLength); };

async function newMember(name) {
  const wb = new Function(src + '\n;return wasm_bindgen;')();
  await wb({ module_or_path: wasmBytes });
  wb.initLogging();
  const m = { wb, pipes: {} };
  members[name] = m;
  return m;
}

// One long-lived stream pipe per (member, direction, kind): the worker loops forever on it
function pipe(m, op, kind) {
  const key = op + ':' + kind;
  if (m.pipes[key]) return m.pipes[key];
  let ctrl; const waiters = [];
  const readable = new ReadableStream({ start(c) { ctrl = c } });
  const writable = new WritableStream({ write(frame) { waiters.shift()(frame.data) } });
  m.wb.processEvent({ type: op, in: readable, out: writable }).catch((e) => out({ fatal: String(e) }));
  const p = {
    run(bytes) {
      return new Promise((res) => {
        waiters.push(res);
        const F = kind === 'audio' ? RTCEncodedAudioFrame : RTCEncodedVideoFrame;
        ctrl.enqueue(new F(ab(bytes)));
      });
    },
  };
  m.pipes[key] = p;
  return p;
}

async function handle(cmd) {
  const m = members[cmd.m];
  switch (cmd.op) {
    case 'new': await newMember(cmd.m); return {};
    case 'event': {
      const ev = {};
      for (const [k, v] of Object.entries(cmd.ev)) {
        if (k.endsWith('_b64')) ev[k.slice(0, -4)] = ab(v); else ev[k] = v;
      }
      const [objs] = await m.wb.processEvent(ev);
      const res = [];
      for (const o of objs) {
        const r = {};
        for (const [k, v] of Object.entries(o)) r[v instanceof ArrayBuffer ? k + '_b64' : k] = v instanceof ArrayBuffer ? b64(v) : v;
        res.push(r);
      }
      return { out: res };
    }
    case 'encrypt': case 'decrypt': {
      const data = await pipe(m, cmd.op + 'Stream', cmd.kind || 'video').run(cmd.frame);
      return { frame: b64(data) };
    }
    default: throw new Error('unknown op ' + cmd.op);
  }
}

const rl = readline.createInterface({ input: process.stdin });
let chain = Promise.resolve();
rl.on('line', (line) => {
  chain = chain.then(async () => {
    const cmd = JSON.parse(line);
    try { out({ id: cmd.id, ok: true, ...(await handle(cmd)) }); }
    catch (e) { out({ id: cmd.id, ok: false, error: String(e && e.stack || e) }); }
  });
});
