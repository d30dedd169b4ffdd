import crypto from 'node:crypto';
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { TOKEN_QUERY_PARAMS } from '../../auth/chain';
import type { Principal } from '../../auth/principal';
import { AppError } from '../../errors';
import type { RequestContext } from '../../http/context';
import { headersForRead, stripTokenQuery, upstreamUrl } from '../headers';
import { callUpstream, type Upstream, type UpstreamResponse } from '../upstream';
import { parseJson } from './json';

/** The largest JSON body the isolation routes read (a prompt with its embedded workflow). */
export const MAX_JSON_BODY = 8 * 1024 * 1024;

/** Reads a request body up to `limit` bytes: 413 PAYLOAD_TOO_LARGE beyond it (checked on Content-Length first). */
export function readBody(req: IncomingMessage, limit = MAX_JSON_BODY): Promise<Buffer> {
  const tooLarge = () => new AppError(413, 'PAYLOAD_TOO_LARGE', `Request body too large (limit ${limit} bytes)`);
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) {
    req.resume();
    return Promise.reject(tooLarge());
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    req.on('data', (c: Buffer) => {
      if (done) return;
      size += c.length;
      if (size > limit) {
        done = true;
        chunks.length = 0;
        req.resume();
        reject(tooLarge());
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      if (!done) {
        done = true;
        resolve(Buffer.concat(chunks));
      }
    });
    req.on('error', (e) => {
      if (!done) {
        done = true;
        reject(e);
      }
    });
  });
}

/** True for plain JSON objects (not arrays, not null, not a number parseJson kept as text). */
export function isObj(v: unknown): v is Record<string, any> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/** Parses a JSON object body (see json.ts); 400 INVALID_BODY otherwise. `allowEmpty` treats an empty body as `{}`. */
export function parseJsonObject(buf: Buffer, allowEmpty = false): Record<string, any> {
  if (allowEmpty && !buf.toString('utf8').trim()) return {};
  const v = parseJson(buf);
  if (!isObj(v)) throw new AppError(400, 'INVALID_BODY', 'The body must be a JSON object');
  return v;
}

/** Headers for a request the gateway makes on the caller's behalf: the one header hygiene, minus what we re-frame. */
export function upstreamHeaders(req: IncomingMessage, ctx: RequestContext, cookieName: string, upstream: Upstream): OutgoingHttpHeaders {
  return headersForRead(req, ctx, { cookieName, upstreamOrigin: upstream.origin });
}

export { callUpstream };

const PASS = [
  'content-type',
  'content-disposition',
  'cache-control',
  'pragma',
  'expires',
  'last-modified',
  'etag',
  'allow',
  'content-language',
];

/** Sends an upstream answer as is (status, body, the harmless headers), with nosniff. */
export function sendUpstream(req: IncomingMessage, res: ServerResponse, up: UpstreamResponse, body: Buffer = up.body): void {
  const h: OutgoingHttpHeaders = {};
  for (const k of PASS) if (up.headers[k] !== undefined) h[k] = up.headers[k];
  h['x-content-type-options'] = 'nosniff';
  const bodyless = up.status === 204 || up.status === 304;
  if (!bodyless) h['content-length'] = body.length;
  res.writeHead(up.status, h);
  res.end(bodyless || req.method === 'HEAD' ? undefined : body);
}

/**
 * Sends a JSON value the way ComfyUI's json_response does. It is an answer made for one user: never cached by
 * anyone else, and no validator of the upstream's (unfiltered) body is passed on.
 */
export function sendJson(req: IncomingMessage, res: ServerResponse, value: unknown, status = 200, from?: UpstreamResponse): void {
  const body = Buffer.from(JSON.stringify(value), 'utf8');
  const h: OutgoingHttpHeaders = {};
  if (from) for (const k of ['content-language', 'allow']) if (from.headers[k] !== undefined) h[k] = from.headers[k];
  h['cache-control'] = 'no-store';
  h['content-type'] = 'application/json; charset=utf-8';
  h['content-length'] = body.length;
  h['x-content-type-options'] = 'nosniff';
  res.writeHead(status, h);
  res.end(req.method === 'HEAD' ? undefined : body);
}

/** Parses an upstream JSON answer; null when it is not a 200 with a JSON body. */
export function upstreamJson(up: UpstreamResponse): unknown {
  if (up.status !== 200) return null;
  try {
    return JSON.parse(up.body.toString('utf8'));
  } catch {
    return null;
  }
}

/** The caller sees every prompt and file (admins, or everyone when separate_users is off). */
export function seesAll(p: Principal, separate: boolean): boolean {
  return !separate || p.role === 'admin';
}

/** Lower-cased segments per route, computed once: a dozen interceptors ask for them on every request. */
const lowered = new WeakMap<RequestContext['route'], string[]>();

/** Lower-cased canonical segments, for matching interceptors (ComfyUI's routes are case-sensitive; we are stricter). */
export function segs(ctx: RequestContext): string[] {
  let l = lowered.get(ctx.route);
  if (!l) lowered.set(ctx.route, (l = ctx.route.segments.map((s) => s.toLowerCase())));
  return l;
}

/** The path of the same route twin with its last segment replaced (used to ask ComfyUI for something that does not exist). */
export function sibling(ctx: RequestContext, replaceLast: string): string {
  const s = ctx.route.forwardPath.replace(/\/+$/, '');
  return s.slice(0, s.lastIndexOf('/') + 1) + encodeURIComponent(replaceLast);
}

/** An id no prompt has: asking ComfyUI about it yields exactly its "missing" answer. */
export const missingId = () => crypto.randomUUID();

/** Path + query for the caller's request with a different query string (credential parameters never go upstream). */
export function withQuery(ctx: RequestContext, query: URLSearchParams): string {
  const clean = new URLSearchParams();
  for (const [k, v] of query) if (!TOKEN_QUERY_PARAMS.includes(k.toLowerCase())) clean.append(k, v);
  const q = clean.toString();
  return ctx.route.forwardPath + (q ? `?${q}` : '');
}

export { upstreamUrl };

/** The caller's query string for upstream (`?…`, or '' when empty), credential parameters removed. */
export function cleanQuery(ctx: RequestContext): string {
  const q = stripTokenQuery(ctx.route.query);
  return q ? `?${q}` : '';
}

/** A 200 from ComfyUI that is not the shape a filter expects: refused rather than passed on unfiltered. */
export const unexpectedAnswer = () => new AppError(502, 'UPSTREAM_UNAVAILABLE', 'ComfyUI gave an answer the gateway cannot filter');
