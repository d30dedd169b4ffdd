/**
 * Acceptance of issue 5 from outside, against the built product: two people drive a whole ComfyUI frontend session
 * side by side through a real gateway (cookies, Origin, /ws), with the same file names and the same clientId, and
 * neither sees anything of the other's through any twin or encoding; the admin sees both but saves under their
 * own folder; a WebSocket reconnected mid-run hears the rest of the run; and everything survives a restart of the
 * compiled gateway on the same data dir. `separate_users: false` still binds comfy-user and client ids.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnGateway, type ChildGateway } from './helpers/child';
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { makePng } from './helpers/png';
import { openSocket, type TestSocket } from './helpers/ws';
import { multipartBody, raw, until } from './isolation-env';

const PW = 'correct-horse-battery-9';
const KEY = { 'X-API-Key': TEST_KEY };

/** A signed-in browser: the session cookie, and the gateway's own Origin on everything it sends. */
interface Browser {
  name: string;
  cookie: string;
}

type Gw = { url: string; port: number };

function headersOf(gw: Gw, b: Browser, extra: Record<string, string> = {}): Record<string, string> {
  return { Cookie: b.cookie, Origin: gw.url, 'User-Agent': 'Mozilla/5.0 acceptance', Accept: 'application/json', ...extra };
}

const get = (gw: Gw, b: Browser, p: string, extra: Record<string, string> = {}) => raw(gw, 'GET', p, { headers: headersOf(gw, b, extra) });
const post = (gw: Gw, b: Browser, p: string, body: unknown, extra: Record<string, string> = {}) =>
  raw(gw, 'POST', p, {
    headers: headersOf(gw, b, { 'Content-Type': 'application/json', ...extra }),
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });

async function createUser(gw: Gw, username: string, role: 'user' | 'admin' = 'user'): Promise<void> {
  const r = await raw(gw, 'POST', '/gateway/api/users', {
    headers: { ...KEY, 'Content-Type': 'application/json' },
    body: JSON.stringify({ username, password: PW, role }),
  });
  if (r.status !== 201 && r.status !== 200) throw new Error(`create ${username}: ${r.status} ${r.text}`);
}

async function signIn(gw: Gw, username: string): Promise<Browser> {
  const r = await raw(gw, 'POST', '/login', {
    headers: { 'Content-Type': 'application/json', Origin: gw.url },
    body: JSON.stringify({ username, password: PW }),
  });
  if (r.status !== 200) throw new Error(`login ${username}: ${r.status} ${r.text}`);
  const line = ([] as string[]).concat(r.headers['set-cookie'] ?? []).find((c) => c.startsWith('jwt_token='));
  if (!line) throw new Error('no session cookie');
  return { name: username, cookie: line.split(';')[0] };
}

function ws(gw: Gw, b: Browser, clientId: string | null, route = '/ws'): Promise<TestSocket> {
  const url = `${gw.url.replace(/^http/, 'ws')}${route}${clientId ? `?clientId=${encodeURIComponent(clientId)}` : ''}`;
  return openSocket(url, { Cookie: b.cookie, Origin: gw.url });
}

function upload(gw: Gw, b: Browser, filename: string, data: Buffer, fields: Record<string, string> = {}, route = '/api/upload/image') {
  const parts = [{ name: 'image', filename, data }, ...Object.entries(fields).map(([name, value]) => ({ name, value }))];
  const mp = multipartBody(parts);
  return raw(gw, 'POST', route, { headers: headersOf(gw, b, { 'Content-Type': mp.contentType }), body: mp.body });
}

/** The default text-to-image graph plus a LoadImage of the user's upload feeding a PreviewImage (a temp file). */
function workflow(prefix: string, image: string, seed: number): Record<string, any> {
  return {
    ...sampleWorkflow(prefix, { seed }),
    '10': { class_type: 'LoadImage', inputs: { image } },
    '11': { class_type: 'PreviewImage', inputs: { images: ['10', 0] } },
  };
}

type Frame = { data: Buffer; isBinary: boolean; json?: any };
/** The frames a socket received and no `next()` consumed (JSON ones parsed by the helper). */
const framesIn = (s: TestSocket) => s.frames as Frame[];

/** JSON frames of a socket that name `promptId` (still queued on the socket). */
function framesOf(s: TestSocket, promptId: string) {
  return framesIn(s)
    .filter((f) => f.json?.data?.prompt_id === promptId)
    .map((f) => f.json);
}

const isStatus = (f: { json?: any }) => f.json?.type === 'status' && typeof f.json?.data?.sid === 'string';

