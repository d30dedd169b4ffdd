/** Issue 5 item 5: the isolating WebSocket relay (clientId binding, no broadcast, per-user frames). */
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { makePng } from './helpers/png';
import type { TestSocket } from './helpers/ws';
import { postJson, socket, startIsolationEnv, until, type Caller, type IsolationEnv } from './isolation-env';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function binaryFrame(type: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt32BE(type, 0);
  return Buffer.concat([h, payload]);
}
function previewWithMetadata(promptId: string): Buffer {
  const meta = Buffer.from(JSON.stringify({ node_id: '3', prompt_id: promptId, display_node_id: '3', image_type: 'image/png' }));
  const len = Buffer.alloc(4);
  len.writeUInt32BE(meta.length, 0);
  return binaryFrame(4, Buffer.concat([len, meta, makePng({ color: [1, 2, 3] })]));
}
function progressText(nodeId: string, text: string): Buffer {
  const id = Buffer.from(nodeId);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(id.length, 0);
  return binaryFrame(3, Buffer.concat([len, id, Buffer.from(text)]));
}

const jsonFrames = (s: TestSocket) => s.frames.filter((f) => !f.isBinary).map((f) => (f as { json?: any }).json);
const mentions = (s: TestSocket, promptId: string) => s.frames.some((f) => f.data.includes(promptId));

