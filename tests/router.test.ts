import express from 'express';
import request from 'supertest';
import type { Interceptor, RouteMount } from '../gateway/app';
import { buildRouter } from '../gateway/http/served';
import { canonicalize } from '../gateway/proxy/canonical';
import type { PolicyRule } from '../gateway/proxy/policy';
import { adminAndUser } from './helpers/auth';
import { TEST_KEY } from './helpers/gateway';
import { useStack } from './helpers/stack';

const OPTS = { manager_admin_only: true };
const mount =
  (...paths: [string, string][]): RouteMount =>
  (app) => {
    for (const [verb, p] of paths)
      (app as unknown as Record<string, (p: string, h: express.RequestHandler) => void>)[verb](p, (_q, r) => r.end('ok'));
  };
const icpt = (id: string, routes: Interceptor['routes']): Interceptor => ({ id, routes, handle: async () => undefined });
const sample = (r: PolicyRule) => '/' + r.prefix.map((p) => (p === '*' ? 'x1' : String(p))).join('/');

describe('route specs join the table only where the core rows say so (composition fails otherwise)', () => {
  test('a served route outside the gateway rows, or an intercept outside ComfyUI rows, is refused at start-up', () => {
    expect(() => buildRouter(OPTS, [mount(['get', '/prompt'])], [])).toThrow(/GET \/prompt is not a gateway route/);
    expect(() => buildRouter(OPTS, [mount(['get', '/my-node/thing'])], [])).toThrow(/not a gateway route/);
    expect(() => buildRouter(OPTS, [], [icpt('x', [{ path: '/gateway/api/me' }])])).toThrow(/not a comfy route/);
  });

  test('a spec straddling rows of different access, or a duplicate interceptor id, is refused', () => {
    // /system_stats: GET is for users, every other method for admins: one spec may not cover both.
    expect(() => buildRouter(OPTS, [], [icpt('stats', [{ path: '/system_stats' }])])).toThrow(/straddles/);
    expect(() => buildRouter(OPTS, [], [icpt('a', [{ path: '/queue' }]), icpt('a', [{ path: '/history' }])])).toThrow(/not unique/);
    // A `:param` where a core row names a segment of other access: /gateway/api/:x would also serve the admins'
    // /gateway/api/users to every user.
    expect(() => buildRouter(OPTS, [mount(['get', '/gateway/api/:thing'])], [])).toThrow(
      /straddles rows gateway-api and gateway-admin-users/,
    );
    expect(() => buildRouter(OPTS, [], [icpt('sys', [{ path: '/*', methods: ['GET'] }])])).toThrow(/GET \/health is not a comfy route/);
    // A `*` over a row's pattern (ComfyUI-Manager's extension files) cannot be checked value by value: refused.
    expect(() => buildRouter(OPTS, [], [icpt('ext', [{ path: '/extensions/*' }])])).toThrow(/pattern of row manager-extension-files/);
  });

  test('a feature route inherits its access from the row it falls under; decide() returns the spec that serves it', () => {
    const { policy } = buildRouter(
      OPTS,
      [mount(['get', '/gateway/api/widgets/:id'], ['get', '/gateway/api/users/:name/widgets'])],
      [icpt('logs', [{ path: '/internal/logs/subscribe' }])],
    );
    const widgets = policy.decide(canonicalize('/api/gateway/api/widgets/7'), 'GET');
    expect([widgets.rule.id, widgets.access, widgets.rule.family, typeof widgets.rule.serve]).toEqual([
      'serve /gateway/api/widgets/:id',
      'user',
      'gateway-api',
      'function',
    ]);
    expect(policy.decide(canonicalize('/gateway/api/users/bob/widgets'), 'GET').access).toBe('admin');
    // an intercept under an admin row stays admin
    const logs = policy.decide(canonicalize('/internal/logs/subscribe'), 'PATCH');
    expect([logs.rule.id, logs.access, logs.rule.intercept?.id]).toEqual(['intercept logs', 'admin', 'logs']);
    // a method the route does not serve falls back to the core row: no handler, 404 from the front door
    const post = policy.decide(canonicalize('/gateway/api/widgets/7'), 'POST');
    expect([post.rule.id, post.rule.serve]).toEqual(['gateway-api', undefined]);
  });
});

