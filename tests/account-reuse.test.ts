/**
 * Issue 9 (identity): ownership hangs on a stable account id, not the name. Delete dave, register dave again: the
 * new dave sees no prompts (nor their extra_data), no files, no ComfyUI user data; the admin keeps the old files
 * (`?files=keep`, the default) or they are gone (`?files=delete`). Real gateway, fake ComfyUI with real folders.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PW, login } from './helpers/auth';
import { hit } from './helpers/edge';
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { makePng } from './helpers/png';
import { multipartBody, raw, until } from './isolation-env';

let fake: FakeComfy;
let gw: TestGateway;
const admin = { 'X-API-Key': TEST_KEY };
const PNG = makePng({ color: [200, 10, 10] });

beforeAll(async () => {
  fake = await startFakeComfy({ promptDelayMs: 20 });
  // No comfyui.* folders configured: the gateway learns them from the upstream (same host).
  gw = await startGateway({ api_key: TEST_KEY, upstream: fake.url, model_downloads: { enabled: false } });
});
afterAll(async () => {
  await gw.close();
  await fake.close();
});

async function createUser(name: string) {
  const r = await hit(gw.url, '/gateway/api/users', { method: 'POST', headers: admin, body: { username: name, password: PW } });
  expect(r.status).toBe(201);
  const { token } = await login(gw, name);
  return { Authorization: `Bearer ${token}` };
}
async function uploadAs(who: Record<string, string>, filename: string) {
  const mp = multipartBody([{ name: 'image', filename, data: PNG }]);
  const r = await raw(gw, 'POST', '/upload/image', { headers: { ...who, 'Content-Type': mp.contentType }, body: mp.body });
  expect(r.status).toBe(200);
  return r.json() as { name: string; subfolder: string; type: string };
}
async function queueAs(who: Record<string, string>, prefix: string) {
  const r = await raw(gw, 'POST', '/prompt', {
    headers: { ...who, 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: sampleWorkflow(prefix), extra_data: { api_key_comfy_org: `secret-of-${prefix}` } }),
  });
  expect(r.status).toBe(200);
  const id = r.json().prompt_id as string;
  await until(
    async () => Object.keys((await raw(gw, 'GET', `/history/${id}`, { headers: who })).json()).length > 0,
    5000,
    'prompt in history',
  );
  const h = (await raw(gw, 'GET', `/history/${id}`, { headers: who })).json()[id];
  const image = (Object.values(h.outputs) as { images?: { filename: string; subfolder: string; type: string }[] }[]).flatMap(
    (o) => o.images ?? [],
  )[0];
  return { id, image };
}
const view = (who: Record<string, string>, f: { filename: string; subfolder: string; type: string }) =>
  raw(gw, 'GET', `/view?${new URLSearchParams({ filename: f.filename, subfolder: f.subfolder, type: f.type })}`, { headers: who });
const comfyUserOf = async (who: Record<string, string>) => Object.keys((await raw(gw, 'GET', '/users', { headers: who })).json().users)[0];
const retired = (area: string, name: string) => {
  const dir = path.join(area, '_deleted');
  return fs.existsSync(dir) ? fs.readdirSync(dir).filter((d) => d.startsWith(`${name}-`)) : [];
};

describe('a reused name starts empty', () => {
  it('files=keep (default): the new dave sees no prompts, files or ComfyUI user of the old one; the admin still reads the files', async () => {
    const old = await createUser('dave');
    const up = await uploadAs(old, 'dave-upload.png');
    expect(up.subfolder).toBe('dave');
    const run = await queueAs(old, 'davework');
    expect(run.image.subfolder).toBe('dave');
    expect((await view(old, run.image)).status).toBe(200);
    const oldComfyUser = await comfyUserOf(old);
    expect(oldComfyUser).toBeTruthy();
    expect(fs.existsSync(path.join(fake.inputDir, 'dave', 'dave-upload.png'))).toBe(true);

    expect((await hit(gw.url, '/gateway/api/users/dave', { method: 'DELETE', headers: admin })).status).toBe(204);
    // the old session died with the account
    expect((await raw(gw, 'GET', '/history', { headers: old })).status).toBe(401);
    // the folders left the name at once, kept under _deleted/
    expect(fs.existsSync(path.join(fake.inputDir, 'dave'))).toBe(false);
    expect(fs.existsSync(path.join(fake.outputDir, 'dave'))).toBe(false);
    const [keptIn] = retired(fake.inputDir, 'dave');
    const [keptOut] = retired(fake.outputDir, 'dave');
    expect(keptIn).toBeDefined();
    expect(keptOut).toBeDefined();

    const dave = await createUser('dave');
    fake.clearRequests();
    const history = (await raw(gw, 'GET', '/history', { headers: dave })).json();
    expect(history).toEqual({});
    expect((await raw(gw, 'GET', `/history/${run.id}`, { headers: dave })).json()).toEqual({});
    const queue = (await raw(gw, 'GET', '/queue', { headers: dave })).text;
    expect(queue).not.toContain(run.id);
    const jobs = await raw(gw, 'GET', '/api/jobs', { headers: dave });
    expect(jobs.text).not.toContain(run.id);
    expect(jobs.text).not.toContain('secret-of-davework');
    expect(history).not.toHaveProperty(run.id);
    // no files: not under the name, not under the graveyard, not through the old output's ledger entry
    for (const f of [
      { filename: 'dave-upload.png', subfolder: 'dave', type: 'input' },
      run.image,
      { filename: 'dave-upload.png', subfolder: `_deleted/${keptIn}`, type: 'input' },
      { filename: run.image.filename, subfolder: `_deleted/${keptOut}`, type: 'output' },
    ]) {
      const r = await view(dave, f);
      expect([JSON.stringify(f), r.status]).toEqual([JSON.stringify(f), 404]);
    }
    // a ComfyUI user of its own (no saved workflows or settings of the old one)
    const newComfyUser = await comfyUserOf(dave);
    expect(newComfyUser).toBeTruthy();
    expect(newComfyUser).not.toBe(oldComfyUser);
    await raw(gw, 'GET', '/userdata?dir=workflows', { headers: dave });
    const sent = fake.requests.filter((r) => r.rawPath.startsWith('/userdata')).map((r) => r.headers['comfy-user']);
    expect(sent).toEqual([newComfyUser]);
    // the admin reads the kept files
    const adminView = await view(admin, { filename: 'dave-upload.png', subfolder: `_deleted/${keptIn}`, type: 'input' });
    expect(adminView.status).toBe(200);
    expect(adminView.body.equals(PNG)).toBe(true);
    expect((await view(admin, { filename: run.image.filename, subfolder: `_deleted/${keptOut}`, type: 'output' })).status).toBe(200);
    // the new dave's own uploads land in a fresh dave/ folder
    expect((await uploadAs(dave, 'fresh.png')).subfolder).toBe('dave');
    expect(fs.readdirSync(path.join(fake.inputDir, 'dave'))).toEqual(['fresh.png']);
  });

  it('files=delete removes the folders; the new account and the admin find nothing', async () => {
    const old = await createUser('erin');
    await uploadAs(old, 'erin-upload.png');
    const run = await queueAs(old, 'erinwork');
    const del = await hit(gw.url, '/gateway/api/users/erin?files=delete', { method: 'DELETE', headers: admin });
    expect(del.status).toBe(204);
    expect(fs.existsSync(path.join(fake.inputDir, 'erin'))).toBe(false);
    expect(fs.existsSync(path.join(fake.outputDir, 'erin'))).toBe(false);
    await until(() => retired(fake.inputDir, 'erin').length === 0 && retired(fake.outputDir, 'erin').length === 0, 3000, 'removal');
    const erin = await createUser('erin');
    expect((await raw(gw, 'GET', '/history', { headers: erin })).json()).toEqual({});
    expect((await view(erin, run.image)).status).toBe(404);
    expect((await view(admin, run.image)).status).toBe(404);
    expect((await view(admin, { filename: 'erin-upload.png', subfolder: 'erin', type: 'input' })).status).toBe(404);
  });

  it('files=delete never follows a symlinked user folder out of the area', async () => {
    await createUser('frank');
    const outside = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-outside-'));
    fs.writeFileSync(path.join(outside, 'precious.txt'), 'keep me');
    fs.rmSync(path.join(fake.inputDir, 'frank'), { recursive: true, force: true });
    fs.symlinkSync(outside, path.join(fake.inputDir, 'frank'));
    try {
      expect((await hit(gw.url, '/gateway/api/users/frank?files=delete', { method: 'DELETE', headers: admin })).status).toBe(204);
      await until(() => retired(fake.inputDir, 'frank').length === 0, 3000, 'removal');
      expect(fs.existsSync(path.join(fake.inputDir, 'frank'))).toBe(false);
      expect(fs.readFileSync(path.join(outside, 'precious.txt'), 'utf8')).toBe('keep me');
    } finally {
      fs.rmSync(outside, { recursive: true, force: true });
    }
  });

  it('a bad files= value is refused and deletes nothing; unknown users are 404', async () => {
    await createUser('gina');
    for (const q of ['files=maybe', 'files=', 'files=DELETE', 'files=keep&files=delete']) {
      const r = await hit(gw.url, `/gateway/api/users/gina?${q}`, { method: 'DELETE', headers: admin });
      expect([q, r.status, r.body.error.code]).toEqual([q, 400, 'INVALID_BODY']);
    }
    const users = (await hit(gw.url, '/gateway/api/users', { headers: admin })).body.users as { username: string }[];
    expect(users.some((u) => u.username === 'gina')).toBe(true);
    const missing = await hit(gw.url, '/gateway/api/users/nobody-here?files=delete', { method: 'DELETE', headers: admin });
    expect([missing.status, missing.body.error.code]).toEqual([404, 'NOT_FOUND']);
    // only admins delete users
    const gina = await login(gw, 'gina');
    const self = await hit(gw.url, '/gateway/api/users/gina?files=delete', {
      method: 'DELETE',
      headers: { Authorization: `Bearer ${gina.token}` },
    });
    expect(self.status).toBe(403);
  });
});

describe('when the gateway cannot see ComfyUI’s folders', () => {
  it('files=delete is refused (409 FILES_UNREACHABLE) and the user stays', async () => {
    const lonely = await startGateway({ api_key: TEST_KEY, upstream: 'http://127.0.0.1:9', model_downloads: { enabled: false } });
    try {
      expect(
        (await hit(lonely.url, '/gateway/api/users', { method: 'POST', headers: admin, body: { username: 'hank', password: PW } })).status,
      ).toBe(201);
      const r = await hit(lonely.url, '/gateway/api/users/hank?files=delete', { method: 'DELETE', headers: admin });
      expect([r.status, r.body.error.code]).toEqual([409, 'FILES_UNREACHABLE']);
      const users = (await hit(lonely.url, '/gateway/api/users', { headers: admin })).body.users as { username: string }[];
      expect(users.map((u) => u.username)).toContain('hank');
    } finally {
      await lonely.close();
    }
  });
});
