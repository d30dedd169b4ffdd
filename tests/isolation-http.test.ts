/** Issue 5: comfy-user binding, prompt ownership, queue/history/jobs filtering, delete/clear/interrupt, restart. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { postJson, raw, received, startIsolationEnv, until, type Caller, type IsolationEnv } from './isolation-env';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

async function queue(
  env: IsolationEnv,
  who: Caller,
  opts: { clientId?: string; prefix?: string; extra?: Record<string, unknown>; promptId?: string } = {},
): Promise<string> {
  const body: Record<string, unknown> = { prompt: sampleWorkflow(opts.prefix ?? 'ComfyUI') };
  if (opts.clientId !== undefined) body.client_id = opts.clientId;
  if (opts.extra) body.extra_data = opts.extra;
  if (opts.promptId) body.prompt_id = opts.promptId;
  const r = await postJson(env.gw, '/api/prompt', who, body);
  expect(r.status).toBe(200);
  return r.json().prompt_id;
}

describe('isolation over HTTP', () => {
  const inFakeHistory = async (id: string) => Object.keys((await raw(fake, 'GET', `/history/${id}`)).json()).length > 0;
  let env: IsolationEnv;
  let fake: FakeComfy;
  let dataDir: string;
  beforeAll(async () => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-iso-data-'));
    fake = await startFakeComfy({ promptDelayMs: 40 });
    env = await startIsolationEnv({ fakeInstance: fake, config: { data_dir: dataDir } });
  });
  afterAll(async () => {
    await env.close();
    await fake.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  describe('comfy-user', () => {
    it('each user gets their own ComfyUI user, sent on every request; the client cannot choose it', async () => {
      fake.clearRequests();
      const a = await raw(env.gw, 'GET', '/api/userdata?dir=workflows', { headers: { ...env.alice.headers, 'comfy-user': 'default' } });
      const b = await raw(env.gw, 'GET', '/userdata?dir=workflows', {
        headers: { ...env.bob.headers, 'Comfy-User': Object.keys(fake.users).find((k) => fake.users[k] === 'alice') ?? 'x' },
      });
      expect([a.status, b.status]).toEqual([404, 404]); // no workflows yet: the user is known (unknown would be 401)
      const ids = Object.fromEntries(Object.entries(fake.users).map(([id, name]) => [name, id]));
      expect(ids.alice).toMatch(/^alice_/);
      expect(ids.bob).toMatch(/^bob_/);
      const seen = received(fake, /userdata\?dir=workflows/).map((r) => r.headers['comfy-user']);
      expect(seen).toEqual([ids.alice, ids.bob]);
      const file = path.join(dataDir, 'comfy_users.json');
      // kept per account id: a later account of the same name gets a ComfyUI user of its own
      const accountId = (name: string) => env.gw.composed.users.get(name)!.id;
      expect(JSON.parse(fs.readFileSync(file, 'utf8')).users).toMatchObject({
        [accountId('alice')]: ids.alice,
        [accountId('bob')]: ids.bob,
      });
      expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    });

    it('GET /users answers only the caller’s own entry, on every twin', async () => {
      for (const p of ['/users', '/api/users', '//api//users', '/%75sers']) {
        const r = await raw(env.gw, 'GET', p, { headers: env.bob.headers });
        expect(r.status).toBe(200);
        const users = r.json().users;
        expect(Object.values(users)).toEqual(['bob']);
      }
      const admin = await raw(env.gw, 'GET', '/users', { headers: env.admin.headers });
      expect(Object.values(admin.json().users)).toEqual(['api-key']);
    });

    it('a user’s saved workflow is invisible to the other', async () => {
      const put = await raw(env.gw, 'POST', '/api/userdata/workflows%2Fsecret.json', {
        headers: { ...env.alice.headers, 'Content-Type': 'application/json' },
        body: '{"nodes":[]}',
      });
      expect(put.status).toBe(200);
      const mine = await raw(env.gw, 'GET', '/api/userdata/workflows%2Fsecret.json', { headers: env.alice.headers });
      expect(mine.status).toBe(200);
      const theirs = await raw(env.gw, 'GET', '/api/userdata/workflows%2Fsecret.json', { headers: env.bob.headers });
      expect(theirs.status).toBe(404);
      const list = await raw(env.gw, 'GET', '/api/userdata?dir=workflows', { headers: env.bob.headers });
      expect(list.text).not.toContain('secret.json');
    });
  });

  describe('prompts', () => {
    it('the gateway assigns the prompt id, binds client_id to the user and prefixes saves', async () => {
      const forced = '11111111-1111-4111-8111-111111111111';
      const id = await queue(env, env.alice, { clientId: 'tab-1', prefix: 'mine', promptId: forced });
      expect(id).toMatch(UUID);
      expect(id).not.toBe(forced);
      const stored = await fake.arrival(id);
      expect(stored.extra_data.client_id).toEqual(expect.any(String));
      expect(stored.extra_data.client_id).not.toBe('tab-1');
      expect(stored.prompt['9'].inputs.filename_prefix).toBe('alice/mine');
      const h = await fake.waitForPrompt(id);
      expect(h.outputs['9'].images[0].subfolder).toBe('alice');
    });

    it('a prompt without client_id still gets one, so its events are never broadcast', async () => {
      const id = await queue(env, env.bob);
      expect(typeof (await fake.arrival(id)).extra_data.client_id).toBe('string');
      const viaExtra = await postJson(env.gw, '/prompt', env.bob, {
        prompt: sampleWorkflow(),
        extra_data: { client_id: 'someone-elses-socket' },
      });
      expect((await fake.arrival(viaExtra.json().prompt_id)).extra_data.client_id).not.toBe('someone-elses-socket');
      await fake.waitForPrompt(viaExtra.json().prompt_id);
    });

    it('a bad body is refused before ComfyUI sees it', async () => {
      fake.clearRequests();
      const bad = await raw(env.gw, 'POST', '/prompt', {
        headers: { ...env.alice.headers, 'Content-Type': 'application/json' },
        body: '{"prompt":',
      });
      expect([bad.status, bad.json().error.code]).toEqual([400, 'INVALID_BODY']);
      const arr = await raw(env.gw, 'POST', '/prompt', {
        headers: { ...env.alice.headers, 'Content-Type': 'application/json' },
        body: '[1]',
      });
      expect([arr.status, arr.json().error.code]).toEqual([400, 'INVALID_BODY']);
      const big = await raw(env.gw, 'POST', '/prompt', {
        headers: { ...env.alice.headers, 'Content-Type': 'application/json' },
        body: `{"prompt":{},"x":"${'a'.repeat(9 * 1024 * 1024)}"}`,
      });
      expect([big.status, big.json().error.code]).toEqual([413, 'PAYLOAD_TOO_LARGE']);
      expect(received(fake, /prompt/, 'POST')).toEqual([]);
    });
  });

  describe('queue, history and jobs', () => {
    let alicePending: string[];
    let bobPending: string[];
    let aliceDone: string;
    let bobDone: string;

    beforeAll(async () => {
      aliceDone = await queue(env, env.alice, { extra: { my_api_key: 'alice-secret', note: 'n' } });
      bobDone = await queue(env, env.bob);
      await fake.waitForPrompt(aliceDone);
      await fake.waitForPrompt(bobDone);
      // long enough that the pending prompts are still pending however loaded the machine is (an interrupt ends
      // the running one at once; afterAll clears the rest)
      fake.promptDelayMs = 600_000;
      alicePending = [await queue(env, env.alice, { extra: { my_api_key: 'alice-secret' } }), await queue(env, env.alice)];
      bobPending = [await queue(env, env.bob), await queue(env, env.bob)];
    });
    afterAll(async () => {
      fake.promptDelayMs = 40;
      await raw(env.gw, 'POST', '/queue', {
        headers: { ...env.admin.headers, 'Content-Type': 'application/json' },
        body: '{"clear":true}',
      });
      await raw(env.gw, 'POST', '/interrupt', { headers: { ...env.admin.headers, 'Content-Type': 'application/json' }, body: '{}' });
    });

    const ids = (q: any) => [...q.queue_running, ...q.queue_pending].map((e: any[]) => e[1]);

    it('GET /queue shows each user only their own prompts, on every twin; admins see all without others’ secrets', async () => {
      for (const p of ['/queue', '/api/queue', '//api//queue', '/%71ueue', '/api/api/queue']) {
        const a = await raw(env.gw, 'GET', p, { headers: env.alice.headers });
        expect(ids(a.json()).sort()).toEqual([...alicePending].sort());
        const b = await raw(env.gw, 'GET', p, { headers: env.bob.headers });
        expect(ids(b.json()).sort()).toEqual([...bobPending].sort());
      }
      const all = (await raw(env.gw, 'GET', '/queue', { headers: env.admin.headers })).json();
      expect(ids(all).sort()).toEqual([...alicePending, ...bobPending].sort());
      const alicesForAdmin = [...all.queue_running, ...all.queue_pending].find((e: any[]) => e[1] === alicePending[0]);
      expect(alicesForAdmin[3].my_api_key).toBeUndefined();
      const alicesForAlice = [...(await raw(env.gw, 'GET', '/queue', { headers: env.alice.headers })).json().queue_pending, ...[]]
        .concat((await raw(env.gw, 'GET', '/queue', { headers: env.alice.headers })).json().queue_running)
        .find((e: any[]) => e[1] === alicePending[0]);
      expect(alicesForAlice[3].my_api_key).toBe('alice-secret');
    });

    it('GET /history and /history/{id}: own entries only; another user’s id answers exactly like a missing one', async () => {
      const a = (await raw(env.gw, 'GET', '/api/history', { headers: env.alice.headers })).json();
      expect(Object.keys(a)).toContain(aliceDone);
      expect(Object.keys(a)).not.toContain(bobDone);
      const b = (await raw(env.gw, 'GET', '/history?max_items=64', { headers: env.bob.headers })).json();
      expect(Object.keys(b)).toContain(bobDone);
      expect(Object.keys(b)).not.toContain(aliceDone);
      for (const p of [`/history/${aliceDone}`, `/api/history/${aliceDone}`, `//api//history//${aliceDone}`, `/%68istory/${aliceDone}`]) {
        const theirs = await raw(env.gw, 'GET', p, { headers: env.bob.headers });
        const missing = await raw(env.gw, 'GET', '/history/00000000-0000-4000-8000-000000000000', { headers: env.bob.headers });
        expect(theirs.status).toBe(missing.status);
        expect(theirs.text).toBe(missing.text);
        expect(theirs.headers['content-type']).toBe(missing.headers['content-type']);
      }
      const own = (await raw(env.gw, 'GET', `/history/${aliceDone}`, { headers: env.alice.headers })).json();
      expect(own[aliceDone].prompt[3].my_api_key).toBe('alice-secret');
      const adminView = (await raw(env.gw, 'GET', `/history/${aliceDone}`, { headers: env.admin.headers })).json();
      expect(adminView[aliceDone]).toBeDefined();
      expect(adminView[aliceDone].prompt[3].my_api_key).toBeUndefined();
      expect(adminView[aliceDone].prompt[3].note).toBe('n');
    });

    it('/api/jobs lists own jobs only, paginated after filtering; another user’s job is “not found”', async () => {
      for (const p of ['/api/jobs', '/api/api/jobs', '//api//jobs']) {
        const a = (await raw(env.gw, 'GET', p, { headers: env.alice.headers })).json();
        const jobIds = a.jobs.map((j: any) => j.id);
        expect(jobIds).toEqual(expect.arrayContaining([aliceDone, ...alicePending]));
        expect(jobIds).not.toContain(bobDone);
        expect(jobIds.filter((x: string) => bobPending.includes(x))).toEqual([]);
      }
      const page = (await raw(env.gw, 'GET', '/api/jobs?limit=1&offset=1', { headers: env.bob.headers })).json();
      expect(page.jobs).toHaveLength(1);
      expect(page.pagination.total).toBeGreaterThanOrEqual(3);
      expect(page.pagination.total).toBeLessThan(6);
      const theirs = await raw(env.gw, 'GET', `/api/jobs/${aliceDone}`, { headers: env.bob.headers });
      const missing = await raw(env.gw, 'GET', '/api/jobs/00000000-0000-4000-8000-000000000000', { headers: env.bob.headers });
      expect([theirs.status, theirs.text]).toEqual([missing.status, missing.text]);
      expect(theirs.status).toBe(404);
      const own = await raw(env.gw, 'GET', `/api/jobs/${aliceDone}`, { headers: env.alice.headers });
      expect(own.status).toBe(200);
      expect(own.json().id).toBe(aliceDone);
    });

    it('delete and clear act only on the caller’s own prompts', async () => {
      const target = alicePending[alicePending.length - 1];
      let r = await postJson(env.gw, '/api/queue', env.bob, { delete: [target] });
      expect(r.status).toBe(200);
      r = await postJson(env.gw, '/api/history', env.bob, { delete: [aliceDone] });
      expect(r.status).toBe(200);
      r = await postJson(env.gw, '/queue', env.bob, { clear: true });
      expect(r.status).toBe(200);
      r = await postJson(env.gw, '/history', env.bob, { clear: true });
      expect(r.status).toBe(200);
      const q = (await raw(env.gw, 'GET', '/queue', { headers: env.admin.headers })).json();
      expect(ids(q)).toEqual(expect.arrayContaining(alicePending));
      const stillPendingForBob = ids(q).filter((x: string) => bobPending.includes(x));
      expect(await inFakeHistory(aliceDone)).toBe(true);
      expect(await inFakeHistory(bobDone)).toBe(false);
      // bob's pending prompts are gone, except one that may already be running
      expect(stillPendingForBob.length).toBeLessThanOrEqual(1);
      for (const f of received(fake, /\/(queue|history)$/, 'POST')) {
        // ComfyUI only ever received bob's own ids, never a clear
        expect(f.bodyLength).toBeGreaterThan(0);
      }
      r = await postJson(env.gw, '/queue', env.alice, { delete: [target] });
      const after = (await raw(env.gw, 'GET', '/queue', { headers: env.alice.headers })).json();
      expect(ids(after)).not.toContain(target);
    });

    it('interrupt stops only the caller’s own running prompt', async () => {
      await until(
        async () =>
          ids((await raw(env.gw, 'GET', '/queue', { headers: env.admin.headers })).json()).length > 0 &&
          !!(await raw(env.gw, 'GET', '/queue', { headers: env.admin.headers })).json().queue_running.length,
      );
      const running = (await raw(env.gw, 'GET', '/queue', { headers: env.admin.headers })).json().queue_running[0][1];
      const owner = alicePending.includes(running) ? env.alice : env.bob;
      const other = owner === env.alice ? env.bob : env.alice;
      expect((await postJson(env.gw, '/interrupt', other, {})).status).toBe(200);
      expect((await postJson(env.gw, '/api/interrupt', other, { prompt_id: running })).status).toBe(200);
      const emptyBody = await raw(env.gw, 'POST', '/interrupt', { headers: other.headers });
      expect(emptyBody.status).toBe(200);
      await new Promise((r) => setTimeout(r, 100));
      expect((await fake.arrival(running))?.interrupt).toBeFalsy();
      expect((await postJson(env.gw, '/interrupt', owner, {})).status).toBe(200);
      const h = await fake.waitForPrompt(running, 5000);
      expect(h.status.messages.map((m: any[]) => m[0])).toContain('execution_interrupted');
    });
  });

  it('the ledger survives a restart of the gateway', async () => {
    fake.promptDelayMs = 20;
    const mine = await queue(env, env.alice, { prefix: 'persist' });
    await fake.waitForPrompt(mine);
    await env.gw.close();
    const { startGateway, TEST_KEY } = await import('./helpers/gateway');
    const gw2 = await startGateway({ api_key: TEST_KEY, upstream: fake.url, data_dir: dataDir, model_downloads: { enabled: false } });
    try {
      const { login } = await import('./helpers/auth');
      const alice = { name: 'alice', headers: { Authorization: `Bearer ${(await login(gw2, 'alice')).token}` } };
      const bob = { name: 'bob', headers: { Authorization: `Bearer ${(await login(gw2, 'bob')).token}` } };
      const a = (await raw(gw2, 'GET', `/history/${mine}`, { headers: alice.headers })).json();
      expect(Object.keys(a)).toEqual([mine]);
      const b = (await raw(gw2, 'GET', `/history/${mine}`, { headers: bob.headers })).json();
      expect(b).toEqual({});
      const ledger = JSON.parse(fs.readFileSync(path.join(dataDir, 'prompt_ledger.json'), 'utf8'));
      // the owner is kept as alice's account id
      expect(ledger.prompts.some((r: any[]) => r[0] === mine && r[1] === gw2.composed.users.get('alice')!.id)).toBe(true);
      expect(fs.statSync(path.join(dataDir, 'prompt_ledger.json')).mode & 0o777).toBe(0o600);
    } finally {
      await gw2.close();
      // env.close() closes the first gateway again: make that a no-op
      env.gw.close = async () => undefined;
    }
  });
});
