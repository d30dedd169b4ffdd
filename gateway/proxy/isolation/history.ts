import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Interceptor } from '../../app';
import { AppError } from '../../errors';
import type { RequestContext } from '../../http/context';
import type { IsolationContext } from './context';
import { viewPromptTuple } from './entries';
import {
  callUpstream,
  cleanQuery,
  isObj,
  missingId,
  parseJsonObject,
  readBody,
  seesAll,
  sendJson,
  sendUpstream,
  sibling,
  upstreamHeaders,
  upstreamJson,
  upstreamUrl,
  withQuery,
} from './http';
import { scanObject } from './jsonScan';
import { filesOfOutputs } from './outputs';
import { upstreamIdsInBody } from './promptIds';
import { failedEntry, upstreamOfPrompt } from './held';
import { spreadDeletes } from './spread';
import { mergeHistories } from './historyMerge';

function intParam(q: URLSearchParams, name: string): number | null {
  const v = q.get(name);
  if (v === null) return null;
  if (!/^\s*[+-]?\d+\s*$/.test(v)) throw new AppError(400, 'INVALID_REQUEST', `${name} must be an integer`);
  return parseInt(v, 10);
}

/** ComfyUI's get_history(max_items, offset) slicing, applied to the caller's own entries. */
function slice<T>(items: T[], maxItems: number | null, offset: number | null): T[] {
  let off = offset ?? -1;
  if (off < 0 && maxItems !== null) off = items.length - maxItems;
  const out: T[] = [];
  for (let i = Math.max(0, off); i < items.length; i++) {
    if (maxItems !== null && out.length >= maxItems) break;
    out.push(items[i]);
  }
  return out;
}

