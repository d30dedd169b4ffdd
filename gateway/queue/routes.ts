import type { RouteMount } from '../app';
import type { CredentialChain } from '../auth/chain';
import { errors } from '../errors';
import { getContext } from '../http/context';
import { bodyObject, freshPrincipal, onlyKeys, parseBody } from '../routes/body';
import type { UserStore } from '../users/types';
import type { GatewayQueue } from '.';
import { limitSetSchema } from './config';
import { dayOf } from './limits';

const DAY = /^\d{4}-\d{2}-\d{2}$/;

/** A `from`/`to` query day (YYYY-MM-DD); absent = `fallback`. */
function dayParam(v: unknown, name: string, fallback: string): string {
  if (v === undefined || v === '') return fallback;
  if (typeof v !== 'string' || !DAY.test(v) || Number.isNaN(Date.parse(`${v}T00:00:00Z`)))
    throw errors.invalidBody(`${name} must be a day, YYYY-MM-DD`, { [name]: v });
  return v;
}

/**
 * GET /gateway/api/usage (admins: everyone, users: themselves), and the admin queue API: GET /gateway/api/queue
 * (held prompts in release order, workers, limits), PUT|DELETE /gateway/api/queue/limits/:username, POST
 * /gateway/api/queue/reorder {ids}. The admin-only part is the policy table's `gateway-admin-queue` row.
 */
export function queueRoutes(deps: {
  queue: GatewayQueue;
  users: Pick<UserStore, 'get'>;
  chain: Pick<CredentialChain, 'authenticate'>;
}): RouteMount {
  const { queue } = deps;
  const fresh = freshPrincipal(deps.chain);
  const name = (key: string) => queue.keys.nameOf(key) ?? null;
  return (app) => {
    app.get('/gateway/api/usage', (req, res) => {
      const p = getContext(req).principal!;
      const now = Date.now();
      const to = dayParam(req.query.to, 'to', dayOf(now));
      const from = dayParam(req.query.from, 'from', dayOf(now - 29 * 86_400_000));
      if (from > to) throw errors.invalidBody('from must not be after to', { from, to });
      const self = queue.keys.keyOf(p.username);
      const rows = queue.limits
        .rows(from, to)
        .filter((r) => p.role === 'admin' || r.owner === self)
        .map((r) => ({
          user: name(r.owner),
          day: r.day,
          prompts: r.prompts,
          gpu_seconds: Math.round(r.gpu_s * 1000) / 1000,
          images: r.images,
        }))
        .filter((r) => r.user !== null);
      res.set('Cache-Control', 'no-store').json({ from, to, usage: rows });
    });

    app.get('/gateway/api/queue', (_req, res) => {
      const held = queue.held(null).map((h, i) => ({
        position: i + 1,
        prompt_id: h.id,
        user: name(h.owner),
        role: h.role,
        front: h.front,
        queued_at: new Date(h.at).toISOString(),
      }));
      const workers = queue.workers.all().map((w) => ({
        name: w.name,
        url: w.url,
        up: w.up,
        running: [...w.flights.values()].filter((f) => f.running).length,
        waiting: [...w.flights.values()].filter((f) => !f.running).length,
      }));
      const users: Record<string, unknown> = {};
      for (const [k, l] of Object.entries(queue.limits.overrides())) {
        const n = name(k);
        if (n) users[n] = l;
      }
      res.set('Cache-Control', 'no-store').json({ held, workers, limits: { users } });
    });

    app.put('/gateway/api/queue/limits/:username', ...parseBody, fresh, async (req, res) => {
      const username = String(req.params.username);
      if (username !== 'api-key' && !deps.users.get(username)) throw errors.notFound('No such user');
      const body = bodyObject(req);
      onlyKeys(body, ['max_waiting', 'max_running', 'per_day']);
      const parsed = limitSetSchema.safeParse(body);
      if (!parsed.success)
        throw errors.invalidBody('Limits must be whole numbers ≥ 0 or null', { issues: parsed.error.issues.map((i) => i.path.join('.')) });
      await queue.setLimits(username, parsed.data);
      res.set('Cache-Control', 'no-store').json({ username, limits: parsed.data });
    });

    app.delete('/gateway/api/queue/limits/:username', async (req, res) => {
      await queue.setLimits(String(req.params.username), null);
      res.status(204).end();
    });

    app.post('/gateway/api/queue/reorder', ...parseBody, fresh, async (req, res) => {
      const body = bodyObject(req);
      onlyKeys(body, ['ids']);
      if (!Array.isArray(body.ids) || !body.ids.every((x) => typeof x === 'string'))
        throw errors.invalidBody('ids must be a list of prompt ids');
      const unknown = (body.ids as string[]).filter((id) => !queue.held(null).some((h) => h.id === id));
      if (unknown.length) throw errors.invalidBody('Some ids are not waiting in the gateway queue', { unknown });
      await queue.reorder(body.ids as string[]);
      res.set('Cache-Control', 'no-store').json({ held: queue.held(null).map((h) => h.id) });
    });
  };
}
