import type { Interceptor } from '../../app';
import type { RequestContext } from '../../http/context';
import type { IsolationContext } from './context';
import { missingId, seesAll, sendJson } from './http';
import { isFileType, isUnderUser, normaliseRef, parseAnnotated } from './paths';
import { upstreamOfFile } from './held';

/** Routes that serve a file named by filename/subfolder/type (ComfyUI's /view and VideoHelperSuite's twins). */
const FILE_VIEWS = new Set(['view', 'vhs/viewvideo', 'viewvideo', 'vhs/viewaudio', 'vhs/queryvideo']);
/** VideoHelperSuite's directory listing of any server path (its path widgets' autocompletion). */
const PATH_LISTINGS = new Set(['vhs/getpath', 'getpath']);
const NAMING = ['filename', 'subfolder', 'type'];

/**
 * /view serves a user their own inputs and outputs (`<user>/…`) and the files their own prompts produced (temp
 * previews included). The decision is made on the same normalised reference that is then sent upstream, so
 * ComfyUI resolves exactly the file that was checked; the response streams through the normal proxy (header
 * policy for active content included). Anything else gets ComfyUI's own answer for a file that does not exist.
 */
export function viewInterceptor(iso: IsolationContext): Interceptor {
  function answerMissing(ctx: RequestContext, user: string, forward: () => void) {
    const q = new URLSearchParams({ filename: `${missingId()}.png`, subfolder: user, type: 'output' });
    ctx.route = { ...ctx.route, query: q.toString() };
    forward();
  }

  return {
    id: 'isolation-view',
    routes: [...FILE_VIEWS].map((p) => ({ path: `/${p}`, methods: ['GET', 'HEAD'] })),
    async handle(_req, _res, ctx, forward) {
      const p = ctx.principal!;
      const q = ctx.query;
      if (seesAll(p, iso.separate)) {
        // Admins read anything, from the worker that made it.
        const name = q.get('filename');
        const t = q.get('type') ?? 'output';
        if (name !== null && isFileType(t))
          ctx.upstream = upstreamOfFile(iso, { type: t, subfolder: q.get('subfolder') ?? '', filename: name });
        return forward();
      }
      const filename = q.get('filename');
      if (filename === null) return answerMissing(ctx, p.username, forward);
      const ann = parseAnnotated(filename);
      const type = ann.type ?? q.get('type') ?? 'output';
      if (!isFileType(type)) return answerMissing(ctx, p.username, forward);
      let checked;
      try {
        checked = normaliseRef(type, q.get('subfolder') ?? '', ann.name);
      } catch {
        return answerMissing(ctx, p.username, forward);
      }
      const allowed = isUnderUser(p.username, checked.segs) || iso.ledger.ownsFile(p.username, checked.ref);
      if (!allowed) return answerMissing(ctx, p.username, forward);
      const out = new URLSearchParams();
      for (const [k, v] of q) if (!NAMING.includes(k)) out.append(k, v);
      out.set('filename', checked.ref.filename);
      out.set('subfolder', checked.ref.subfolder);
      out.set('type', type);
      ctx.route = { ...ctx.route, query: out.toString() };
      // Several workers: the file is on the one whose prompt made it.
      ctx.upstream = upstreamOfFile(iso, checked.ref);
      forward();
    },
  };
}

/** VideoHelperSuite's /getpath lists any directory on the server: a user gets its answer for one it will not list. */
export function pathListingInterceptor(iso: IsolationContext): Interceptor {
  return {
    id: 'isolation-path-listing',
    routes: [...PATH_LISTINGS].map((p) => ({ path: `/${p}`, methods: ['GET', 'HEAD'] })),
    async handle(req, res, ctx, forward) {
      if (seesAll(ctx.principal!, iso.separate)) return forward();
      req.resume();
      sendJson(req, res, []);
    },
  };
}
