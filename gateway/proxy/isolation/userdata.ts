import type { IncomingMessage } from 'node:http';
import type { Interceptor } from '../../app';
import { AppError, errors } from '../../errors';
import type { RequestContext } from '../../http/context';
import type { IsolationContext } from './context';
import { callUpstream, isObj, readBody, sendJson, sendUpstream, upstreamHeaders, upstreamJson, upstreamUrl } from './http';
import { splitUserPath } from './paths';

/** Where each gateway user's userdata lives inside ComfyUI's one shared user folder (no --multi-user). */
export const USERDATA_ROOT = 'gateway-users';
const SETTINGS_FILE = 'comfy.settings.json';
/** The largest userdata file the gateway reads to rewrite ComfyUI's answer (workflows, settings, templates). */
const MAX_USERDATA = 64 * 1024 * 1024;

/**
 * Without --multi-user ComfyUI keeps one user folder (settings, workflows, …) for everyone and ignores comfy-user.
 * The gateway then keeps users apart itself: every /userdata path is moved under `gateway-users/<user>/`, /v2/userdata
 * listings are narrowed to that folder, and /settings is served from `gateway-users/<user>/comfy.settings.json`
 * through ComfyUI's own userdata API. Paths go through the one path normaliser first (no `..`, nothing absolute).
 * With --multi-user (or separate_users off) these routes pass through unchanged.
 */
