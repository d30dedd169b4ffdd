/** The canonical route and the policy table (issue 5 item 1): twins, encodings, and a decision for every route. */
import { AppError } from '../gateway/errors';
import { canonicalize } from '../gateway/proxy/canonical';
import { createPolicy, MANAGER_FAMILIES } from '../gateway/proxy/policy';
import { FAKE_COMFY_ROUTES } from './helpers/fakeComfy';
import { raw, received, startIsolationEnv, type IsolationEnv } from './isolation-env';

const policy = createPolicy({ manager_admin_only: true });
const decide = (url: string, method = 'GET') => policy.decide(canonicalize(url), method);

/** Every spelling of one route that must land on the same decision. */
function twins(path: string): string[] {
  const rest = path.slice(1);
  const first = rest.split('/')[0];
  const encodedFirst = `%${first.charCodeAt(0).toString(16)}${first.slice(1)}`;
  return [
    `/${rest}`,
    `/api/${rest}`,
    `/v2/${rest}`,
    `/api/v2/${rest}`,
    `//api//${rest.replace(/\//g, '//')}`,
    `/api/api/${rest}`,
    `/API/${rest}`,
    `/${encodedFirst}${rest.slice(first.length)}`,
    `/api/${encodedFirst}${rest.slice(first.length)}`,
    `/%61pi/${rest}`,
    `/api%2f${rest}`,
    `/./${rest}/`,
    `/view/../${rest}`,
    `/${first.toUpperCase()}${rest.slice(first.length)}`,
  ];
}

describe('canonicalize', () => {
  it.each([
    '/manager/reboot',
    '/api/manager/reboot',
    '//api//manager/reboot',
    '/%6danager/reboot',
    '/api/%6d%61nager/reboot',
    '/api/api/manager/reboot',
    '/%41PI/manager/reboot',
    '/x/../manager/./reboot/',
  ])('%s is the route /manager/reboot', (url) => {
    expect(canonicalize(url).path).toBe('/manager/reboot');
  });

  it('decodes exactly once', () => {
    const r = canonicalize('/%256danager/reboot');
    expect(r.segments).toEqual(['%6danager', 'reboot']);
    expect(r.forwardPath).toBe('/%256danager/reboot');
    expect(decide('/%256danager/reboot').rule.id).not.toMatch(/^manager/);
  });

  it('forwards exactly the route it decided on, with one /api when the client used one', () => {
    expect(canonicalize('/api/api/jobs?x=1').forwardPath).toBe('/api/jobs');
    expect(canonicalize('//api//manager//reboot').forwardPath).toBe('/api/manager/reboot');
    expect(canonicalize('/view?filename=a').forwardPath).toBe('/view');
    // aiohttp keeps %2F inside a segment when routing (/userdata/{file} depends on it): so does the forwarded path
    expect(canonicalize('/api/userdata/workflows%2Fa.json').forwardPath).toBe('/api/userdata/workflows%2Fa.json');
    expect(canonicalize('/api%2fhistory').forwardPath).toBe('/api%2Fhistory');
    expect(canonicalize('/a%20b/c%3Ad').forwardPath).toBe('/a%20b/c:d');
  });

  it('an encoded slash is also read as a separator by the policy (the stricter reading wins)', () => {
    const r = canonicalize('/api%2Fmanager%2Freboot');
    expect(r.flatSegments).toEqual(['manager', 'reboot']);
    expect(policy.decide(r, 'GET').access).toBe('admin');
    expect(decide('/userdata/workflows%2Fa.json').access).toBe('user');
  });

  it.each(['/%zz', '/a%00b', '/a%5cb', '/..', '/%2e%2e/x', '/api/../..', 'manager', '/a%0ab', '/%C0%AF', '/x/a%2F..%2Fmanager'])(
    'refuses %s with 400 INVALID_PATH',
    (url) => {
      let err: unknown;
      try {
        canonicalize(url);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(AppError);
      expect((err as AppError).status).toBe(400);
      expect((err as AppError).code).toBe('INVALID_PATH');
    },
  );
});

describe('policy table', () => {
  const adminFamilies = [
    ...MANAGER_FAMILIES.map((f) => `/${f}/anything`),
    '/extensions/ComfyUI-Manager/js/comfyui-manager.js',
    '/extensions/comfyui-manager/x.js',
  ];

  it.each(adminFamilies)('%s is admin-only on every twin and encoding', (path) => {
    for (const t of twins(path)) {
      for (const m of ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS']) {
        // `/v2/extensions/...` is not a twin of the extension files; everything else must be admin.
        if (path.startsWith('/extensions') && t.includes('v2')) continue;
        expect([t, m, decide(t, m).access]).toEqual([t, m, 'admin']);
      }
    }
  });

  it.each([
    ['/internal/logs', 'GET'],
    ['/internal/folder_paths', 'GET'],
    ['/internal/logs/subscribe', 'PATCH'],
    ['/free', 'POST'],
    ['/users', 'POST'],
    ['/system_stats', 'POST'],
    ['/system_stats/x', 'GET'],
  ])('%s %s is admin-only on every twin', (path, method) => {
    for (const t of twins(path).filter((x) => !x.includes('v2'))) expect([t, decide(t, method).access]).toEqual([t, 'admin']);
  });

  it('GET /users and GET /free stay open to users (only the state changes are admin)', () => {
    expect(decide('/users').access).toBe('user');
    expect(decide('/api/users').access).toBe('user');
    expect(decide('/free').access).toBe('user');
  });

  it('the manager families follow manager_admin_only', () => {
    const open = createPolicy({ manager_admin_only: false });
    expect(open.decide(canonicalize('/api/manager/reboot'), 'GET').access).toBe('user');
    expect(open.decide(canonicalize('/internal/logs'), 'GET').access).toBe('admin');
  });

  it('every route of the fake ComfyUI has an explicit decision, on each of its twins', () => {
    const undecided: string[] = [];
    const wrong: string[] = [];
    for (const r of FAKE_COMFY_ROUTES) {
      const concrete = r.path.replace(/\{[^}]+\}/g, 'x1');
      const spellings = [concrete, ...(r.apiTwin ? [`/api${concrete}`, `//api//${concrete.slice(1)}`] : [])];
      for (const p of spellings) {
        const d = decide(p, r.method);
        if (d.rule === policy.fallback) undecided.push(`${r.method} ${p}`);
        const adminOnly =
          /^\/(v2\/)?(manager|customnode|snapshot|externalmodel|comfyui_manager|model)(\/|$)/.test(concrete) ||
          concrete.startsWith('/internal/') ||
          (r.method === 'POST' && (concrete === '/free' || concrete === '/users'));
        if ((d.access === 'admin') !== adminOnly) wrong.push(`${r.method} ${p} → ${d.access}`);
        if (d.access === 'public') wrong.push(`${r.method} ${p} is public`);
      }
    }
    expect(FAKE_COMFY_ROUTES.length).toBeGreaterThan(50);
    expect(undecided).toEqual([]);
    expect(wrong).toEqual([]);
  });
});

