import type { IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import { AppError } from '../../errors';
import type { RequestContext } from '../../http/context';
import { callUpstream, type Upstream, type UpstreamResponse } from '../upstream';
import type { IsolationContext } from './context';
import { upstreamOfPrompt } from './held';
import { isObj, parseJsonObject, seesAll, upstreamHeaders, upstreamJson, upstreamUrl } from './http';

/** The gateway's prompt ids as ComfyUI's, grouped by the worker that holds each (several workers). */
export function idsByWorker(iso: IsolationContext, clientIds: Iterable<string>): Map<Upstream, Set<string>> {
  const out = new Map<Upstream, Set<string>>();
  for (const id of clientIds) {
    const u = upstreamOfPrompt(iso, id);
    if (!out.has(u)) out.set(u, new Set());
    out.get(u)!.add(iso.promptIds.toUpstream(id));
  }
  return out;
}

/** The caller's prompts (ComfyUI's ids) running or waiting on every worker, worker by worker, from their /queue. */
export async function ownQueued(
  iso: IsolationContext,
  headers: OutgoingHttpHeaders,
  username: string,
  key: 'queue_running' | 'queue_pending',
): Promise<{ upstream: Upstream; id: string }[]> {
  const out: { upstream: Upstream; id: string }[] = [];
  for (const a of await iso.workers.each('GET', '/queue', headers)) {
    const q = upstreamJson(a.res);
    for (const e of isObj(q) && Array.isArray(q[key]) ? (q[key] as unknown[]) : [])
      if (Array.isArray(e) && typeof e[1] === 'string' && iso.ledger.owner(iso.promptIds.toClient(e[1])) === username)
        out.push({ upstream: a.upstream, id: e[1] });
  }
  return out;
}

/**
 * Sends one JSON POST per worker (`bodyFor` gives each its body, null: nothing for it) and answers with the first
 * worker's answer, which it always gets (ComfyUI's answer for an empty delete is the answer for a missing id).
 * A worker that is down only loses its part.
 */
export async function postToWorkers(
  iso: IsolationContext,
  path: string,
  headers: OutgoingHttpHeaders,
  bodyFor: (u: Upstream, first: boolean) => string | null,
): Promise<UpstreamResponse> {
  const list = iso.workers.upstreams();
  const sends = list.map(async ({ upstream }, i): Promise<UpstreamResponse | null> => {
    const body = bodyFor(upstream, i === 0) ?? (i === 0 ? JSON.stringify({ delete: [] }) : null);
    if (body === null) return null;
    if (i === 0) return callUpstream(upstream, 'POST', path, headers, body);
    return callUpstream(upstream, 'POST', path, headers, body).catch(() => null);
  });
  const [first] = await Promise.all(sends);
  return first!;
}

/**
 * POST /queue or /history {delete, clear} with several workers: each id goes to the worker that holds it; a clear
 * reaches every worker (an admin's: everything; a user's: only their own prompts, each on its worker).
 */
export async function spreadDeletes(
  iso: IsolationContext,
  req: IncomingMessage,
  ctx: RequestContext,
  raw: Buffer,
  route: 'queue' | 'history',
): Promise<UpstreamResponse> {
  const p = ctx.principal!;
  const headers = upstreamHeaders(req, ctx, iso.cookieName, iso.upstream);
  headers['content-type'] = 'application/json';
  const all = seesAll(p, iso.separate);
  let body: Record<string, unknown> | null = null;
  try {
    body = parseJsonObject(raw);
    if ('delete' in body && !Array.isArray(body.delete)) throw new AppError(400, 'INVALID_BODY', '`delete` must be a list of prompt ids');
  } catch (e) {
    if (!all) throw e;
    body = null; // an admin's malformed body gets ComfyUI's own answer
  }
  if (!body) return callUpstream(iso.upstream, 'POST', upstreamUrl(ctx), headers, raw);
  const own = (id: string) => all || iso.ledger.owner(id) === p.username;
  const asked = ((body.delete as unknown[] | undefined) ?? []).filter((id): id is string => typeof id === 'string' && own(id));
  const groups = idsByWorker(iso, asked);
  const add = (u: Upstream, id: string) => (groups.get(u) ?? groups.set(u, new Set()).get(u)!).add(id);
  const clearAll = Boolean(body.clear) && all;
  if (body.clear && !all) {
    if (route === 'history') for (const [u, ids] of idsByWorker(iso, iso.ledger.idsOf(p.username))) for (const id of ids) add(u, id);
    else for (const q of await ownQueued(iso, headers, p.username, 'queue_pending')) add(q.upstream, q.id);
  }
  return postToWorkers(iso, upstreamUrl(ctx), headers, (u) => {
    const ids = groups.get(u);
    if (clearAll) return JSON.stringify({ clear: true, delete: [...(ids ?? [])] });
    return ids ? JSON.stringify({ delete: [...ids] }) : null;
  });
}