export function userdataInterceptors(iso: IsolationContext): Interceptor[] {
  const active = () => iso.separate && iso.server?.info?.multiUser === false;
  const rootOf = (user: string) => `${USERDATA_ROOT}/${user}`;
  const prefix = (ctx: RequestContext) => (ctx.route.apiPrefixed ? '/api' : '');
  const inside = (user: string, p: string, what: string) => {
    const s = splitUserPath(p, { [what]: p });
    return [rootOf(user), ...s].join('/');
  };
  const headersFor = (req: IncomingMessage, ctx: RequestContext) => upstreamHeaders(req, ctx, iso.cookieName, iso.upstream);

  const files: Interceptor = {
    id: 'isolation-userdata-single',
    routes: [{ path: '/userdata', prefix: true }],
    async handle(req, res, ctx, forward) {
      // ComfyUI's own multi-user mode (or shared files) keeps the files apart already: passed through as is.
      if (!active()) return forward();
      const user = ctx.principal!.username;
      const s = ctx.route.segments;
      const q = new URLSearchParams(ctx.route.query);
      if (s.length === 1) {
        // GET /userdata?dir=…: listed relative to dir, so only dir moves.
        const dir = q.get('dir');
        if (dir) q.set('dir', inside(user, dir, 'dir'));
        ctx.route = { ...ctx.route, query: q.toString() };
        return forward();
      }
      if (s.length === 2 || (s.length === 4 && s[2] === 'move')) {
        const parts = [inside(user, s[1], 'file')];
        if (s.length === 4) parts.push('move', inside(user, s[3], 'dest'));
        const forwardPath = `${prefix(ctx)}/userdata/${parts.map((p, i) => (i === 1 ? p : encodeURIComponent(p))).join('/')}`;
        ctx.route = { ...ctx.route, forwardPath };
        if (req.method !== 'POST') return forward();
        // A save or move answers with the path inside ComfyUI's shared folder: the client must see its own.
        const body = await readBody(req, MAX_USERDATA);
        const headers = headersFor(req, ctx);
        if (req.headers['content-type']) headers['content-type'] = req.headers['content-type'];
        const up = await callUpstream(iso.upstream, 'POST', upstreamUrl(ctx), headers, body);
        const j = upstreamJson(up);
        const root = `${rootOf(user)}/`;
        const strip = (v: unknown) => (typeof v === 'string' && v.startsWith(root) ? v.slice(root.length) : v);
        if (typeof j === 'string') return sendJson(req, res, strip(j), 200, up);
        if (isObj(j) && 'path' in j) return sendJson(req, res, { ...j, path: strip(j.path) }, 200, up);
        return sendUpstream(req, res, up);
      }
      throw errors.notFound();
    },
  };

  const listV2: Interceptor = {
    id: 'isolation-userdata-v2-single',
    routes: [{ path: '/v2/userdata', methods: ['GET', 'HEAD'] }],
    async handle(req, res, ctx, forward) {
      if (!active()) return forward();
      req.resume();
      const user = ctx.principal!.username;
      const root = rootOf(user);
      const q = new URLSearchParams(ctx.route.query);
      const asked = q.get('path') ?? '';
      q.set('path', asked ? inside(user, asked, 'path') : root);
      const up = await callUpstream(iso.upstream, 'GET', `${prefix(ctx)}/v2/userdata?${q}`, headersFor(req, ctx));
      // A user whose folder does not exist yet has an empty root, as ComfyUI answers for a new user.
      if (up.status === 404 && !asked) return sendJson(req, res, []);
      const j = upstreamJson(up);
      if (!Array.isArray(j)) return sendUpstream(req, res, up);
      const out = j
        .filter((e) => isObj(e) && typeof e.path === 'string' && e.path.startsWith(`${root}/`))
        .map((e) => ({ ...e, path: (e.path as string).slice(root.length + 1) }));
      sendJson(req, res, out, 200, up);
    },
  };

  // Settings writes of one user are read-modify-write: one at a time per user.
  const chains = new Map<string, Promise<unknown>>();
  const serial = <T>(user: string, fn: () => Promise<T>): Promise<T> => {
    const run = (chains.get(user) ?? Promise.resolve()).then(fn, fn);
    const tail = run.catch(() => undefined);
    chains.set(user, tail);
    void tail.then(() => chains.get(user) === tail && chains.delete(user));
    return run;
  };

  const settings: Interceptor = {
    id: 'isolation-settings-single',
    routes: [{ path: '/settings' }, { path: '/settings/*' }],
    async handle(req, res, ctx, forward) {
      if (!active()) return forward();
      const user = ctx.principal!.username;
      const file = `${prefix(ctx)}/userdata/${encodeURIComponent(`${rootOf(user)}/${SETTINGS_FILE}`)}`;
      const headers = headersFor(req, ctx);
      const read = async (): Promise<Record<string, unknown>> => {
        const r = await callUpstream(iso.upstream, 'GET', file, headers);
        if (r.status === 404) return {};
        const j = upstreamJson(r);
        return isObj(j) ? j : {}; // ComfyUI reads a corrupt settings file as {} too
      };
      const id = ctx.route.segments[1];
      const method = req.method ?? 'GET';
      if (method === 'GET' || method === 'HEAD') {
        req.resume();
        const all = await read();
        return sendJson(req, res, id === undefined ? all : Object.prototype.hasOwnProperty.call(all, id) ? all[id] : null);
      }
      if (method !== 'POST') return forward(); // ComfyUI's own 405; nothing is read or written
      const raw = await readBody(req);
      let value: unknown;
      try {
        value = JSON.parse(raw.toString('utf8'));
      } catch {
        throw new AppError(400, 'INVALID_BODY', 'The body must be valid JSON');
      }
      if (id === undefined && !isObj(value)) throw new AppError(400, 'INVALID_BODY', 'The body must be a JSON object');
      const up = await serial(user, async () => {
        const all = await read();
        const next = id === undefined ? { ...all, ...(value as Record<string, unknown>) } : { ...all, [id]: value };
        const h = { ...headers, 'content-type': 'application/json' };
        return callUpstream(iso.upstream, 'POST', `${file}?overwrite=true`, h, JSON.stringify(next, null, 4));
      });
      if (up.status !== 200) return sendUpstream(req, res, up);
      res.writeHead(200, { 'content-length': 0, 'x-content-type-options': 'nosniff' });
      res.end();
    },
  };

  return [files, listV2, settings];
}