interface SessionResult {
  promptId: string;
  output: { filename: string; subfolder: string; type: string };
  temp: { filename: string; subfolder: string; type: string };
  socket: TestSocket;
}

/**
 * One browser's session, in the order the ComfyUI frontend makes its calls: page, users, settings, workflows,
 * node definitions, upload, socket, queue, watch until done, history, view, jobs.
 */
async function frontendSession(gw: Gw, fake: FakeComfy, b: Browser, clientId: string, seed: number): Promise<SessionResult> {
  const page = await get(gw, b, '/', { Accept: 'text/html,application/xhtml+xml' });
  expect(page.status).toBe(200);
  expect(page.text).toContain('ComfyUI fake');
  expect(page.text).toContain(`data-user="${b.name}"`);

  const users = await get(gw, b, '/api/users');
  expect(users.status).toBe(200);
  expect(Object.values(users.json().users)).toEqual([b.name]);

  expect((await get(gw, b, '/api/settings')).status).toBe(200);
  expect((await post(gw, b, '/api/settings/Comfy.ColorPalette', JSON.stringify(`palette-of-${b.name}`))).status).toBe(200);
  expect((await get(gw, b, '/api/settings/Comfy.ColorPalette')).json()).toBe(`palette-of-${b.name}`);

  const before = await get(gw, b, '/api/userdata?dir=workflows&recurse=true&split=false&full_info=true');
  expect([200, 404]).toContain(before.status);
  const save = await post(gw, b, '/api/userdata/workflows%2Fmine.json?overwrite=true&full_info=true', { owner: b.name, nodes: [] });
  expect(save.status).toBe(200);
  expect(save.json().path).toBe('workflows/mine.json');
  expect((await post(gw, b, `/api/userdata/workflows%2Fonly-${b.name}.json`, { only: b.name })).status).toBe(200);
  const listed = await get(gw, b, '/api/userdata?dir=workflows&recurse=true&split=false&full_info=true');
  expect(
    listed
      .json()
      .map((f: any) => f.path)
      .sort(),
  ).toEqual(['mine.json', `only-${b.name}.json`]);

  expect((await get(gw, b, '/api/object_info')).status).toBe(200);
  const up = await upload(gw, b, 'photo.png', makePng({ color: [seed % 255, 10, 10] }), { type: 'input', overwrite: 'true' });
  expect(up.status).toBe(200);
  expect(up.json()).toEqual({ name: 'photo.png', subfolder: b.name, type: 'input' });
  const info = (await get(gw, b, '/api/object_info/LoadImage')).json();
  expect(info.LoadImage.input.required.image[0]).toContain(`${b.name}/photo.png`);

  const socket = await ws(gw, b, clientId);
  const hello = await socket.next(isStatus);
  expect(hello.json.data.sid).toBe(clientId);

  const queued = await post(gw, b, '/api/prompt', {
    client_id: clientId,
    prompt: workflow(`${b.name}-render`, `${up.json().subfolder}/${up.json().name}`, seed),
    extra_data: {
      extra_pnginfo: { workflow: { id: `wf-${b.name}` } },
      auth_token_comfy_org: `secret-of-${b.name}`,
      my_service_api_key: `secret-of-${b.name}`,
    },
  });
  expect(queued.status).toBe(200);
  const promptId: string = queued.json().prompt_id;
  expect(queued.json().node_errors).toEqual({});

  await socket.next((f) => f.json?.type === 'executing' && f.json.data?.node === null && f.json.data?.prompt_id === promptId, 10_000);
  const events = framesOf(socket, promptId).map((m) => m.type);
  expect(events).toEqual(expect.arrayContaining(['execution_start', 'executing', 'progress', 'executed', 'execution_success']));

  const hist = (await get(gw, b, '/api/history?max_items=64')).json();
  expect(Object.keys(hist)).toEqual([promptId]);
  const outputs = hist[promptId].outputs;
  const output = outputs['9'].images[0];
  const temp = outputs['11'].images[0];
  expect(output.subfolder).toBe(b.name);
  expect(temp.type).toBe('temp');
  // The owner sees their own extra_data (ComfyUI itself keeps the Comfy.org token out of history), client id mapped back.
  expect(hist[promptId].prompt[3].auth_token_comfy_org).toBeUndefined();
  expect(hist[promptId].prompt[3].my_service_api_key).toBe(`secret-of-${b.name}`);
  expect(hist[promptId].prompt[3].client_id).toBe(clientId);

  const view = await get(gw, b, `/api/view?${new URLSearchParams(output)}`, { Accept: 'image/*' });
  expect([view.status, view.headers['content-type']]).toEqual([200, 'image/png']);
  const preview = await get(gw, b, `/api/view?${new URLSearchParams({ ...temp, preview: 'webp;50' })}`, { Accept: 'image/*' });
  expect(preview.status).toBe(200);

  const jobs = (await get(gw, b, '/api/jobs?status=completed&limit=20&offset=0')).json();
  expect(jobs.jobs.map((j: any) => j.id)).toEqual([promptId]);
  expect(jobs.pagination.total).toBe(1);
  return { promptId, output, temp, socket };
}