/** /history and /history/{id}: the caller's prompts only; POST deletes and clears only theirs. */
export function historyInterceptors(iso: IsolationContext): Interceptor[] {
  /** Makes one history entry fit for the viewer and remembers the files it names. */
  function viewEntry(id: string, entry: unknown, viewer: string): unknown {
    if (!isObj(entry)) return entry;
    if (iso.ledger.get(id)) iso.ledger.addFiles(id, filesOfOutputs(entry.outputs));
    return 'prompt' in entry ? { ...entry, prompt: viewPromptTuple(entry.prompt, viewer, iso.ledger) } : entry;
  }

  const headersFor = (req: IncomingMessage, ctx: RequestContext) => upstreamHeaders(req, ctx, iso.cookieName, iso.upstream);

  /**
   * The id under which the viewer sees an entry of ComfyUI's history, or null when it is not theirs. The one place
   * that maps ComfyUI's history keys to the gateway's prompts (a server that picks its own prompt ids hooks in here).
   */
  function shownAs(upstreamKey: string, viewer: string): string | null {
    const id = iso.promptIds.toClient(upstreamKey);
    return iso.ledger.owner(id) === viewer ? id : null;
  }

  /** Held prompts ComfyUI refused when the gateway released them: history entries with an error status. */
  function addRefused(out: Record<string, unknown>, owner: string | null, viewer: string): void {
    for (const f of iso.queue?.failed(owner) ?? []) out[f.id] = failedEntry(f, viewer, iso);
  }

  /**
   * /history with several workers: every worker's entries (the caller's; admins: all) merged in the order they
   * ended, then max_items/offset applied. A worker that is down only loses its part.
   */
  async function listMany(req: IncomingMessage, res: ServerResponse, ctx: RequestContext): Promise<void> {
    const p = ctx.principal!;
    const all = seesAll(p, iso.separate);
    const maxItems = intParam(ctx.query, 'max_items');
    const offset = intParam(ctx.query, 'offset');
    if (!all && !iso.ledger.idsOf(p.username).length) return sendJson(req, res, {});
    const q = new URLSearchParams(ctx.query);
    q.delete('max_items');
    q.delete('offset');
    const answers = await iso.workers.each('GET', withQuery(ctx, q), headersFor(req, ctx));
    const ok = answers.find((a) => a.res.status === 200);
    if (!ok) return sendUpstream(req, res, answers[0].res);
    const merged = mergeHistories(answers, (k) => all || shownAs(k, p.username) !== null);
    const out: Record<string, unknown> = {};
    for (const m of slice(merged, maxItems, offset)) {
      const id = iso.promptIds.toClient(m.key);
      out[id] = viewEntry(id, m.entry, p.username);
    }
    addRefused(out, all ? null : p.username, p.username);
    sendJson(req, res, out, 200, ok.res);
  }

  const list: Interceptor = {
    id: 'isolation-history-list',
    routes: [{ path: '/history', methods: ['GET', 'HEAD'] }],
    async handle(req, res, ctx) {
      req.resume();
      const p = ctx.principal!;
      const headers = headersFor(req, ctx);
      if (iso.workers.many) return listMany(req, res, ctx);
      if (seesAll(p, iso.separate)) {
        const up = await callUpstream(iso.upstream, 'GET', upstreamUrl(ctx), headers);
        const j = upstreamJson(up);
        if (!isObj(j)) return sendUpstream(req, res, up);
        const out: Record<string, unknown> = {};
        for (const [upId, e] of Object.entries(j)) {
          const id = iso.promptIds.toClient(upId);
          out[id] = viewEntry(id, e, p.username);
        }
        addRefused(out, null, p.username);
        return sendJson(req, res, out, 200, up);
      }
      const maxItems = intParam(ctx.query, 'max_items');
      const offset = intParam(ctx.query, 'offset');
      // Nothing of theirs: no need to make ComfyUI serialise everyone's history.
      if (!iso.ledger.idsOf(p.username).length) return sendJson(req, res, {});
      // One read of the whole history, however many prompts are theirs; paging applies to their entries only,
      // so ComfyUI never gets max_items/offset (it would page everyone's).
      const q = new URLSearchParams(ctx.query);
      q.delete('max_items');
      q.delete('offset');
      const up = await callUpstream(iso.upstream, 'GET', withQuery(ctx, q), headers);
      if (up.status !== 200) return sendUpstream(req, res, up);
      const members = scanObject(up.body);
      if (!members) return sendJson(req, res, {}, 200, up);
      const mine: { id: string; start: number; end: number }[] = [];
      for (const m of members) {
        const id = shownAs(m.key, p.username);
        if (id !== null) mine.push({ id, start: m.start, end: m.end });
      }
      const out: Record<string, unknown> = {};
      for (const m of slice(mine, maxItems, offset)) {
        out[m.id] = viewEntry(m.id, JSON.parse(up.body.toString('utf8', m.start, m.end)), p.username);
      }
      addRefused(out, p.username, p.username);
      sendJson(req, res, out, 200, up);
    },
  };

  const one: Interceptor = {
    id: 'isolation-history-one',
    routes: [{ path: '/history/*', methods: ['GET', 'HEAD'] }],
    async handle(req, res, ctx) {
      req.resume();
      const p = ctx.principal!;
      const id = ctx.route.segments[1];
      const headers = headersFor(req, ctx);
      if (!seesAll(p, iso.separate) && iso.ledger.owner(id) !== p.username) {
        // Someone else's id gets exactly ComfyUI's answer for an id that does not exist.
        return sendUpstream(req, res, await callUpstream(iso.upstream, 'GET', sibling(ctx, missingId()) + cleanQuery(ctx), headers));
      }
      const refused = iso.queue?.failed(null).find((f) => f.id === id);
      if (refused) return sendJson(req, res, { [id]: failedEntry(refused, p.username, iso) });
      const upId = iso.promptIds.toUpstream(id);
      const up = await callUpstream(
        upstreamOfPrompt(iso, id),
        'GET',
        upId === id ? upstreamUrl(ctx) : sibling(ctx, upId) + cleanQuery(ctx),
        headers,
      );
      const j = upstreamJson(up);
      if (!isObj(j)) return sendUpstream(req, res, up);
      const out: Record<string, unknown> = {};
      for (const [k, e] of Object.entries(j)) {
        const cid = iso.promptIds.toClient(k);
        out[cid] = viewEntry(cid, e, p.username);
      }
      sendJson(req, res, out, 200, up);
    },
  };

  /** POST /history {delete, clear}: a non-admin's clear deletes their own entries only. */
  const post: Interceptor = {
    id: 'isolation-history-post',
    routes: [{ path: '/history', methods: ['POST'] }],
    async handle(req, res, ctx) {
      const p = ctx.principal!;
      const raw = await readBody(req);
      if (iso.workers.many) return sendUpstream(req, res, await spreadDeletes(iso, req, ctx, raw, 'history'));
      const headers = headersFor(req, ctx);
      headers['content-type'] = 'application/json';
      if (seesAll(p, iso.separate))
        return sendUpstream(
          req,
          res,
          await callUpstream(iso.upstream, 'POST', upstreamUrl(ctx), headers, upstreamIdsInBody(raw, iso.promptIds)),
        );
      const body = parseJsonObject(raw);
      if ('delete' in body && !Array.isArray(body.delete)) throw new AppError(400, 'INVALID_BODY', '`delete` must be a list of prompt ids');
      const ids = new Set<string>();
      for (const id of (body.delete as unknown[] | undefined) ?? [])
        if (typeof id === 'string' && iso.ledger.owner(id) === p.username) ids.add(iso.promptIds.toUpstream(id));
      if (body.clear) for (const id of iso.ledger.idsOf(p.username)) ids.add(iso.promptIds.toUpstream(id));
      sendUpstream(req, res, await callUpstream(iso.upstream, 'POST', upstreamUrl(ctx), headers, JSON.stringify({ delete: [...ids] })));
    },
  };

  return [list, one, post];
}
