/** Issue 10 item 4: /system_stats for everyone — users a redacted copy, admins the full answer. */
import { addUser, raw, startIsolationEnv, type IsolationEnv } from './isolation-env';

describe('/system_stats', () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv({
      fake: { argv: ['main.py', '--listen', '127.0.0.1', '--input-directory', '/secret/input', '--multi-user'] },
    });
  });
  afterAll(() => env.close());

  test.each(['/system_stats', '/api/system_stats', '/api//system_stats'])(
    'a user gets versions, OS, devices and memory, no argv or paths: %s',
    async (p) => {
      const r = await raw(env.gw, 'GET', p, { headers: env.alice.headers });
      expect(r.status).toBe(200);
      const j = r.json();
      expect(Object.keys(j).sort()).toEqual(['devices', 'system']);
      expect(Object.keys(j.system).sort()).toEqual([
        'comfyui_version',
        'embedded_python',
        'os',
        'python_version',
        'pytorch_version',
        'ram_free',
        'ram_total',
        'required_frontend_version',
      ]);
      expect(j.system.comfyui_version).toBe('0.3.0');
      expect(j.devices[0]).toEqual({
        name: 'cuda:0 fake',
        type: 'cuda',
        index: 0,
        vram_total: 25769803776,
        vram_free: 21474836480,
        torch_vram_total: 0,
        torch_vram_free: 0,
      });
      expect(r.text).not.toContain('argv');
      expect(r.text).not.toContain('/secret');
      expect(r.headers['cache-control']).toBe('no-store');
    },
  );

  test('HEAD works for a user and sends no body', async () => {
    const r = await raw(env.gw, 'HEAD', '/system_stats', { headers: env.alice.headers });
    expect(r.status).toBe(200);
    expect(r.body.length).toBe(0);
  });

  test('admins (static key or an admin account) get the full answer with argv', async () => {
    const boss = await addUser(env.gw, 'boss', 'admin');
    for (const who of [env.admin, boss]) {
      const j = (await raw(env.gw, 'GET', '/api/system_stats', { headers: who.headers })).json();
      expect(j.system.argv).toContain('/secret/input');
    }
  });

  test('other methods and deeper paths stay admin-only and never reach ComfyUI; no credential is 401', async () => {
    env.fake.clearRequests();
    for (const [m, p] of [
      ['POST', '/system_stats'],
      ['POST', '/api/system_stats'],
      ['GET', '/system_stats/x'],
      ['PUT', '/system_stats'],
    ]) {
      const r = await raw(env.gw, m, p, {
        headers: { ...env.bob.headers, 'Content-Type': 'application/json' },
        body: m === 'GET' ? undefined : '{}',
      });
      expect([m, p, r.status, r.json().error.code]).toEqual([m, p, 403, 'FORBIDDEN']);
    }
    const anon = await raw(env.gw, 'GET', '/system_stats');
    expect(anon.status).toBe(401);
    expect(env.fake.requests.filter((r) => r.rawPath.includes('system_stats'))).toEqual([]);
  });

  test('an old server (no version, argv or RAM) is passed through redacted as it is', async () => {
    const old = await startIsolationEnv({ fake: { legacy: true } });
    try {
      const j = (await raw(old.gw, 'GET', '/system_stats', { headers: old.alice.headers })).json();
      expect(Object.keys(j.system).sort()).toEqual(['embedded_python', 'os', 'python_version']);
    } finally {
      await old.close();
    }
  });
});