describe('isolating WebSocket relay', () => {
  let env: IsolationEnv;
  let fake: FakeComfy;
  const open: TestSocket[] = [];
  const connect = async (c: Caller, clientId?: string, path?: string) => {
    const s = await socket(env.gw, c, clientId, path);
    open.push(s);
    await s.next((f) => f.json?.type === 'status');
    return s;
  };
  const queue = async (c: Caller, clientId?: string) => {
    const r = await postJson(env.gw, '/api/prompt', c, {
      prompt: sampleWorkflow('ws'),
      ...(clientId !== undefined ? { client_id: clientId } : {}),
    });
    expect(r.status).toBe(200);
    return r.json().prompt_id as string;
  };

  beforeAll(async () => {
    fake = await startFakeComfy({ promptDelayMs: 60 });
    env = await startIsolationEnv({ fakeInstance: fake });
  });
  afterEach(() => {
    for (const s of open.splice(0)) s.close();
  });
  afterAll(async () => {
    await env.close();
    await fake.close();
  });

  it('the same clientId from two users maps to two upstream sockets; the sid comes back as the client’s own', async () => {
    const a = await socket(env.gw, env.alice, 'shared-id');
    const b = await socket(env.gw, env.bob, 'shared-id', '/api/ws');
    open.push(a, b);
    const sa = await a.next((f) => f.json?.type === 'status');
    const sb = await b.next((f) => f.json?.type === 'status');
    expect(sa.json.data.sid).toBe('shared-id');
    expect(sb.json.data.sid).toBe('shared-id');
    await until(() => fake.wsClients().length >= 2);
    const sids = fake.wsClients().map((c) => c.sid);
    expect(sids).not.toContain('shared-id');
    expect(new Set(sids).size).toBe(sids.length);
    expect(fake.wsClients().every((c) => c.active)).toBe(true);
  });

  it('bob presenting alice’s clientId sees none of alice’s events, JSON or binary', async () => {
    const a = await connect(env.alice, 'tab-a');
    const b = await connect(env.bob, 'tab-a');
    const id = await queue(env.alice, 'tab-a');
    await a.next((f) => f.json?.type === 'executing' && f.json.data.node === null && f.json.data.prompt_id === id, 5000);
    expect(jsonFrames(a).map((m) => m.type)).toEqual(expect.arrayContaining(['execution_start', 'executed', 'execution_success']));
    expect(a.frames.some((f) => f.isBinary)).toBe(true); // the fake's legacy preview (type 1) reached its owner
    await sleep(100);
    expect(mentions(b, id)).toBe(false);
    expect(b.frames.filter((f) => f.isBinary)).toEqual([]);
    expect(jsonFrames(b).every((m) => m.type === 'status')).toBe(true);
  });

  it('a reconnect with the same clientId keeps receiving after the old socket closes (ComfyUI drops the sid on close)', async () => {
    const first = await connect(env.alice, 'tab-re');
    const second = await connect(env.alice, 'tab-re');
    first.close();
    await first.closed;
    await sleep(150); // the upstream close of the old socket lands after the new one registered
    const id = await queue(env.alice, 'tab-re');
    const done = await second.next((f) => f.json?.type === 'executing' && f.json.data.node === null && f.json.data.prompt_id === id, 5000);
    expect(done.json.data.prompt_id).toBe(id);
  });

  it('a prompt queued without client_id is not broadcast to anyone', async () => {
    const a = await connect(env.alice);
    const b = await connect(env.bob);
    const id = await queue(env.alice);
    await fake.waitForPrompt(id);
    await sleep(100);
    expect(mentions(a, id)).toBe(false);
    expect(mentions(b, id)).toBe(false);
    expect(b.frames.filter((f) => f.isBinary)).toEqual([]);
  });

  it('a socket that asked for no clientId gets one it can reuse for its prompts', async () => {
    const a = await socket(env.gw, env.alice);
    open.push(a);
    const st = await a.next((f) => f.json?.type === 'status');
    const sid = st.json.data.sid as string;
    expect(sid).toMatch(/^[0-9a-f]{32}$/);
    expect(fake.wsClients().map((c) => c.sid)).not.toContain(sid);
    const id = await queue(env.alice, sid);
    await a.next((f) => f.json?.type === 'execution_success' && f.json.data.prompt_id === id, 5000);
  });

  it('broadcast previews and progress text of alice’s running prompt reach alice only; status passes to all', async () => {
    fake.promptDelayMs = 800;
    try {
      const a = await connect(env.alice, 'run-a');
      const b = await connect(env.bob, 'run-b');
      const id = await queue(env.alice, 'run-a');
      await a.next((f) => f.json?.type === 'execution_start' && f.json.data.prompt_id === id, 5000);
      await sleep(50);
      fake.sendWsBinary(null, progressText('3', 'alice step 1/20'));
      fake.sendWsBinary(null, binaryFrame(1, Buffer.concat([Buffer.from([0, 0, 0, 2]), makePng({ color: [9, 9, 9] })])));
      fake.sendWsBinary(null, previewWithMetadata(id));
      fake.sendWs(null, { type: 'progress', data: { value: 1, max: 20, prompt_id: id, node: '3' } });
      fake.sendWs(null, { type: 'custom.node.event', data: { node: '3', text: 'alice private text' } });
      // status reaches everyone, each with their own count (the gateway's queue, issue 12): bob has nothing queued,
      // alice her running prompt — never ComfyUI's count of everyone's
      fake.sendWs(null, { type: 'status', data: { status: { exec_info: { queue_remaining: 7 }, probe: 'p1' } } });
      const own = (f: { json?: any }) =>
        f.json?.type === 'status' && f.json.data.status.probe === 'p1' ? f.json.data.status.exec_info.queue_remaining : -1;
      expect(own(await b.next((f) => own(f) >= 0))).toBe(0);
      expect(own(await a.next((f) => own(f) >= 0))).toBe(1);
      await a.next((f) => f.isBinary && f.data.readUInt32BE(0) === 3);
      await a.next((f) => f.isBinary && f.data.readUInt32BE(0) === 4);
      await a.next((f) => f.json?.type === 'custom.node.event');
      await sleep(150);
      expect(b.frames.filter((f) => f.isBinary)).toEqual([]);
      expect(mentions(b, id)).toBe(false);
      expect(b.frames.some((f) => f.data.includes('alice private text'))).toBe(false);
      await fake.waitForPrompt(id);
    } finally {
      fake.promptDelayMs = 60;
    }
  });

  it('once a run is over its socket gets no more ownerless frames; custom events reach everyone only while idle', async () => {
    const a = await connect(env.alice, 'after-a');
    const b = await connect(env.bob, 'after-b');
    const id = await queue(env.alice, 'after-a');
    await a.next((f) => f.json?.type === 'executing' && f.json.data.node === null && f.json.data.prompt_id === id, 5000);
    fake.sendWsBinary(null, progressText('3', 'late text'));
    fake.sendWs(null, { type: 'status', data: { status: { exec_info: { queue_remaining: 0 } } } });
    fake.sendWs(null, { type: 'custom.event', data: { n: 1 } }); // unsure right after a status: dropped
    await sleep(150); // the gateway has asked ComfyUI's queue meanwhile: idle
    fake.sendWs(null, { type: 'custom.event', data: { n: 2 } });
    await a.next((f) => f.json?.type === 'custom.event' && f.json.data.n === 2);
    await b.next((f) => f.json?.type === 'custom.event' && f.json.data.n === 2);
    expect(a.frames.some((f) => f.data.includes('late text'))).toBe(false);
    expect(b.frames.some((f) => f.data.includes('late text'))).toBe(false);
    expect([...a.frames, ...b.frames].some((f) => f.data.includes('"n": 1'))).toBe(false);
  });

  it('frames naming a prompt the gateway does not know are dropped for everyone', async () => {
    const a = await connect(env.alice, 'x-a');
    fake.sendWs(null, { type: 'executing', data: { node: '1', prompt_id: 'not-queued-through-the-gateway' } });
    fake.sendWsBinary(null, previewWithMetadata('not-queued-through-the-gateway'));
    fake.sendWs(null, { type: 'status', data: { status: { exec_info: { queue_remaining: 0 } } } });
    await a.next((f) => f.json?.type === 'status' && f.json.data.status.exec_info.queue_remaining === 0);
    await sleep(50);
    expect(mentions(a, 'not-queued-through-the-gateway')).toBe(false);
  });

  it('the server’s feature_flags reply is forwarded', async () => {
    const a = await socket(env.gw, env.alice, 'ff');
    open.push(a);
    a.ws.send(JSON.stringify({ type: 'feature_flags', data: { supports_preview_metadata: true } }));
    const ff = await a.next((f) => f.json?.type === 'feature_flags');
    expect(ff.json.data.supports_preview_metadata).toBe(true);
  });
});
