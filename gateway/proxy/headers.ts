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

/** Rewrites request headers in place for the upstream hop (DESIGN §6 header hygiene). */
export function sanitizeHeaders(
  req: IncomingMessage,
  ctx: RequestContext,
  opts: { cookieName: string; upstreamOrigin: string; upstreamHost?: string },
): IncomingHttpHeaders {
  const h = req.headers;
  const originalHost = h.host;
  for (const name of Object.keys(h)) {
    if (STRIP.has(name) || name.startsWith('x-forwarded-')) delete h[name];
  }
  const cookie = stripCookie(h.cookie, opts.cookieName);
  if (cookie) h.cookie = cookie;
  else delete h.cookie;
  if (ctx.principal?.comfyUser) h['comfy-user'] = ctx.principal.comfyUser;
  h['x-forwarded-for'] = ctx.clientIp;
  h['x-forwarded-proto'] = ctx.secure ? 'https' : 'http';
  if (originalHost) h['x-forwarded-host'] = originalHost;
  // The gateway has done the CSRF check; ComfyUI's own check compares Origin with Host, so make them agree.
  if (h.origin !== undefined) h.origin = opts.upstreamOrigin;
  h.host = opts.upstreamHost ?? new URL(opts.upstreamOrigin).host;
  return h;
}

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
 * /features): the sanitized client headers without hop-by-hop, conditional or length headers, uncompressed.
 */
export function headersForRead(
  req: IncomingMessage,
  ctx: RequestContext,
  opts: { cookieName: string; upstreamOrigin: string },
): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(sanitizeHeaders(req, ctx, opts))) {
    if (v === undefined || HOP_BY_HOP.has(k) || CONDITIONAL.has(k) || k === 'content-length' || k === 'accept-encoding') continue;
    out[k] = v;
  }
  out['accept-encoding'] = 'identity';
  return out;
}
