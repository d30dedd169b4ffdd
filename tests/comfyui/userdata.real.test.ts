/**
 * Issue 10 item 2 (userdata) against both real servers running WITHOUT --multi-user, where ComfyUI keeps one shared
 * user folder: each gateway user's workflows and settings stay their own.
 */
import fs from 'node:fs';
import path from 'node:path';
import { PW, login, registerFirstAdmin, registerUser } from '../helpers/auth';
import { TREES, useRealStack } from './realComfy';

const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });
// 7914c47's user folder is fixed inside its tree and outlives the run: fresh names keep runs apart.
const tag = Date.now().toString(36);

describe.each(TREES)('userdata without --multi-user on real ComfyUI %s', (tree) => {
  const stack = useRealStack(tree);
  const a = `al-${tag}`;
  const b = `bo-${tag}`;
  let alice: string;
  let bob: string;
  beforeAll(async () => {
    await registerFirstAdmin(stack.gw, 'admin', PW);
    await registerUser(stack.gw, a);
    await registerUser(stack.gw, b);
    alice = (await login(stack.gw, a)).token;
    bob = (await login(stack.gw, b)).token;
  });
  afterAll(() => {
    for (const u of [a, b]) fs.rmSync(path.join(stack.comfy.userDir, 'default', 'gateway-users', u), { recursive: true, force: true });
  });
  const get = (token: string, p: string) => fetch(`${stack.gw.url}${p}`, { headers: bearer(token) });
  const post = (token: string, p: string, body: string) =>
    fetch(`${stack.gw.url}${p}`, { method: 'POST', headers: { ...bearer(token), 'content-type': 'application/json' }, body });

  // (7914c47 lists only one level below dir unless recurse=true: its glob is `dir/**/*`; its own UI sends recurse=true)
  test("a saved workflow is the saver's only: listing, reading, moving, deleting, and no way around", async () => {
    const wf = JSON.stringify({ nodes: [], secret: `alice-${tree}` });
    // (7914c47 needs ?overwrite: it reads the parameter without a default, as its own UI always sends it)
    const saved = await post(alice, '/api/userdata/workflows%2Fmine.json?overwrite=true', wf);
    expect(saved.status).toBe(200);
    expect(await saved.json()).toBe('workflows/mine.json');
    expect(await (await get(alice, '/api/userdata?dir=workflows&recurse=true')).json()).toEqual(['mine.json']);
    expect(await (await get(alice, '/api/userdata/workflows%2Fmine.json')).text()).toBe(wf);

    // bob: his list is not alice's, her file is missing for him, and path tricks are refused before ComfyUI
    const bobList = await get(bob, '/api/userdata?dir=workflows&recurse=true');
    expect([403, 404, 200]).toContain(bobList.status);
    if (bobList.status === 200) expect(await bobList.json()).toEqual([]);
    expect((await get(bob, '/api/userdata/workflows%2Fmine.json')).status).toBe(404);
    for (const p of [
      `/api/userdata/..%2F${a}%2Fworkflows%2Fmine.json`,
      `/userdata/..%2F..%2Fgateway-users%2F${a}%2Fworkflows%2Fmine.json`,
    ]) {
      const r = await get(bob, p);
      expect([p, r.status]).toEqual([p, 400]);
      expect(['INVALID_PATH', 'PATH_NOT_ALLOWED']).toContain(((await r.json()) as any).error.code);
    }
    const sneaky = await get(bob, `/api/userdata?dir=..%2F${a}%2Fworkflows`);
    expect(sneaky.status).toBe(400);

    // move and delete stay inside alice's folder
    const moved = await post(alice, '/api/userdata/workflows%2Fmine.json/move/workflows%2Frenamed.json?overwrite=true', '');
    expect(moved.status).toBe(200);
    expect(await moved.json()).toBe('workflows/renamed.json');
    expect(await (await get(alice, '/api/userdata?dir=workflows&recurse=true')).json()).toEqual(['renamed.json']);
    const del = await fetch(`${stack.gw.url}/api/userdata/workflows%2Frenamed.json`, { method: 'DELETE', headers: bearer(alice) });
    expect(del.status).toBe(204);
    expect((await get(alice, '/api/userdata/workflows%2Frenamed.json')).status).toBe(404);
  });

  test('settings are per user', async () => {
    expect((await post(alice, '/settings', JSON.stringify({ 'Comfy.Theme': 'alice-dark', 'Comfy.X': 1 }))).status).toBe(200);
    expect((await post(alice, '/settings/Comfy.Y', JSON.stringify('why'))).status).toBe(200);
    expect(await (await get(alice, '/settings')).json()).toEqual({ 'Comfy.Theme': 'alice-dark', 'Comfy.X': 1, 'Comfy.Y': 'why' });
    expect(await (await get(alice, '/api/settings/Comfy.Theme')).json()).toBe('alice-dark');
    expect(await (await get(bob, '/settings')).json()).toEqual({});
    expect(await (await get(bob, '/api/settings/Comfy.Theme')).json()).toBeNull();
    expect((await post(bob, '/settings', 'not json')).status).toBe(400);
    expect(await (await get(alice, '/api/settings/Comfy.Theme')).json()).toBe('alice-dark');
  });

  if (tree === '0.3.44') {
    test("/v2/userdata lists only the caller's folder, with paths relative to it", async () => {
      expect((await post(alice, '/api/userdata/workflows%2Fv2.json?overwrite=true', '{}')).status).toBe(200);
      const mine = (await (await get(alice, '/api/v2/userdata')).json()) as { path: string }[];
      expect(mine.map((e) => e.path).sort()).toEqual(['comfy.settings.json', 'workflows', 'workflows/v2.json']);
      const sub = (await (await get(alice, '/api/v2/userdata?path=workflows')).json()) as { path: string }[];
      expect(sub.map((e) => e.path)).toEqual(['workflows/v2.json']);
      const theirs = (await (await get(bob, '/api/v2/userdata')).json()) as { path: string }[];
      expect(JSON.stringify(theirs)).not.toContain('v2.json');
    });
  }
});
