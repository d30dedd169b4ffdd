import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import zlib from 'node:zlib';
import type { Interceptor } from '../app';
import type { RequestContext } from '../http/context';
import { escapeHtml } from '../http/render';
import { HOP_BY_HOP, headersForRead, upstreamUrl } from './headers';
import { callUpstream, type Upstream } from './upstream';

/** The one script the gateway adds to ComfyUI's page (signed-in badge, logout, user pinning). */
export const INJECT_SRC = '/gateway/static/inject.js';

/** The script tag, carrying who is signed in so the page can pin its user before ComfyUI's app reads it. */
export function injectTag(ctx: RequestContext): string {
  const p = ctx.principal;
  const attrs = p ? ` data-user="${escapeHtml(p.username)}"${p.comfyUser ? ` data-comfy-user="${escapeHtml(p.comfyUser)}"` : ''}` : '';
  return `<script src="${INJECT_SRC}"${attrs}></script>`;
}

/** Inserts `tag` before `</head>`, else right after `<body…>`, else at the end; bytes outside are untouched. */
export function insertTag(html: Buffer, tag: string): Buffer {
  // latin1 maps bytes 1:1 to code units, so searching it never disturbs a UTF-8 (or any) encoding.
  const text = html.toString('latin1');
  const tagBytes = Buffer.from(tag, 'utf8');
  let at = text.search(/<\/head\s*>/i);
  if (at < 0) {
    const body = /<body\b[^>]*>/i.exec(text);
    at = body ? body.index + body[0].length : html.length;
  }
  return Buffer.concat([html.subarray(0, at), tagBytes, html.subarray(at)]);
}

/** Undoes a Content-Encoding; null when it is one we cannot decode or the body is corrupt. */
function decode(body: Buffer, encoding: string | undefined): Buffer | null {
  const enc = (encoding ?? '').trim().toLowerCase();
  try {
    if (!enc || enc === 'identity') return body;
    if (enc === 'gzip' || enc === 'x-gzip') return zlib.gunzipSync(body);
    if (enc === 'br') return zlib.brotliDecompressSync(body);
    if (enc === 'deflate') {
      try {
        return zlib.inflateSync(body);
      } catch {
        // Some servers send raw deflate without the zlib wrapper.
        return zlib.inflateRawSync(body);
      }
    }
  } catch {
    return null;
  }
  return null;
}

function copyHeaders(from: IncomingHttpHeaders, drop: string[]): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(from)) {
    if (v !== undefined && !HOP_BY_HOP.has(k) && !drop.includes(k)) out[k] = v;
  }
  return out;
}

/** Reads ComfyUI's index page and adds the gateway's script tag to it; everything else passes through. */
export function createInjectInterceptor(deps: { upstream: Upstream; cookieName: string }): Interceptor {
  return {
    id: 'inject-index',
    routes: [
      { path: '/', methods: ['GET'] },
      { path: '/index.html', methods: ['GET'] },
    ],
    async handle(req: IncomingMessage, res: ServerResponse, ctx: RequestContext) {
      req.resume();
      const up = await callUpstream(
        deps.upstream,
        'GET',
        upstreamUrl(ctx),
        headersForRead(req, ctx, { cookieName: deps.cookieName, upstreamOrigin: deps.upstream.origin }),
      );
      const isHtml = /^\s*text\/html\b/i.test(String(up.headers['content-type'] ?? ''));
      const plain = up.status === 200 && isHtml ? decode(up.body, up.headers['content-encoding'] as string | undefined) : null;
      if (!plain) {
        const h = copyHeaders(up.headers, ['content-length']);
        h['x-content-type-options'] = 'nosniff';
        const bodyless = up.status === 204 || up.status === 304;
        if (!bodyless) h['content-length'] = up.body.length;
        res.writeHead(up.status, h);
        res.end(bodyless ? undefined : up.body);
        return;
      }
      const page = insertTag(plain, injectTag(ctx));
      // The page now names the signed-in user: never let a cache hand it to someone else or revalidate it as upstream's.
      const h = copyHeaders(up.headers, ['content-length', 'content-encoding', 'etag', 'last-modified', 'cache-control', 'expires']);
      h['content-length'] = page.length;
      h['cache-control'] = 'no-store';
      h['x-content-type-options'] = 'nosniff';
      res.writeHead(200, h);
      res.end(page);
    },
  };
}