/**
 * What reached the fake since request number `n`, except the gateway's own reads of the queue and of finished
 * prompts' history (it follows prompts on the worker by itself, whenever it likes).
 */
const sinceBut = (fake: FakeComfy, n: number) =>
  fake.requests
    .slice(n)
    .filter((r) => !(r.method === 'GET' && /^\/(queue|history\/[^/?]+)(\?|$)/.test(r.rawPath)))
    .map((r) => `${r.method} ${r.rawPath}`);

describe('two browsers side by side', () => {
  let fake: FakeComfy;
  let gw: TestGateway;
  let dataDir: string;
  let configFile: string;
  let config: Record<string, unknown>;
  let alice: Browser;
  let bob: Browser;
  let boss: Browser;
  let a: SessionResult;
  let b: SessionResult;
  const SHARED_TAB = 'f3b9c2d8a1e04c6b9d7e5a3c1b2d4e6f'; // the same clientId in both browsers

  beforeAll(async () => {
    fake = await startFakeComfy({ promptDelayMs: 150 });
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-accept-users-'));
    config = {
      api_key: TEST_KEY,
      upstream: fake.url,
      data_dir: dataDir,
      comfyui: { input_dir: fake.inputDir },
      model_downloads: { enabled: false },
    };
    gw = await startGateway(config);
    await createUser(gw, 'alice');
    await createUser(gw, 'bob');
    await createUser(gw, 'boss', 'admin');
    [alice, bob, boss] = await Promise.all([signIn(gw, 'alice'), signIn(gw, 'bob'), signIn(gw, 'boss')]);
    [a, b] = await Promise.all([frontendSession(gw, fake, alice, SHARED_TAB, 101), frontendSession(gw, fake, bob, SHARED_TAB, 202)]);
  }, 30_000);

  afterAll(async () => {
    a?.socket.close();
    b?.socket.close();
    await gw?.close();
    await fake?.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
    if (configFile) fs.rmSync(path.dirname(configFile), { recursive: true, force: true });
  });

  it('the same clientId in both browsers: each socket heard only its own run, on separate ComfyUI users', async () => {
    const savers = fake.requests
      .filter((r) => r.method === 'POST' && r.rawPath.includes('mine.json'))
      .map((r) => String(r.headers['comfy-user']));
    expect(savers.map((u) => u.split('_')[0]).sort()).toEqual(['alice', 'bob']);
    const heard = (s: TestSocket) => JSON.stringify(framesIn(s).map((f) => f.json ?? null));
    // Each socket's queue still holds every frame the session did not consume; plus the consumed ones were its own.
    expect(heard(a.socket)).not.toContain(b.promptId);
    expect(heard(b.socket)).not.toContain(a.promptId);
    expect(framesOf(a.socket, b.promptId)).toEqual([]);
    expect(framesOf(b.socket, a.promptId)).toEqual([]);
    // Upstream they were two different client ids, neither of them the one the browsers chose.
    const ups = fake.wsClients().map((c) => c.clientId);
    expect(ups).not.toContain(SHARED_TAB);
    expect(new Set(ups).size).toBe(ups.length);
    const stored = [await fake.arrival(a.promptId), await fake.arrival(b.promptId)].map((p) => p.client_id);
    expect(stored[0]).not.toBe(stored[1]);
  });

  it('bob reads none of alice’s workflows, settings or uploads, whatever the spelling', async () => {
    const mine = await get(gw, bob, '/api/userdata/workflows%2Fmine.json');
    expect([mine.status, mine.json()]).toEqual([200, { owner: 'bob', nodes: [] }]);
    for (const p of [
      '/api/userdata/workflows%2Fonly-alice.json',
      '/userdata/workflows%2Fonly-alice.json',
      '/api/api/userdata/workflows%2Fonly-alice.json',
      '//api//userdata/workflows%2fonly-alice.json',
      '/api/userdata/workflows%252Fonly-alice.json',
      '/api/%75serdata/workflows%2Fonly-alice.json',
    ]) {
      const r = await get(gw, bob, p);
      expect([p, r.status, r.text.includes('only')]).toEqual([p, 404, false]);
    }
    for (const p of [
      '/api/v2/userdata?path=workflows',
      '/v2/userdata',
      '/api/v2/userdata?path=',
      '/api/userdata?dir=workflows&recurse=true',
    ]) {
      const r = await get(gw, bob, p);
      expect([p, r.status, r.text.includes('only-alice')]).toEqual([p, 200, false]);
    }
    expect((await get(gw, bob, '/api/settings/Comfy.ColorPalette')).json()).toBe('palette-of-bob');
    expect(JSON.stringify((await get(gw, bob, '/settings')).json())).not.toContain('palette-of-alice');
    // Bob cannot overwrite or delete alice's workflow either: his writes land in his own user directory.
    expect((await post(gw, bob, '/api/userdata/workflows%2Fonly-alice.json?overwrite=true', { pwned: true })).status).toBe(200);
    expect((await raw(gw, 'DELETE', '/api/userdata/workflows%2Fmine.json', { headers: headersOf(gw, bob) })).status).toBe(204);
    expect((await get(gw, alice, '/api/userdata/workflows%2Fonly-alice.json')).json()).toEqual({ only: 'alice' });
    expect((await get(gw, alice, '/api/userdata/workflows%2Fmine.json')).json()).toEqual({ owner: 'alice', nodes: [] });
    // Without the gateway's Origin a cookie-authenticated write never reaches ComfyUI.
    const n = fake.requests.length;
    const csrf = await raw(gw, 'POST', '/api/userdata/workflows%2Fx.json', {
      headers: { Cookie: bob.cookie, Origin: 'https://evil.test', 'Content-Type': 'application/json' },
      body: '{}',
    });
    expect([csrf.status, csrf.json().error.code]).toEqual([403, 'CSRF_REJECTED']);
    expect(sinceBut(fake, n)).toEqual([]);
    // Node definitions list only the caller's uploads although both uploaded photo.png.
    const opts: string[] = (await get(gw, bob, '/object_info')).json().LoadImage.input.required.image[0];
    expect(opts).toContain('bob/photo.png');
    expect(opts.filter((o) => o.startsWith('alice/'))).toEqual([]);
  });

  it('bob’s history, queue, jobs and /view answer like missing for alice’s prompt, output and temp preview', async () => {
    const missingHistory = (await get(gw, bob, '/api/history/6a1f7f1e-0000-4000-8000-000000000000')).text;
    for (const p of ['/api/history', '/history', '/api/api/history', '//api//history', '/%68istory']) {
      expect([p, (await get(gw, bob, `${p}/${a.promptId}`)).text]).toEqual([p, missingHistory]);
      const all = (await get(gw, bob, `${p}?max_items=64`)).json();
      expect([p, Object.keys(all)]).toEqual([p, [b.promptId]]);
    }
    for (const p of ['/api/jobs', '/api/api/jobs', '//api//jobs']) {
      expect([p, (await get(gw, bob, `${p}/${a.promptId}`)).status]).toEqual([p, 404]);
      const list = (await get(gw, bob, `${p}?status=completed,failed,in_progress,pending`)).json();
      expect([p, list.jobs.map((j: any) => j.id)]).toEqual([p, [b.promptId]]);
    }
    expect((await get(gw, bob, '/api/queue')).text).not.toContain(a.promptId);
    const out = a.output;
    const views: Record<string, string>[] = [
      { filename: out.filename, subfolder: 'alice', type: 'output' },
      { filename: `alice/${out.filename}`, type: 'output' },
      { filename: `${out.filename} [output]`, subfolder: 'alice' },
      { filename: out.filename, subfolder: './alice', type: 'output' },
      { filename: out.filename, subfolder: 'alice/', type: 'output' },
      { filename: out.filename, subfolder: 'bob/../alice', type: 'output' },
      { filename: out.filename, subfolder: '/alice', type: 'output' },
      { filename: out.filename, subfolder: 'alice', type: 'OUTPUT' },
      { filename: 'photo.png', subfolder: 'alice', type: 'input' },
      { filename: a.temp.filename, subfolder: a.temp.subfolder, type: 'temp' },
      { filename: `${a.temp.filename} [temp]` },
    ];
    for (const q of views) {
      for (const route of ['/api/view', '/view', '//api//view', '/%76iew']) {
        const r = await get(gw, bob, `${route}?${new URLSearchParams(q)}`, { Accept: 'image/*' });
        expect([route, q, r.status]).toEqual([route, q, 404]);
      }
    }
    // Query-string tricks: a second subfolder or filename never wins over the one that was checked.
    const dup = `/api/view?filename=${encodeURIComponent(b.output.filename)}&subfolder=bob&type=output&subfolder=alice&filename=${encodeURIComponent(out.filename)}`;
    const r = await get(gw, bob, dup, { Accept: 'image/*' });
    expect(r.status).toBe(200);
    const served = fake.requests.filter((x) => x.rawPath.includes('/view?')).pop()!;
    const sq = new URLSearchParams(served.rawPath.split('?')[1]);
    expect([sq.getAll('subfolder'), sq.getAll('filename')]).toEqual([['bob'], [b.output.filename]]);
    // Alice herself still gets all of it.
    expect((await get(gw, alice, `/view?${new URLSearchParams(a.temp)}`)).status).toBe(200);
    expect(
      (await get(gw, alice, `/view?${new URLSearchParams({ filename: 'photo.png', subfolder: 'alice', type: 'input' })}`)).status,
    ).toBe(200);
  });

  it('bob cannot load alice’s upload or preview, nor paint a mask on them; nothing is queued or written', async () => {
    const queuedBefore = fake.prompts.size;
    const tries: [string, string][] = [
      ['../alice/photo.png', 'PATH_NOT_ALLOWED'],
      ['/abs/photo.png', 'PATH_NOT_ALLOWED'],
      [`${a.temp.filename} [temp]`, 'PATH_NOT_ALLOWED'],
      ['bob\\..\\alice\\photo.png', 'PATH_NOT_ALLOWED'],
      ['alice%2Fphoto.png', 'PATH_NOT_ALLOWED'],
    ];
    for (const [image, code] of tries) {
      const r = await post(gw, bob, '/api/prompt', { client_id: SHARED_TAB, prompt: workflow('x', image, 1) });
      expect([image, r.status, r.json().error?.code]).toEqual([image, 400, code]);
    }
    // A plain 'alice/photo.png' is read as bob's own bob/alice/photo.png, which does not exist: ComfyUI refuses it.
    const plain = await post(gw, bob, '/api/prompt', { client_id: SHARED_TAB, prompt: workflow('x', 'alice/photo.png', 1) });
    expect(plain.status).toBe(400);
    expect(JSON.stringify(plain.json())).toContain('bob/alice/photo.png');
    expect(fake.prompts.size).toBe(queuedBefore);
    const mask = await upload(
      gw,
      bob,
      'mask.png',
      makePng({ color: [0, 0, 0] }),
      { original_ref: JSON.stringify({ filename: 'photo.png', subfolder: 'alice', type: 'input' }) },
      '/api/upload/mask',
    );
    expect([mask.status, mask.json().error.code]).toEqual([400, 'PATH_NOT_ALLOWED']);
    expect(fs.existsSync(path.join(fake.inputDir, 'bob', 'mask.png'))).toBe(false);
    expect(fs.existsSync(path.join(fake.inputDir, 'alice', 'mask.png'))).toBe(false);
  });

  it('as a browser, bob reaches no admin-only family on any twin, and upload path tricks write nothing outside his folder', async () => {
    const n = fake.requests.length;
    const admin = [
      '/api/manager/reboot',
      '/api/v2/manager/queue/install',
      '/v2/customnode/install/git_url',
      '/api/%76%32/snapshot/restore',
      '/api/snapshot%2Frestore',
      '/API/Manager/reboot',
      '/api/externalmodel/getlist',
      '/comfyui_manager/comfyui_switch_version',
      '/api/internal/logs',
      '/internal/files%2Finput',
      '/api/system_stats/x',
      '/extensions/ComfyUI-Manager/js/comfyui-manager.js',
    ];
    for (const p of admin) {
      for (const method of ['GET', 'POST']) {
        const r = await raw(gw, method, p, {
          headers: headersOf(gw, bob, method === 'POST' ? { 'Content-Type': 'application/json' } : { Accept: 'text/html' }),
          body: method === 'POST' ? '{}' : undefined,
        });
        expect([method, p, r.status]).toEqual([method, p, 403]);
      }
    }
    for (const p of ['/api/free', '/free']) {
      expect((await post(gw, bob, p, { unload_models: true, free_memory: true })).status).toBe(403);
    }
    expect((await post(gw, bob, '/api/users', { username: 'mallory' })).status).toBe(403);
    expect(sinceBut(fake, n)).toEqual([]);

    const tricks: [string, Record<string, string>][] = [
      ['../escape.png', {}],
      ['..%2Fescape.png', {}],
      ['sub/escape.png', {}],
      ['ok.png', { subfolder: '../alice' }],
      ['ok.png', { subfolder: '/abs' }],
      ['ok.png', { subfolder: 'a\\..\\..\\alice' }],
      ['ok.png', { subfolder: 'x%2F..%2F..%2Falice' }],
      ['ok.png', { type: 'output', subfolder: '../../input/alice' }],
    ];
    for (const [filename, fields] of tricks) {
      const r = await upload(gw, bob, filename, makePng({ color: [1, 2, 3] }), fields);
      expect([filename, fields, r.status]).toEqual([filename, fields, 400]);
    }
    expect(fs.readdirSync(path.join(fake.inputDir, 'alice')).sort()).toEqual(['photo.png']);
    expect(fs.existsSync(path.join(fake.inputDir, 'escape.png'))).toBe(false);
    // A subfolder naming alice lands inside bob's own folder.
    const inside = await upload(gw, bob, 'ok.png', makePng({ color: [1, 2, 3] }), { subfolder: 'alice' });
    expect(inside.json()).toEqual({ name: 'ok.png', subfolder: 'bob/alice', type: 'input' });
  });

  it('the admin sees both users’ work, never their secrets; the admin’s own saves are prefixed', async () => {
    const hist = (await get(gw, boss, '/api/history?max_items=64')).json();
    expect(Object.keys(hist).sort()).toEqual([a.promptId, b.promptId].sort());
    expect(JSON.stringify(hist)).not.toContain('secret-of-');
    const job = (await get(gw, boss, `/api/jobs/${a.promptId}`)).json();
    expect(job.id).toBe(a.promptId);
    expect(job.workflow.extra_data.auth_token_comfy_org).toBeUndefined();
    expect(job.workflow.extra_data.client_id).toBe(SHARED_TAB);
    expect((await get(gw, boss, `/view?${new URLSearchParams(a.output)}`)).status).toBe(200);
    expect((await get(gw, boss, `/view?${new URLSearchParams(b.temp)}`)).status).toBe(200);
    expect(Object.values((await get(gw, boss, '/api/users')).json().users)).toEqual(['boss']);
    // The admin's prompt may read alice's upload, but what it saves goes to output/boss/.
    const s = await ws(gw, boss, 'boss-tab');
    const r = await post(gw, boss, '/api/prompt', { client_id: 'boss-tab', prompt: workflow('team/render', 'alice/photo.png', 7) });
    expect(r.status).toBe(200);
    const id = r.json().prompt_id;
    const done = await fake.waitForPrompt(id);
    expect(done.prompt[2]['10'].inputs.image).toBe('alice/photo.png');
    expect(done.outputs['9'].images[0].subfolder).toBe('boss/team');
    await s.next((f) => f.json?.type === 'execution_success' && f.json.data.prompt_id === id);
    s.close();
    // ... and neither alice nor bob can see it.
    for (const u of [alice, bob]) {
      expect((await get(gw, u, `/api/history/${id}`)).json()).toEqual({});
      expect((await get(gw, u, `/view?${new URLSearchParams(done.outputs['9'].images[0])}`)).status).toBe(404);
    }
  });

  it('a socket reconnected with the same clientId mid-run hears the rest of the run; the other user’s does not', async () => {
    fake.promptDelayMs = 1200;
    try {
      for (const overlap of [false, true]) {
        const tab = `reco-${overlap}`;
        const first = await ws(gw, alice, tab);
        const spy = await ws(gw, bob, tab);
        const r = await post(gw, alice, '/api/prompt', {
          client_id: tab,
          prompt: workflow(`reco-${overlap}`, 'alice/photo.png', overlap ? 5 : 6),
        });
        const id = r.json().prompt_id;
        await first.next((f) => f.json?.type === 'executing' && f.json.data?.prompt_id === id && f.json.data.node !== null, 5000);
        let second: TestSocket;
        if (overlap) {
          // The new tab connects before the old one has gone (a reload racing its own unload).
          second = await ws(gw, alice, tab);
          first.close();
          await first.closed;
        } else {
          first.close();
          await first.closed;
          second = await ws(gw, alice, tab);
        }
        await second.next((f) => f.json?.type === 'execution_success' && f.json.data.prompt_id === id, 8000);
        await second.next((f) => f.json?.type === 'executing' && f.json.data.node === null && f.json.data.prompt_id === id, 3000);
        const seen = [...framesOf(second, id)];
        expect(seen.some((m) => m.type === 'executed' && m.data.node === '9')).toBe(true);
        expect(framesIn(spy).some((f) => f.isBinary || JSON.stringify(f.json ?? '').includes(id))).toBe(false);
        second.close();
        spy.close();
      }
    } finally {
      fake.promptDelayMs = 150;
    }
  }, 30_000);

  it('a script naming its socket only in extra_data.client_id (which ComfyUI reads) hears its own run, and nobody else does', async () => {
    const mine = await ws(gw, alice, 'script-tab');
    const spy = await ws(gw, bob, 'script-tab');
    const r = await post(gw, alice, '/api/prompt', {
      prompt: sampleWorkflow('script', { seed: 77 }),
      extra_data: { client_id: 'script-tab' },
    });
    expect(r.status).toBe(200);
    const id = r.json().prompt_id;
    await mine.next((f) => f.json?.type === 'execution_success' && f.json.data.prompt_id === id, 5000);
    const stored = await fake.arrival(id);
    expect(stored.extra_data.client_id).not.toBe('script-tab');
    const h = (await get(gw, alice, `/api/history/${id}`)).json();
    expect(h[id].prompt[3].client_id).toBe('script-tab');
    expect(framesIn(spy).some((f) => f.isBinary || JSON.stringify(f.json ?? '').includes(id))).toBe(false);
    mine.close();
    spy.close();
  });

  it('after a restart of the compiled gateway on the same data dir: sessions, owners, previews and client ids hold', async () => {
    const aliceUpBefore = (await fake.arrival(a.promptId)).client_id;
    a.socket.close();
    b.socket.close();
    await gw.close();
    configFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-accept-cfg-')), 'config.json');
    fs.writeFileSync(configFile, JSON.stringify({ ...config, host: '127.0.0.1', port: 0, log_levels: ['warn'] }));
    const child: ChildGateway = await spawnGateway(['--config', configFile]);
    try {
      const g2 = { url: child.url, port: child.port };
      // The old cookies still sign in (the JWT secret lives in the data dir).
      const h = (await get(g2, alice, `/api/history/${a.promptId}`)).json();
      expect(Object.keys(h)).toEqual([a.promptId]);
      expect(h[a.promptId].prompt[3].client_id).toBe(SHARED_TAB);
      expect((await get(g2, bob, `/api/history/${a.promptId}`)).json()).toEqual({});
      expect(Object.keys((await get(g2, bob, '/api/history')).json())).toEqual([b.promptId]);
      // Files learned from history/events before the restart: alice's preview is still hers, still not bob's.
      expect((await get(g2, alice, `/view?${new URLSearchParams(a.temp)}`)).status).toBe(200);
      expect((await get(g2, bob, `/view?${new URLSearchParams(a.temp)}`)).status).toBe(404);
      // Bob's delete of alice's entry is narrowed to nothing.
      expect((await post(g2, bob, '/api/history', { delete: [a.promptId] })).status).toBe(200);
      expect(Object.keys((await get(g2, alice, `/history/${a.promptId}`)).json())).toEqual([a.promptId]);
      // The same browser clientId maps to the same upstream id as before (a tab kept open across the restart).
      const s = await ws(g2, alice, SHARED_TAB);
      await s.next(isStatus);
      expect(fake.wsClients().map((c) => c.clientId)).toContain(aliceUpBefore);
      const r = await post(g2, alice, '/api/prompt', { client_id: SHARED_TAB, prompt: workflow('after', 'alice/photo.png', 9) });
      const id = r.json().prompt_id;
      await s.next((f) => f.json?.type === 'execution_success' && f.json.data.prompt_id === id, 8000);
      s.close();
    } finally {
      child.kill('SIGTERM');
      await child.exited;
    }
    // SIGTERM flushed the ledger: the prompt queued on the child is alice's in the file.
    const ledger = JSON.parse(fs.readFileSync(path.join(dataDir, 'prompt_ledger.json'), 'utf8'));
    // Owners are kept as account ids (a later account of the same name owns none of them).
    const accounts = JSON.parse(fs.readFileSync(path.join(dataDir, 'users_db.json'), 'utf8')).users as { id: string; username: string }[];
    const nameOf = new Map(accounts.map((u) => [u.id, u.username]));
    const owners = new Map<string, string | undefined>(ledger.prompts.map((row: any[]) => [row[0], nameOf.get(row[1])]));
    expect(owners.get(a.promptId)).toBe('alice');
    expect(owners.get(b.promptId)).toBe('bob');
    expect([...owners.values()].filter((o) => o === 'alice').length).toBeGreaterThanOrEqual(4);
    gw.close = async () => undefined;
  }, 30_000);
});