describe('admin families through the running gateway', () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv();
  });
  afterAll(async () => {
    await env.close();
  });

  it('a user gets 403 FORBIDDEN on every admin family twin, and ComfyUI hears nothing of it', async () => {
    env.fake.clearRequests();
    const paths = [
      ...MANAGER_FAMILIES.flatMap((f) => twins(`/${f}/reboot`)),
      ...twins('/internal/folder_paths').filter((x) => !x.includes('v2')),
      ...twins('/system_stats/x').filter((x) => !x.includes('v2')),
      '/extensions/ComfyUI-Manager/js/comfyui-manager.js',
      '/extensions/%43omfyUI-Manager/js/x.js',
      '/api/extensions/comfyui-manager/x.js',
    ];
    for (const p of paths) {
      for (const method of ['GET', 'POST']) {
        const r = await raw(env.gw, method, p, {
          headers: { ...env.alice.headers, 'Content-Type': 'application/json' },
          body: method === 'POST' ? '{}' : undefined,
        });
        expect([method, p, r.status, r.json().error.code]).toEqual([method, p, 403, 'FORBIDDEN']);
      }
    }
    for (const p of twins('/free').filter((x) => !x.includes('v2'))) {
      const r = await raw(env.gw, 'POST', p, {
        headers: { ...env.bob.headers, 'Content-Type': 'application/json' },
        body: '{"unload_models":true}',
      });
      expect([p, r.status, r.json().error.code]).toEqual([p, 403, 'FORBIDDEN']);
    }
    for (const p of twins('/users').filter((x) => !x.includes('v2'))) {
      const r = await raw(env.gw, 'POST', p, {
        headers: { ...env.bob.headers, 'Content-Type': 'application/json' },
        body: '{"username":"mallory"}',
      });
      expect([p, r.status, r.json().error.code]).toEqual([p, 403, 'FORBIDDEN']);
    }
    expect(env.fake.requests.map((r) => `${r.method} ${r.rawPath}`)).toEqual([]);
    expect(Object.values(env.fake.users)).not.toContain('mallory');
  });

  it('the unisolated assets API is admin-only; the frontend bundle under /assets/ stays open to users', async () => {
    env.fake.clearRequests();
    for (const [method, p] of [
      ['GET', '/api/assets'],
      ['GET', '/api/assets/0b0e5c7e-1111-4e4e-9999-000000000000/content'],
      ['POST', '/api/assets'],
      ['GET', '/assets'],
      ['GET', '//api//%61ssets'],
    ]) {
      const r = await raw(env.gw, method, p, {
        headers: { ...env.alice.headers, 'Content-Type': 'application/json' },
        body: method === 'POST' ? '{}' : undefined,
      });
      expect([method, p, r.status, r.json().error.code]).toEqual([method, p, 403, 'FORBIDDEN']);
    }
    expect(env.fake.requests.map((r) => `${r.method} ${r.rawPath}`)).toEqual([]);
    const bundle = await raw(env.gw, 'GET', '/assets/index-abc123.js', { headers: env.alice.headers });
    expect(bundle.status).not.toBe(403);
    expect(received(env.fake, /^\/assets\/index-abc123\.js$/)).toHaveLength(1);
  });

  it('the admin reaches the same routes (the refusal is the policy, not a broken route)', async () => {
    env.fake.clearRequests();
    const r = await raw(env.gw, 'GET', '/api/%6danager/version', { headers: env.admin.headers });
    expect(r.status).toBe(200);
    expect(received(env.fake, /manager\/version/)).toHaveLength(1);
    expect(received(env.fake, /manager\/version/)[0].rawPath).toBe('/api/manager/version');
  });
});
