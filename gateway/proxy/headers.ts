import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import { queryParamName, TOKEN_QUERY_PARAMS } from '../auth/chain';
import type { RequestContext } from '../http/context';

/** Headers no client may pass to ComfyUI: our credentials, identity and forwarding claims. */
const STRIP = new Set([
  'authorization',
  'x-api-key',
  'comfy-user',
  'sec-fetch-site',
  'forwarded',
  'x-real-ip',
  'cf-connecting-ip',
  'true-client-ip',
  'x-client-ip',
  'cf-access-jwt-assertion',
  'cf-access-authenticated-user-email',
]);

/** Removes the gateway cookie from a Cookie header, keeping the rest. */
export function stripCookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  const kept = header
    .split(';')
    .map((c) => c.trim())
    .filter((c) => c && c.split('=')[0].trim() !== name);
  return kept.length ? kept.join('; ') : undefined;
}

/** Drops credential query parameters from a raw query string without re-encoding the rest. */
export function stripTokenQuery(query: string): string {
  if (!query) return '';
  return query
    .split('&')
    .filter((part) => {
      // A name that cannot be decoded is dropped too: it cannot be shown not to be a credential.
      const name = queryParamName(part);
      return name !== null && !TOKEN_QUERY_PARAMS.includes(name.toLowerCase());
    })
    .join('&');
}

/** The path+query sent upstream: the canonical route decided on, minus credential parameters. */
export function upstreamUrl(ctx: RequestContext): string {
  const q = stripTokenQuery(ctx.route.query);
  return ctx.route.forwardPath + (q ? `?${q}` : '');
}

type HopOpts = { cookieName: string; upstreamOrigin: string; upstreamHost?: string };

/** A client header that never reaches ComfyUI: our credentials, identity and forwarding claims. */
const dropped = (name: string): boolean => STRIP.has(name) || name.startsWith('x-forwarded-');

/**
 * What the gateway itself sets for the upstream hop, from the client's headers `src` into `out` (which may be the
 * same object): the Cookie header without our cookie, the ComfyUI user, forwarding headers, Origin and Host.
 */
function setHopHeaders(out: IncomingHttpHeaders | OutgoingHttpHeaders, src: IncomingHttpHeaders, ctx: RequestContext, opts: HopOpts): void {
  const originalHost = src.host;
  const hadOrigin = src.origin !== undefined;
  const cookie = stripCookie(src.cookie, opts.cookieName);
  if (cookie) out.cookie = cookie;
  else delete out.cookie;
  if (ctx.principal?.comfyUser) out['comfy-user'] = ctx.principal.comfyUser;
  out['x-forwarded-for'] = ctx.clientIp;
  out['x-forwarded-proto'] = ctx.secure ? 'https' : 'http';
  if (originalHost) out['x-forwarded-host'] = originalHost;
  // The gateway has done the CSRF check; ComfyUI's own check compares Origin with Host, so make them agree.
  if (hadOrigin) out.origin = opts.upstreamOrigin;
  out.host = opts.upstreamHost ?? hostOf(opts.upstreamOrigin);
}

/** Rewrites request headers in place for the upstream hop (DESIGN §6 header hygiene). */
export function sanitizeHeaders(req: IncomingMessage, ctx: RequestContext, opts: HopOpts): IncomingHttpHeaders {
  const h = req.headers;
  for (const name of Object.keys(h)) if (dropped(name)) delete h[name];
  setHopHeaders(h, h, ctx, opts);
  return h;
}

// Parsing the origin's URL on every request cost more than the rest of the header rewrite.
const hosts = new Map<string, string>();
const hostOf = (origin: string): string => {
  let host = hosts.get(origin);
  if (host === undefined) hosts.set(origin, (host = new URL(origin).host));
  return host;
};

/** Content types that would run script in the gateway's origin if rendered. */
const ACTIVE =
  /^(text\/html|application\/xhtml|image\/svg|text\/xml|application\/xml|[a-z]+\/[a-z.+-]*xml|text\/javascript|application\/javascript|application\/ecmascript|text\/ecmascript|application\/x-javascript|multipart\/x-mixed-replace)/i;

/** True when a response body could execute if rendered inline. */
export function isActiveContent(contentType: string | undefined): boolean {
  return !contentType || ACTIVE.test(contentType.trim());
}

/** Routes that serve user-supplied files; their active content never renders in our origin. */
export const FILE_ROUTES = new Set(['view', 'userdata', 'view_metadata', 'vhs']);

/** Hop-by-hop headers: they describe one connection and never travel to the next hop (either direction). */
export const HOP_BY_HOP: ReadonlySet<string> = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'transfer-encoding',
  'upgrade',
  'te',
  'trailer',
  'expect',
]);

const CONDITIONAL = new Set(['if-none-match', 'if-modified-since', 'if-match', 'if-unmodified-since', 'if-range', 'range']);

/**
 * Headers for an upstream call whose answer the gateway reads and rewrites (isolation, index.html injection,
 * /features): the sanitized client headers without hop-by-hop, conditional or length headers, uncompressed. The
 * client's headers are left as they came (a copy is made, not an in-place rewrite).
 */
export function headersForRead(
  req: IncomingMessage,
  ctx: RequestContext,
  opts: { cookieName: string; upstreamOrigin: string },
): OutgoingHttpHeaders {
  const src = req.headers;
  const out: OutgoingHttpHeaders = {};
  for (const k of Object.keys(src)) {
    if (dropped(k) || HOP_BY_HOP.has(k) || CONDITIONAL.has(k) || k === 'content-length' || k === 'accept-encoding') continue;
    const v = src[k];
    if (v !== undefined) out[k] = v;
  }
  setHopHeaders(out, src, ctx, opts);
  out['accept-encoding'] = 'identity';
  return out;
}
