// ts-mls (npm, RFC 9420 in TypeScript) members driven from Python by testbed.tsmls.
// One process hosts any number of members, each a ts-mls ClientState plus its own
// KeyPackage; ciphersuite 1 (MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519).
// JSON lines on stdin/stdout, one answer per command, in order; every byte string is
// base64 in a field whose name ends in _b64.
//   {"op":"new","m":"alice"}                         -> {keyPackage_b64} (bare KeyPackage)
//   {"op":"create","m":"alice","groupId_b64"}        -> {} (a one-member group, epoch 0)
//   {"op":"commit","m":"alice","add_b64":[bare KeyPackage...],"remove":[leaf...],
//    "public":bool,"treeInWelcome":bool}           -> {commit_b64, welcome_b64?, ratchetTree_b64}
//   {"op":"join","m":"bob","welcome_b64","ratchetTree_b64"?} -> {}
//   {"op":"process","m":"bob","message_b64"}         -> {kind, message_b64?}
//   {"op":"send","m":"alice","data_b64"}             -> {message_b64} (MLSMessage(PrivateMessage))
//   {"op":"state","m":"alice"}                       -> {epoch, leaf, epochAuthenticator_b64,
//                                                         members_b64: [identity per leaf, null if blank]}
// Failures answer {"ok":false,"error":...}; the process keeps serving.
import readline from 'node:readline';
import {
  acceptAll,
  createApplicationMessage,
  createCommit,
  createGroup,
  decodeMlsMessage,
  defaultCapabilities,
  defaultLifetime,
  emptyPskIndex,
  encodeMlsMessage,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
  processMessage,
} from 'ts-mls';
import { decodeRatchetTree, encodeRatchetTree } from 'ts-mls/ratchetTree.js';

const SUITE = 'MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519';
const impl = await getCiphersuiteImpl(getCiphersuiteFromName(SUITE));
const members = new Map();

const bytes = (text) => new Uint8Array(Buffer.from(text, 'base64'));
const b64 = (data) => Buffer.from(data).toString('base64');

function member(name) {
  const found = members.get(name);
  if (found === undefined) throw new Error(`no member ${name}`);
  return found;
}

function group(m) {
  if (m.state === undefined) throw new Error('not in a group');
  return m.state;
}

// A bare KeyPackage (as the recorder shares it) read as ts-mls reads an MLSMessage:
// version mls10 (0x0001), wire format mls_key_package (0x0005), then the KeyPackage.
function keyPackage(bare) {
  const framed = new Uint8Array(4 + bare.length);
  framed.set([0, 1, 0, 5]);
  framed.set(bare, 4);
  const decoded = decodeMlsMessage(framed, 0);
  if (decoded === undefined || decoded[0].wireformat !== 'mls_key_package') {
    throw new Error('not a KeyPackage');
  }
  if (decoded[1] !== framed.length) throw new Error('bytes after the KeyPackage');
  return decoded[0].keyPackage;
}

// The bare KeyPackage of an MLSMessage(KeyPackage): drop version and wire format.
function bareKeyPackage(kp) {
  return encodeMlsMessage({ version: 'mls10', wireformat: 'mls_key_package', keyPackage: kp }).subarray(4);
}

function message(raw) {
  const decoded = decodeMlsMessage(raw, 0);
  if (decoded === undefined) throw new Error('not an MLSMessage');
  return decoded[0];
}

async function handle(cmd) {
  switch (cmd.op) {
    case 'new': {
      const credential = { credentialType: 'basic', identity: new TextEncoder().encode(cmd.m) };
      const kp = await generateKeyPackage(credential, defaultCapabilities(), defaultLifetime, [], impl);
      members.set(cmd.m, { kp, state: undefined });
      return { keyPackage_b64: b64(bareKeyPackage(kp.publicPackage)) };
    }
    case 'create': {
      const m = member(cmd.m);
      m.state = await createGroup(bytes(cmd.groupId_b64), m.kp.publicPackage, m.kp.privatePackage, [], impl);
      return {};
    }
    case 'commit': {
      const m = member(cmd.m);
      const proposals = [
        ...(cmd.remove ?? []).map((removed) => ({ proposalType: 'remove', remove: { removed } })),
        ...(cmd.add_b64 ?? []).map((kp) => ({ proposalType: 'add', add: { keyPackage: keyPackage(bytes(kp)) } })),
      ];
      const result = await createCommit(
        { state: group(m), cipherSuite: impl },
        {
          extraProposals: proposals,
          wireAsPublicMessage: Boolean(cmd.public),
          ratchetTreeExtension: Boolean(cmd.treeInWelcome),
        },
      );
      m.state = result.newState;
      const answer = {
        commit_b64: b64(encodeMlsMessage(result.commit)),
        ratchetTree_b64: b64(encodeRatchetTree(m.state.ratchetTree)),
      };
      if (result.welcome !== undefined) {
        answer.welcome_b64 = b64(encodeMlsMessage({ version: 'mls10', wireformat: 'mls_welcome', welcome: result.welcome }));
      }
      return answer;
    }
    case 'join': {
      const m = member(cmd.m);
      const welcome = message(bytes(cmd.welcome_b64));
      if (welcome.wireformat !== 'mls_welcome') throw new Error('not a Welcome');
      let tree;
      if (cmd.ratchetTree_b64) {
        const raw = bytes(cmd.ratchetTree_b64);
        const decoded = decodeRatchetTree(raw, 0);
        if (decoded === undefined || decoded[1] !== raw.length) throw new Error('not a ratchet tree');
        tree = decoded[0];
      }
      m.state = await joinGroup(welcome.welcome, m.kp.publicPackage, m.kp.privatePackage, emptyPskIndex, impl, tree);
      return {};
    }
    case 'process': {
      const m = member(cmd.m);
      const incoming = message(bytes(cmd.message_b64));
      if (incoming.wireformat !== 'mls_private_message' && incoming.wireformat !== 'mls_public_message') {
        throw new Error(`cannot process a ${incoming.wireformat}`);
      }
      const result = await processMessage(incoming, group(m), emptyPskIndex, acceptAll, impl);
      m.state = result.newState;
      if (result.kind === 'applicationMessage') return { kind: result.kind, message_b64: b64(result.message) };
      return { kind: result.kind };
    }
    case 'send': {
      const m = member(cmd.m);
      const result = await createApplicationMessage(group(m), bytes(cmd.data_b64), impl);
      m.state = result.newState;
      const sealed = { version: 'mls10', wireformat: 'mls_private_message', privateMessage: result.privateMessage };
      return { message_b64: b64(encodeMlsMessage(sealed)) };
    }
    case 'state': {
      const state = group(member(cmd.m));
      const leaves = state.ratchetTree.filter((_, index) => index % 2 === 0);
      return {
        epoch: Number(state.groupContext.epoch),
        leaf: state.privatePath.leafIndex,
        epochAuthenticator_b64: b64(state.keySchedule.epochAuthenticator),
        members_b64: leaves.map((node) => (node === undefined ? null : b64(node.leaf.credential.identity))),
      };
    }
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

const out = (answer) => process.stdout.write(JSON.stringify(answer) + '\n');
let chain = Promise.resolve();
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  chain = chain.then(async () => {
    let cmd = {};
    try {
      cmd = JSON.parse(line);
      out({ id: cmd.id, ok: true, ...(await handle(cmd)) });
    } catch (error) {
      out({ id: cmd.id, ok: false, error: String((error && error.stack) || error) });
    }
  });
});
