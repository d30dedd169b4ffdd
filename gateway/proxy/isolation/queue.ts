import type { Interceptor } from '../../app';
import { AppError } from '../../errors';
import type { Principal } from '../../auth/principal';
import type { IsolationContext } from './context';
import type { IncomingMessage } from 'node:http';
import type { RequestContext } from '../../http/context';
import type { Upstream, UpstreamResponse } from '../upstream';
import { heldTuple, upstreamOfPrompt } from './held';
import { ownQueued, postToWorkers, spreadDeletes } from './spread';
import { viewPromptTuple } from './entries';
import { upstreamIdsInBody } from './promptIds';
import {
  callUpstream,
  isObj,
  missingId,
  parseJsonObject,
  readBody,
  seesAll,
  sendJson,
  sendUpstream,
  unexpectedAnswer,
  upstreamHeaders,
  upstreamJson,
  upstreamUrl,
} from './http';

/** The workers' /queue answers as one (those that are not a queue are left out). */
function mergedQueue(answers: unknown[]): Record<string, unknown[]> | undefined {
  const queues = answers.filter(isObj);
  if (!queues.length) return undefined;
  const pick = (k: string) => queues.flatMap((q) => (Array.isArray(q[k]) ? (q[k] as unknown[]) : []));
  return { queue_running: pick('queue_running'), queue_pending: pick('queue_pending') };
}