describe('the composed gateway: one table routes every request', () => {
  const stack = useStack();
  const key = (r: request.Test) => r.set('X-API-Key', TEST_KEY);
  // What reached ComfyUI, less the gateway queue's own GET /queue polls (its worker keeps count in the background).
  const heard = () =>
    stack.fake.requests.filter((r) => !(r.method === 'GET' && r.rawPath === '/queue')).map((r) => `${r.method} ${r.rawPath}`);

  test('every gateway row is served by a spec; every spec serves, intercepts or is a core row; ids are unique', () => {
    const { rules } = stack.gw.composed.gateway.policy;
    const ids = rules.map((r) => r.id);
    expect(new Set(ids).size).toBe(ids.length);
    const core = rules.filter((r) => !r.serve && !r.intercept);
    const unserved = core.filter((c) => c.owner === 'gateway' && !rules.some((r) => r.serve && r.family === c.id)).map((c) => c.id);
    expect(unserved).toEqual([]);
    expect(rules.filter((r) => (r.serve && r.owner !== 'gateway') || (r.intercept && r.owner !== 'comfy'))).toEqual([]);
    const interceptors = [...new Set(rules.flatMap((r) => (r.intercept ? [r.intercept] : [])))];
    expect(new Set(interceptors.map((i) => i.id)).size).toBe(interceptors.length);
    expect(interceptors.map((i) => i.id)).toEqual(expect.arrayContaining(['inject-index', 'isolation-prompt', 'downloads-features']));
  });

  test('every served spec reaches its handler through the gateway (Express answers OPTIONS with the path’s methods)', async () => {
    const before = heard().length;
    const served = stack.gw.composed.gateway.policy.rules.filter((r) => r.serve && r.exact);
    expect(served.length).toBeGreaterThan(20);
    const missing: string[] = [];
    for (const r of served) {
      const res = await key(request(stack.gw.url).options(sample(r)));
      const allow = String(res.headers.allow ?? '');
      // download routes answer any other method with 405 themselves; the rest get Express's Allow list
      if (res.status === 404 || (res.status === 200 && !r.methods?.every((m) => m === 'OPTIONS' || allow.includes(m))))
        missing.push(`${r.id} → ${res.status} ${allow}`);
    }
    expect(missing).toEqual([]);
    const assets = await key(request(stack.gw.url).get('/gateway/static/common.js'));
    expect(assets.status).toBe(200);
    expect(heard().slice(before)).toEqual([]);
  });

  test('an unknown gateway path is 404 NOT_FOUND after the access check, and never reaches ComfyUI', async () => {
    const before = heard().length;
    for (const p of ['/gateway/api/nope', '/api/gateway/api/nope', '/gateway/api/usage/extra', '/gateway/static/nope.js']) {
      const res = await key(request(stack.gw.url).get(p));
      expect([p, res.status, res.body.error?.code]).toEqual([p, 404, 'NOT_FOUND']);
    }
    const post = await key(request(stack.gw.url).post('/health'));
    expect([post.status, post.body.error?.code]).toEqual([404, 'NOT_FOUND']);
    const anon = await request(stack.gw.url).get('/gateway/api/nope');
    expect([anon.status, anon.body.error?.code]).toEqual([401, 'AUTH_REQUIRED']);
    expect(heard().slice(before)).toEqual([]);
  });

  test('a feature’s routes are reachable through the table and its access is enforced (queue: usage for users, queue admin-only)', async () => {
    const { user, admin } = await adminAndUser(stack.gw, 'rita');
    const before = heard().length;
    const usage = await request(stack.gw.url).get('/api/gateway/api/usage').set('Cookie', user.cookie);
    expect([usage.status, Array.isArray(usage.body.usage)]).toEqual([200, true]);
    const refused = await request(stack.gw.url).get('/gateway/api/queue').set('Cookie', user.cookie);
    expect([refused.status, refused.body.error?.code]).toEqual([403, 'FORBIDDEN']);
    const allowed = await request(stack.gw.url).get('/gateway/api/queue').set('Cookie', admin.cookie);
    expect(allowed.status).toBe(200);
    expect(heard().slice(before)).toEqual([]);
  });
});
