/**
 * Issue 10 item 2 in the fast suite: a ComfyUI WITHOUT --multi-user shares one user folder; the gateway keeps each
 * user's workflows and settings apart under gateway-users/<user>/, and refuses every way around it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { raw, startIsolationEnv, type Caller, type IsolationEnv } from './isolation-env';

const send = (env: IsolationEnv, who: Caller, method: string, p: string, body?: string) =>
  raw(env.gw, method, p, { headers: { ...who.headers, 'Content-Type': 'application/json' }, body });

describe('userdata on a ComfyUI without --multi-user', () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv({ fake: { multiUser: false } });
  });
  afterAll(() => env.close());
  const shared = () => path.join(env.fake.userDir, 'default');

  test('a workflow saved by alice lands in her folder; bob neither lists nor reads it; saves answer with her own path', async () => {
    const saved = await send(env, env.alice, 'POST', '/api/userdata/workflows%2Fmine.json', '{"w":1}');
    expect(saved.status).toBe(200);
    expect(saved.json()).toBe('workflows/mine.json');
    expect(fs.readFileSync(path.join(shared(), 'gateway-users', 'alice', 'workflows', 'mine.json'), 'utf8')).toBe('{"w":1}');
    expect(fs.existsSync(path.join(shared(), 'workflows', 'mine.json'))).toBe(false);
    expect((await send(env, env.alice, 'GET', '/api/userdata?dir=workflows&recurse=true')).json()).toEqual(['mine.json']);
    expect((await send(env, env.alice, 'GET', '/api/userdata/workflows%2Fmine.json')).text).toBe('{"w":1}');
    expect((await send(env, env.bob, 'GET', '/api/userdata/workflows%2Fmine.json')).status).toBe(404);
    const bobList = await send(env, env.bob, 'GET', '/userdata?dir=workflows&recurse=true');
    expect(bobList.status === 404 || JSON.stringify(bobList.json()) === '[]').toBe(true);
    const v2 = (await send(env, env.alice, 'GET', '/api/v2/userdata')).json() as { path: string }[];
    expect(v2.map((e) => e.path).sort()).toEqual(['workflows', 'workflows/mine.json']);
    // (reading a missing file makes its folder, in ComfyUI too: bob may have an empty workflows/ of his own)
    expect((await send(env, env.bob, 'GET', '/api/v2/userdata')).json().filter((e: { type: string }) => e.type === 'file')).toEqual([]);
  });

  test('a file shared in the old common folder is invisible to users through the gateway', async () => {
    fs.mkdirSync(path.join(shared(), 'workflows'), { recursive: true });
    fs.writeFileSync(path.join(shared(), 'workflows', 'old-shared.json'), '{}');
    expect((await send(env, env.bob, 'GET', '/userdata/workflows%2Fold-shared.json')).status).toBe(404);
  });

  test('path tricks are refused with 400 and never reach ComfyUI', async () => {
    env.fake.clearRequests();
    const tricks = [
      ['GET', '/userdata/..%2Falice%2Fworkflows%2Fmine.json'],
      ['GET', '/api/userdata/%2E%2E%2Falice%2Fworkflows%2Fmine.json'],
      ['GET', '/userdata/workflows%2F..%2F..%2Falice%2Fworkflows%2Fmine.json'],
      ['GET', '/userdata?dir=..%2Falice%2Fworkflows'],
      ['GET', '/userdata?dir=%2Ftmp'],
      ['GET', '/api/v2/userdata?path=..%2Falice'],
      ['POST', '/userdata/..%2Falice%2Fworkflows%2Fx.json'],
      ['POST', '/userdata/workflows%2Fa.json/move/..%2F..%2Falice%2Fworkflows%2Fx.json'],
      ['DELETE', '/userdata/..%2Falice%2Fworkflows%2Fmine.json'],
      ['GET', '/userdata/workflows%5C..%5Cx.json'],
    ];
    for (const [m, p] of tricks) {
      const r = await send(env, env.bob, m, p, m === 'POST' ? '{}' : undefined);
      expect([m, p, r.status]).toEqual([m, p, 400]);
      expect(['INVALID_PATH', 'PATH_NOT_ALLOWED']).toContain(r.json().error.code);
    }
    expect(env.fake.requests.filter((r) => r.rawPath.includes('userdata'))).toEqual([]);
    expect(fs.readFileSync(path.join(shared(), 'gateway-users', 'alice', 'workflows', 'mine.json'), 'utf8')).toBe('{"w":1}');
  });

  test("move and delete stay in the caller's folder", async () => {
    expect((await send(env, env.alice, 'POST', '/userdata/workflows%2Fmine.json/move/workflows%2Fnew.json', '')).json()).toBe(
      'workflows/new.json',
    );
    expect(fs.existsSync(path.join(shared(), 'gateway-users', 'alice', 'workflows', 'new.json'))).toBe(true);
    expect((await send(env, env.bob, 'DELETE', '/userdata/workflows%2Fnew.json')).status).toBe(404);
    expect((await send(env, env.alice, 'DELETE', '/userdata/workflows%2Fnew.json')).status).toBe(204);
  });

  test('settings are per user; bad JSON changes nothing', async () => {
    expect((await send(env, env.alice, 'POST', '/settings', '{"Comfy.A":"alice"}')).status).toBe(200);
    expect((await send(env, env.alice, 'POST', '/api/settings/Comfy.B', '2')).status).toBe(200);
    expect((await send(env, env.alice, 'GET', '/settings')).json()).toEqual({ 'Comfy.A': 'alice', 'Comfy.B': 2 });
    expect((await send(env, env.bob, 'GET', '/api/settings')).json()).toEqual({});
    expect((await send(env, env.bob, 'GET', '/settings/Comfy.A')).json()).toBeNull();
    const bad = await send(env, env.alice, 'POST', '/settings', '{nope');
    expect([bad.status, bad.json().error.code]).toEqual([400, 'INVALID_BODY']);
    expect((await send(env, env.alice, 'POST', '/settings', '[1]')).status).toBe(400);
    expect((await send(env, env.alice, 'GET', '/settings')).json()).toEqual({ 'Comfy.A': 'alice', 'Comfy.B': 2 });
    expect(fs.existsSync(path.join(shared(), 'comfy.settings.json'))).toBe(false);
    // concurrent writes of one user all land (read-modify-write is serialised)
    await Promise.all(Array.from({ length: 8 }, (_, i) => send(env, env.alice, 'POST', `/settings/Comfy.K${i}`, String(i))));
    const all = (await send(env, env.alice, 'GET', '/settings')).json();
    for (let i = 0; i < 8; i++) expect(all[`Comfy.K${i}`]).toBe(i);
  });
});

describe('userdata on a ComfyUI with --multi-user passes through as it is (ComfyUI keeps users apart)', () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv();
  });
  afterAll(() => env.close());
  test('paths are not moved', async () => {
    env.fake.clearRequests();
    expect((await send(env, env.alice, 'POST', '/api/userdata/workflows%2Fm.json', '{}')).status).toBe(200);
    const seen = env.fake.requests.filter((r) => r.rawPath.includes('userdata'));
    expect(seen.map((r) => r.rawPath)).toEqual(['/api/userdata/workflows%2Fm.json']);
  });
});
