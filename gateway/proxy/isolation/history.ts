import type { IncomingMessage } from 'node:http';
import type { Interceptor } from '../../app';
import { AppError } from '../../errors';
import type { RequestContext } from '../../http/context';
import type { IsolationContext } from './context';
import { viewPromptTuple } from './entries';
import {
  callUpstream, cleanQuery, isObj, missingId, parseJsonObject, readBody, seesAll, segs, sendJson, sendUpstream, sibling, upstreamHeaders, upstreamJson, upstreamUrl, withQuery,
} from './http';
import { scanObject } from './jsonScan';
import { LEDGER_MAX } from './ledger';
import { filesOfOutputs } from './outputs';
import { upstreamIdsInBody } from './promptIds';

/** Up to this many own prompts, GET /history asks ComfyUI for each by id instead of reading everyone's history. */
const PER_ID_MAX = 256;
const PER_ID_CONCURRENCY = 32;

/** Runs `fn` over `items` with at most `limit` in flight, keeping order. */
async function mapLimit<T, R>(items: T[], limit: number, fn: (x: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

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
  // Prompt ids seen in ComfyUI's history, and those that left it since (ids are never reused): skipped when asking one by one.
  const done = new Set<string>();
  const gone = new Set<string>();

  const list: Interceptor = {
    id: 'isolation-history-list',
    matches: (ctx, m) => (m === 'GET' || m === 'HEAD') && segs(ctx).join('/') === 'history',
    async handle(req, res, ctx) {
      req.resume();
      const p = ctx.principal!;
      const headers = headersFor(req, ctx);
      if (seesAll(p, iso.separate)) {
        const up = await callUpstream(iso.upstream, 'GET', upstreamUrl(ctx), headers);
        const j = upstreamJson(up);
        if (!isObj(j)) return sendUpstream(req, res, up);
        const out: Record<string, unknown> = {};
        for (const [upId, e] of Object.entries(j)) {
          const id = iso.promptIds.toClient(upId);
          out[id] = viewEntry(id, e, p.username);
        }
        return sendJson(req, res, out, 200, up);
      }
      const maxItems = intParam(ctx.query, 'max_items');
      const offset = intParam(ctx.query, 'offset');
      const own = iso.ledger.idsOf(p.username);
      // Nothing of theirs: no need to make ComfyUI serialise everyone's history.
      if (!own.length) return sendJson(req, res, {});
      if (done.size + gone.size > 2 * LEDGER_MAX) {
        for (const set of [done, gone]) for (const id of set) if (!iso.ledger.get(id)) set.delete(id);
      }
      const candidates = own.filter((id) => !gone.has(id));
      if (candidates.length <= PER_ID_MAX) {
        // Few prompts of theirs among many: ask for each one (O(own) work here and upstream, not O(everyone)).
        const prefix = ctx.route.apiPrefixed ? '/api' : '';
        const answers = await mapLimit(candidates, PER_ID_CONCURRENCY, (id) =>
          callUpstream(iso.upstream, 'GET', `${prefix}/history/${encodeURIComponent(iso.promptIds.toUpstream(id))}`, headers),
        );
        const failed = answers.find((a) => a.status !== 200);
        if (failed) return sendUpstream(req, res, failed);
        const present: [string, unknown][] = [];
        candidates.forEach((id, i) => {
          const j = upstreamJson(answers[i]);
          const upId = iso.promptIds.toUpstream(id);
          if (isObj(j) && isObj(j[upId])) {
            present.push([id, j[upId]]);
            done.add(id);
          } else if (done.delete(id)) gone.add(id); // was in the history, is no more: deleted or ComfyUI restarted
        });
        const out: Record<string, unknown> = {};
        for (const [id, e] of slice(present, maxItems, offset)) out[id] = viewEntry(id, e, p.username);
        return sendJson(req, res, out, 200, answers[0]);
      }
      const q = new URLSearchParams(ctx.query);
      q.delete('max_items');
      q.delete('offset');
      const up = await callUpstream(iso.upstream, 'GET', withQuery(ctx, q), headers);
      if (up.status !== 200) return sendUpstream(req, res, up);
      const members = scanObject(up.body);
      if (!members) return sendJson(req, res, {}, 200, up);
      const mine = members.filter((m) => iso.ledger.owner(iso.promptIds.toClient(m.key)) === p.username);
      const out: Record<string, unknown> = {};
      for (const m of slice(mine, maxItems, offset)) {
        const id = iso.promptIds.toClient(m.key);
        out[id] = viewEntry(id, JSON.parse(up.body.toString('utf8', m.start, m.end)), p.username);
      }
      sendJson(req, res, out, 200, up);
    },
  };

  const one: Interceptor = {
    id: 'isolation-history-one',
    matches: (ctx, m) => (m === 'GET' || m === 'HEAD') && segs(ctx).length === 2 && segs(ctx)[0] === 'history',
    async handle(req, res, ctx) {
      req.resume();
      const p = ctx.principal!;
      const id = ctx.route.segments[1];
      const headers = headersFor(req, ctx);
      if (!seesAll(p, iso.separate) && iso.ledger.owner(id) !== p.username) {
        // Someone else's id gets exactly ComfyUI's answer for an id that does not exist.
        return sendUpstream(req, res, await callUpstream(iso.upstream, 'GET', sibling(ctx, missingId()) + cleanQuery(ctx), headers));
      }
      const upId = iso.promptIds.toUpstream(id);
      const up = await callUpstream(iso.upstream, 'GET', upId === id ? upstreamUrl(ctx) : sibling(ctx, upId) + cleanQuery(ctx), headers);
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
    matches: (ctx, m) => m === 'POST' && segs(ctx).join('/') === 'history',
    async handle(req, res, ctx) {
      const p = ctx.principal!;
      const raw = await readBody(req);
      const headers = headersFor(req, ctx);
      headers['content-type'] = 'application/json';
      if (seesAll(p, iso.separate)) return sendUpstream(req, res, await callUpstream(iso.upstream, 'POST', upstreamUrl(ctx), headers, upstreamIdsInBody(raw, iso.promptIds)));
      const body = parseJsonObject(raw);
      if ('delete' in body && !Array.isArray(body.delete)) throw new AppError(400, 'INVALID_BODY', '`delete` must be a list of prompt ids');
      const ids = new Set<string>();
      for (const id of (body.delete as unknown[] | undefined) ?? []) if (typeof id === 'string' && iso.ledger.owner(id) === p.username) ids.add(iso.promptIds.toUpstream(id));
      if (body.clear) for (const id of iso.ledger.idsOf(p.username)) ids.add(iso.promptIds.toUpstream(id));
      sendUpstream(req, res, await callUpstream(iso.upstream, 'POST', upstreamUrl(ctx), headers, JSON.stringify({ delete: [...ids] })));
    },
  };

  return [list, one, post];
}