/** GET /queue shows the caller's prompts only (admins: all, others' secrets stripped). */
export function queueInterceptors(iso: IsolationContext): Interceptor[] {
  // A JSON POST that acts on prompts: callers who see everything are forwarded as they are (null); for the others
  // the body and upstream headers come back to be narrowed to their own prompts.
  async function ownPost(
    req: Parameters<Interceptor['handle']>[0],
    res: Parameters<Interceptor['handle']>[1],
    ctx: Parameters<Interceptor['handle']>[2],
    raw: Buffer,
  ) {
    const headers = upstreamHeaders(req, ctx, iso.cookieName, iso.upstream);
    headers['content-type'] = 'application/json';
    if (!seesAll(ctx.principal!, iso.separate)) return { raw, headers };
    sendUpstream(req, res, await callUpstream(iso.upstream, 'POST', upstreamUrl(ctx), headers, upstreamIdsInBody(raw, iso.promptIds)));
    return null;
  }

  /** delete / clear / interrupt of held prompts: they leave the gateway's queue (the caller's own; admins: any). */
  async function cancelHeld(raw: Buffer, p: Principal, route: 'queue' | 'interrupt'): Promise<void> {
    if (!iso.queue) return;
    let body: Record<string, unknown>;
    try {
      body = parseJsonObject(raw, true);
    } catch {
      return; // ComfyUI's answer to a malformed body stays the answer
    }
    const viewer = seesAll(p, iso.separate) ? null : p.username;
    const ids: string[] = [];
    if (route === 'interrupt') {
      if (typeof body.prompt_id === 'string') ids.push(body.prompt_id);
    } else {
      if (Array.isArray(body.delete)) for (const id of body.delete) if (typeof id === 'string') ids.push(id);
      if (body.clear) for (const h of iso.queue.held(viewer)) ids.push(h.id);
    }
    if (ids.length) await iso.queue.cancel(ids, viewer);
  }

  /**
   * POST /interrupt with several workers: a prompt id goes to the worker running it; without one, a user's running
   * prompt is looked for on every worker, and an admin's interrupt stops every worker.
   */
  async function interruptMany(
    req: IncomingMessage,
    ctx: RequestContext,
    raw: Buffer,
    body: Record<string, unknown>,
  ): Promise<UpstreamResponse> {
    const p = ctx.principal!;
    const headers = upstreamHeaders(req, ctx, iso.cookieName, iso.upstream);
    headers['content-type'] = 'application/json';
    const all = seesAll(p, iso.separate);
    const send = (u: Upstream, id: string) => callUpstream(u, 'POST', upstreamUrl(ctx), headers, JSON.stringify({ prompt_id: id }));
    if (typeof body.prompt_id === 'string' && body.prompt_id) {
      const id = body.prompt_id;
      if (!all && iso.ledger.owner(id) !== p.username) return send(iso.upstream, missingId());
      return send(upstreamOfPrompt(iso, id), iso.promptIds.toUpstream(id));
    }
    if (all) return postToWorkers(iso, upstreamUrl(ctx), headers, () => raw.toString('utf8') || '{}');
    const [mine] = await ownQueued(iso, headers, p.username, 'queue_running');
    return mine ? send(mine.upstream, mine.id) : send(iso.upstream, missingId());
  }

  const getQueue: Interceptor = {
    id: 'isolation-queue-get',
    routes: [{ path: '/queue', methods: ['GET', 'HEAD'] }],
    async handle(req, res, ctx) {
      req.resume();
      const p = ctx.principal!;
      const answers = await iso.workers.each('GET', upstreamUrl(ctx), upstreamHeaders(req, ctx, iso.cookieName, iso.upstream));
      const up = answers[0].res;
      // Several workers: one queue, each worker's running and waiting prompts after the previous worker's.
      const j = answers.length === 1 ? upstreamJson(up) : mergedQueue(answers.map((a) => upstreamJson(a.res)));
      const all = seesAll(p, iso.separate);
      if (!isObj(j)) {
        if (up.status === 200 && !all) throw unexpectedAnswer();
        return sendUpstream(req, res, up);
      }
      const keep = (e: unknown) =>
        all || (Array.isArray(e) && typeof e[1] === 'string' && iso.ledger.owner(iso.promptIds.toClient(e[1])) === p.username);
      const out: Record<string, unknown> = { ...j };
      for (const k of ['queue_running', 'queue_pending']) {
        if (Array.isArray(j[k])) out[k] = j[k].filter(keep).map((e: unknown) => viewPromptTuple(e, p.username, iso.ledger));
      }
      if (iso.queue && Array.isArray(out.queue_pending)) {
        // Held prompts wait behind ComfyUI's own, in the order the gateway will release them.
        const numbers = [...(j.queue_running ?? []), ...(j.queue_pending ?? [])].map((e: unknown) => (Array.isArray(e) ? Number(e[0]) : 0));
        const base = Math.max(0, ...numbers.filter(Number.isFinite));
        const viewer = all ? null : iso.queue.keys.keyOf(p.username);
        iso.queue.held(null).forEach((h, i) => {
          if (viewer === null || h.owner === viewer) (out.queue_pending as unknown[]).push(heldTuple(h, base + 1 + i, p.username, iso));
        });
      }
      sendJson(req, res, out, up.status, up);
    },
  };

  /** POST /queue {delete, clear}: only the caller's own pending prompts (a non-admin's clear deletes theirs). */
  const postQueue: Interceptor = {
    id: 'isolation-queue-post',
    routes: [{ path: '/queue', methods: ['POST'] }],
    async handle(req, res, ctx) {
      const p = ctx.principal!;
      const raw = await readBody(req);
      await cancelHeld(raw, p, 'queue');
      if (iso.workers.many) return sendUpstream(req, res, await spreadDeletes(iso, req, ctx, raw, 'queue'));
      const post = await ownPost(req, res, ctx, raw);
      if (!post) return;
      const { headers } = post;
      const body = parseJsonObject(raw);
      if ('delete' in body && !Array.isArray(body.delete)) throw new AppError(400, 'INVALID_BODY', '`delete` must be a list of prompt ids');
      const ids = new Set<string>();
      for (const id of (body.delete as unknown[] | undefined) ?? [])
        if (typeof id === 'string' && iso.ledger.owner(id) === p.username) ids.add(iso.promptIds.toUpstream(id));
      if (body.clear) {
        const q = upstreamJson(await callUpstream(iso.upstream, 'GET', '/queue', headers));
        const pending = isObj(q) && Array.isArray(q.queue_pending) ? q.queue_pending : [];
        for (const e of pending)
          if (Array.isArray(e) && typeof e[1] === 'string' && iso.ledger.owner(iso.promptIds.toClient(e[1])) === p.username) ids.add(e[1]);
      }
      // Always ask ComfyUI, even with nothing left to delete: its answer is the answer for a missing id.
      sendUpstream(req, res, await callUpstream(iso.upstream, 'POST', upstreamUrl(ctx), headers, JSON.stringify({ delete: [...ids] })));
    },
  };

  /** POST /interrupt: only when the running prompt is the caller's (targeted, so it cannot hit the next one). */
  const interrupt: Interceptor = {
    id: 'isolation-interrupt',
    routes: [{ path: '/interrupt', methods: ['POST'] }],
    async handle(req, res, ctx) {
      const p = ctx.principal!;
      const raw = await readBody(req);
      // An empty body means "no prompt_id"; an unreadable one is refused before anything is cancelled or sent
      // (read as "no prompt_id" it would stop whatever the caller runs, on every worker).
      const body = parseJsonObject(raw, true);
      await cancelHeld(raw, p, 'interrupt');
      if (iso.workers.many) return sendUpstream(req, res, await interruptMany(req, ctx, raw, body));
      const post = await ownPost(req, res, ctx, raw);
      if (!post) return;
      const { headers } = post;
      let target: string;
      if (typeof body.prompt_id === 'string' && body.prompt_id) {
        target = iso.ledger.owner(body.prompt_id) === p.username ? iso.promptIds.toUpstream(body.prompt_id) : missingId();
      } else {
        const q = upstreamJson(await callUpstream(iso.upstream, 'GET', '/queue', headers));
        const running = isObj(q) && Array.isArray(q.queue_running) ? q.queue_running : [];
        const mine = running.find(
          (e: unknown) => Array.isArray(e) && typeof e[1] === 'string' && iso.ledger.owner(iso.promptIds.toClient(e[1])) === p.username,
        ) as unknown[] | undefined;
        target = mine ? (mine[1] as string) : missingId();
      }
      sendUpstream(req, res, await callUpstream(iso.upstream, 'POST', upstreamUrl(ctx), headers, JSON.stringify({ prompt_id: target })));
    },
  };

  return [getQueue, postQueue, interrupt];
}
