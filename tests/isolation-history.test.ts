/** Issue 5 item 4 / issue 9: GET /history is one read of everyone's history, filtered to the caller's, however many prompts. */
import bcrypt from 'bcrypt';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { PW, postJson, raw, received, startIsolationEnv, until, type Caller, type IsolationEnv } from './isolation-env';

describe('GET /history with a long ledger', () => {
  let env: IsolationEnv;
  let fake: FakeComfy;
  let dataDir: string;
  const alices: string[] = [];
  const bobs: string[] = [];

  const queue = async (who: Caller) => {
    const r = await postJson(env.gw, '/prompt', who, { prompt: sampleWorkflow() });
    const id = r.json().prompt_id as string;
    await fake.waitForPrompt(id);
    return id;
  };

  beforeAll(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-iso-hist-'));
    // 300 earlier prompts of alice's that ComfyUI no longer has (its history was restarted, say). alice's account
    // predates account ids, so the ledger keeps her prompts under her name.
    const rows = Array.from({ length: 300 }, (_, i) => [crypto.randomUUID(), 'alice', 1_700_000_000_000 + i, '', 'x', []]);
    fs.writeFileSync(path.join(dataDir, 'prompt_ledger.json'), JSON.stringify({ version: 1, prompts: rows }), { mode: 0o600 });
    const alice = {
      username: 'alice',
      role: 'user',
      password_hash: bcrypt.hashSync(PW, 4),
      disabled: false,
      permissions: [],
      created_at: '2026-01-01T00:00:00.000Z',
      tokens_valid_after: 0,
    };
    fs.writeFileSync(path.join(dataDir, 'users_db.json'), JSON.stringify({ version: 1, users: [alice], tokens: [], revoked: [] }), {
      mode: 0o600,
    });
    fake = await startFakeComfy({ promptDelayMs: 5 });
    env = await startIsolationEnv({ fakeInstance: fake, config: { data_dir: dataDir } });
    for (let i = 0; i < 3; i++) alices.push(await queue(env.alice));
    for (let i = 0; i < 2; i++) bobs.push(await queue(env.bob));
    alices.push(await queue(env.alice));
  });
  afterAll(async () => {
    await env.close();
    await fake.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('many own prompts: one read of the whole history, filtered to the caller’s', async () => {
    fake.clearRequests();
    const a = (await raw(env.gw, 'GET', '/api/history', { headers: env.alice.headers })).json();
    expect(Object.keys(a)).toEqual(alices);
    expect(received(fake, /^\/api\/history$/)).toHaveLength(1);
    const last2 = (await raw(env.gw, 'GET', '/api/history?max_items=2', { headers: env.alice.headers })).json();
    expect(Object.keys(last2)).toEqual(alices.slice(-2));
    const second = (await raw(env.gw, 'GET', '/history?max_items=1&offset=1', { headers: env.alice.headers })).json();
    expect(Object.keys(second)).toEqual([alices[1]]);
    // the upstream never got our paging parameters: it would have paged everyone's history
    expect(received(fake, /max_items|offset/)).toEqual([]);
  });

  it('few own prompts: also one upstream read, never one per prompt (issue 9)', async () => {
    fake.clearRequests();
    const b = (await raw(env.gw, 'GET', '/history', { headers: env.bob.headers })).json();
    expect(Object.keys(b)).toEqual(bobs);
    expect(received(fake, /^\/history$/)).toHaveLength(1);
    expect(received(fake, /^\/(api\/)?history\//)).toEqual([]);
    const bad = await raw(env.gw, 'GET', '/history?max_items=lots', { headers: env.bob.headers });
    expect([bad.status, bad.json().error.code]).toEqual([400, 'INVALID_REQUEST']);
  });

  it('a user with 40 prompts (and 300 that ComfyUI forgot) costs one upstream read per GET /history, on both twins', async () => {
    const many: string[] = [];
    for (let i = 0; i < 40; i++) {
      const r = await postJson(env.gw, '/prompt', env.bob, { prompt: sampleWorkflow() });
      many.push(r.json().prompt_id as string);
    }
    await Promise.all(many.map((id) => fake.waitForPrompt(id)));
    // The gateway's queue follows each prompt to its end (reads of the worker's queue, then the usage read of its
    // history entry): wait until it has, so the count below is only what GET /history costs.
    await until(
      async () => {
        const u = (await raw(env.gw, 'GET', '/gateway/api/usage', { headers: env.bob.headers })).json();
        const row = u.usage.find((x: { user: string }) => x.user === 'bob');
        return !!row && row.images === row.prompts;
      },
      20_000,
      'the gateway done with every prompt of bob',
    );
    for (const p of ['/history', '/api/history', '/history?max_items=5', '/api/history?max_items=3&offset=2']) {
      fake.clearRequests();
      const r = await raw(env.gw, 'GET', p, { headers: env.bob.headers });
      expect(r.status).toBe(200);
      expect([p, fake.requests.length, received(fake, /^\/(api\/)?history(\?|$)/).length]).toEqual([p, 1, 1]);
    }
    const all = (await raw(env.gw, 'GET', '/history', { headers: env.bob.headers })).json();
    expect(Object.keys(all)).toEqual([...bobs, ...many]);
  });

  it('admins read everything', async () => {
    const all = (await raw(env.gw, 'GET', '/history', { headers: env.admin.headers })).json();
    expect(Object.keys(all)).toEqual(expect.arrayContaining([...alices, ...bobs]));
  });
});
