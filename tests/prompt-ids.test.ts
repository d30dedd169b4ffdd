/**
 * Issue 10 item 1 in the fast suite: a ComfyUI that ignores the gateway's prompt_id (the fake's `legacy` mode, like
 * the real 7914c47) still gives each user exactly their own prompts under the gateway's ids.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { sampleWorkflow } from './helpers/fakeComfy';
import { flushedLogs } from './helpers/gateway';
import { openSocket } from './helpers/ws';
import { createLedger } from '../gateway/proxy/isolation/ledger';
import { postJson, raw, startIsolationEnv, type IsolationEnv } from './isolation-env';

const wsUrl = (env: IsolationEnv, p: string) => env.gw.url.replace(/^http/, 'ws') + p;

describe('prompt ids on a server that makes its own (legacy)', () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv({ fake: { legacy: true, promptDelayMs: 400 } });
  });
  afterAll(() => env.close());

  test("the answer, the owner's events (even those that beat the answer), history and the image all use the gateway's id", async () => {
    const a = await openSocket(wsUrl(env, '/ws?clientId=a1'), env.alice.headers);
    const b = await openSocket(wsUrl(env, '/ws?clientId=b1'), env.bob.headers);
    try {
      const r = await postJson(env.gw, '/prompt', env.alice, { client_id: 'a1', prompt: sampleWorkflow('legacy-a') });
      expect(r.status).toBe(200);
      const pid = r.json().prompt_id as string;
      // ComfyUI knows the prompt by another id; the client never sees that one.
      expect(env.fake.prompts.has(pid)).toBe(false);
      const upstreamId = [...env.fake.prompts.keys()].pop()!;
      expect(upstreamId).not.toBe(pid);
      const start = await a.next((f) => f.json?.type === 'execution_start', 5000);
      expect(start.json.data.prompt_id).toBe(pid);
      const executed = await a.next((f) => f.json?.type === 'executed', 5000);
      expect(executed.json.data.prompt_id).toBe(pid);
      await a.next((f) => f.json?.type === 'execution_success' && f.json.data.prompt_id === pid, 5000);
      expect(a.frames.some((f) => f.data.includes(upstreamId))).toBe(false);
      expect(b.frames.some((f) => f.data.includes(upstreamId) || f.data.includes(pid))).toBe(false);

      const hist = (await raw(env.gw, 'GET', '/history', { headers: env.alice.headers })).json();
      expect(Object.keys(hist)).toEqual([pid]);
      expect(hist[pid].prompt[1]).toBe(pid);
      const one = (await raw(env.gw, 'GET', `/api/history/${pid}`, { headers: env.alice.headers })).json();
      expect(Object.keys(one)).toEqual([pid]);
      const img = executed.json.data.output.images[0];
      const view = await raw(env.gw, 'GET', `/view?filename=${img.filename}&subfolder=${img.subfolder}&type=output`, {
        headers: env.alice.headers,
      });
      expect(view.status).toBe(200);
      // bob: nothing; the admin (static key) sees the gateway's id too
      expect((await raw(env.gw, 'GET', '/history', { headers: env.bob.headers })).json()).toEqual({});
      expect((await raw(env.gw, 'GET', `/history/${pid}`, { headers: env.bob.headers })).json()).toEqual({});
      expect(Object.keys((await raw(env.gw, 'GET', '/history', { headers: env.admin.headers })).json())).toContain(pid);
      expect(Object.keys((await raw(env.gw, 'GET', `/history/${pid}`, { headers: env.admin.headers })).json())).toEqual([pid]);
    } finally {
      a.close();
      b.close();
    }
  });

  test('queue, delete and interrupt take and show the gateway ids; bob cannot touch them', async () => {
    const first = (await postJson(env.gw, '/prompt', env.alice, { prompt: sampleWorkflow('legacy-q1') })).json().prompt_id as string;
    const second = (await postJson(env.gw, '/prompt', env.alice, { prompt: sampleWorkflow('legacy-q2') })).json().prompt_id as string;
    const q = (await raw(env.gw, 'GET', '/queue', { headers: env.alice.headers })).json();
    expect(q.queue_running.map((e: unknown[]) => e[1])).toEqual([first]);
    expect(q.queue_pending.map((e: unknown[]) => e[1])).toEqual([second]);
    expect((await raw(env.gw, 'GET', '/queue', { headers: env.bob.headers })).json().queue_pending).toEqual([]);
    const admin = (await raw(env.gw, 'GET', '/queue', { headers: env.admin.headers })).json();
    expect(admin.queue_pending.map((e: unknown[]) => e[1])).toEqual([second]);

    // bob's delete and interrupt of alice's ids do nothing upstream
    await postJson(env.gw, '/queue', env.bob, { delete: [second] });
    await postJson(env.gw, '/interrupt', env.bob, { prompt_id: first });
    expect((await raw(env.gw, 'GET', '/queue', { headers: env.alice.headers })).json().queue_pending.map((e: unknown[]) => e[1])).toEqual([
      second,
    ]);

    const del = await postJson(env.gw, '/queue', env.alice, { delete: [second] });
    expect(del.status).toBe(200);
    expect((await raw(env.gw, 'GET', '/queue', { headers: env.alice.headers })).json().queue_pending).toEqual([]);
    const stop = await postJson(env.gw, '/interrupt', env.alice, { prompt_id: first });
    expect(stop.status).toBe(200);
    const upstreamFirst = [...env.fake.prompts.values()].find((e) => e.prompt?.['9']?.inputs?.filename_prefix?.includes('legacy-q1'));
    const done = await env.fake.waitForPrompt(upstreamFirst.prompt_id, 5000);
    expect(done.status.status_str).toBe('error');
    expect(JSON.stringify(done.status.messages)).toContain('execution_interrupted');
    // the history entry is there under the gateway's id, and alice deletes it by that id
    expect(Object.keys((await raw(env.gw, 'GET', `/history/${first}`, { headers: env.alice.headers })).json())).toEqual([first]);
    await postJson(env.gw, '/history', env.alice, { delete: [first] });
    expect((await raw(env.gw, 'GET', `/history/${first}`, { headers: env.alice.headers })).json()).toEqual({});
  });

  test('the mismatch is logged once as a warning', async () => {
    const warned = (await flushedLogs(env.gw)).filter((l) => String(l.msg).includes('ignores the prompt_id'));
    expect(warned).toHaveLength(1);
    expect(warned[0].level).toBe(40);
  });
});

test('the ledger keeps the id mapping across restarts', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ledger-ids-'));
  const file = path.join(dir, 'ledger.json');
  const logger = pino({ level: 'silent' });
  const l = createLedger({ file, logger });
  l.add({ id: 'g1', owner: 'alice', clientId: '', upstreamClientId: 'u' });
  l.setUpstreamId('g1', 'c1');
  await l.close();
  const again = createLedger({ file, logger });
  expect(again.byUpstreamId('c1')).toBe('g1');
  expect(again.get('g1')?.upstreamId).toBe('c1');
  again.remove('g1');
  expect(again.byUpstreamId('c1')).toBeUndefined();
  await again.close();
  fs.rmSync(dir, { recursive: true, force: true });
});