describe('separate_users: false', () => {
  let fake: FakeComfy;
  let gw: TestGateway;
  let alice: Browser;
  let bob: Browser;

  beforeAll(async () => {
    fake = await startFakeComfy({ promptDelayMs: 80 });
    gw = await startGateway({
      api_key: TEST_KEY,
      upstream: fake.url,
      separate_users: false,
      comfyui: { input_dir: fake.inputDir },
      model_downloads: { enabled: false },
    });
    await createUser(gw, 'alice');
    await createUser(gw, 'bob');
    [alice, bob] = await Promise.all([signIn(gw, 'alice'), signIn(gw, 'bob')]);
  });
  afterAll(async () => {
    await gw?.close();
    await fake?.close();
  });

  it('files and history are shared, but comfy-user, client ids, socket events and secrets stay each user’s', async () => {
    expect((await post(gw, alice, '/api/userdata/workflows%2Fdiary.json', { diary: 'alice' })).status).toBe(200);
    expect((await get(gw, bob, '/api/userdata/workflows%2Fdiary.json')).status).toBe(404);
    expect(Object.values((await get(gw, bob, '/users')).json().users)).toEqual(['bob']);
    const spoof = await raw(gw, 'GET', '/api/userdata?dir=workflows', {
      headers: { ...headersOf(gw, bob), 'comfy-user': Object.keys(fake.users).find((k) => fake.users[k] === 'alice')! },
    });
    expect(spoof.text).not.toContain('diary');

    const tab = 'same-tab';
    const sa = await ws(gw, alice, tab);
    const sb = await ws(gw, bob, tab, '/api/ws');
    expect((await sa.next(isStatus)).json.data.sid).toBe(tab);
    expect((await sb.next(isStatus)).json.data.sid).toBe(tab);
    const r = await post(gw, alice, '/prompt', {
      client_id: tab,
      prompt: sampleWorkflow('shared'),
      extra_data: { api_key_comfy_org: 'alice-key', replicate_api_token: 'alice-token' },
    });
    const id = r.json().prompt_id;
    await sa.next((f) => f.json?.type === 'execution_success' && f.json.data.prompt_id === id, 5000);
    // a prompt without client_id is not broadcast to anyone either
    const r2 = await post(gw, alice, '/prompt', { prompt: sampleWorkflow('nobody', { seed: 3 }) });
    await fake.waitForPrompt(r2.json().prompt_id);
    await new Promise((res) => setTimeout(res, 100));
    expect(
      framesIn(sb).some((f) => f.isBinary || JSON.stringify(f.json).includes(id) || JSON.stringify(f.json).includes(r2.json().prompt_id)),
    ).toBe(false);
    expect(framesIn(sa).some((f) => JSON.stringify(f.json ?? '').includes(r2.json().prompt_id))).toBe(false);
    const ups = fake.wsClients().map((c) => c.clientId);
    expect(ups).toHaveLength(2);
    expect(ups[0]).not.toBe(ups[1]);

    // Shared: bob sees the prompt and its output, with the saves not prefixed ...
    const hist = (await get(gw, bob, `/api/history/${id}`)).json();
    const img = hist[id].outputs['9'].images[0];
    expect(img.subfolder).toBe('');
    expect((await get(gw, bob, `/api/view?${new URLSearchParams(img)}`)).status).toBe(200);
    // ... but never alice's key; her client id shows as her browser's (harmless: it maps to another upstream id for bob).
    expect(JSON.stringify(hist)).not.toContain('alice-');
    expect(JSON.stringify(hist)).not.toContain((await fake.arrival(id)).client_id);
    expect((await get(gw, alice, `/api/history/${id}`)).json()[id].prompt[3]).toMatchObject({
      replicate_api_token: 'alice-token',
      client_id: tab,
    });
    expect(JSON.stringify((await get(gw, bob, `/api/jobs/${id}`)).json())).not.toContain('alice-');
    expect(JSON.stringify((await get(gw, bob, '/api/queue')).json())).not.toContain('alice-');
    sa.close();
    sb.close();
    await until(() => fake.wsClients().length === 0, 3000, 'sockets closed');
  });
});
