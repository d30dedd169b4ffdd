import http from 'node:http';
import https from 'node:https';
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { errors } from '../errors';
import { getContext } from '../http/context';
import { sendError } from '../http/render';
import type { Logger } from '../log';
import { FILE_ROUTES, HOP_BY_HOP, isActiveContent, sanitizeHeaders, upstreamUrl } from './headers';
import type { Upstream } from './upstream';

/** Request headers that describe the client's connection, not the request: never sent on (the body's framing is). */
const REQUEST_HOP = new Set([...HOP_BY_HOP].filter((h) => h !== 'transfer-encoding'));
/** What frames the body the client is sending: a Connection header cannot make the gateway forget it. */
const FRAMING = new Set(['transfer-encoding', 'content-length', 'host']);

/** How much of a response body may wait in the client socket's buffer before ComfyUI is asked to pause. */
const RELAY_BUFFER = 512 * 1024;

/**
 * Streams a response body to the client. Not `pipe()`: it pauses the source whenever a write passes the socket's
 * 16 KiB high-water mark, i.e. after every 64 KiB read, so a 2 MB /view paid a pause and a resume (two system calls
 * and a wake-up) per chunk; the profile showed that as the gap to a bare copy. Pausing only past RELAY_BUFFER keeps
 * backpressure (a slow client still stops the upstream read) without paying it per chunk.
 */
function relayBody(from: IncomingMessage, to: ServerResponse): void {
  from.on('data', (chunk: Buffer) => {
    if (!to.write(chunk) && to.writableLength > RELAY_BUFFER && !to.destroyed) {
      from.pause();
      to.once('drain', () => from.resume());
    }
  });
  from.once('end', () => to.end());
}

/**
 * Streams an admitted request to ComfyUI and its response back (bodies never buffered), over the upstream's
 * keep-alive agent. A plain node:http pipe: the per-request set-up of a general-purpose proxy library cost more
 * than everything else the gateway does for a small request.
 *
 * `headerTimeoutMs`: how long ComfyUI may take, once the request is fully sent, to send the response headers
 * (504 UPSTREAM_TIMEOUT). After the headers a body streams for as long as it needs (a long /view download).
 */
export function createHttpProxy(deps: { upstream: Upstream; cookieName: string; logger: Logger; headerTimeoutMs?: number }) {
  const target = new URL(deps.upstream.origin);
  const headerTimeoutMs = deps.headerTimeoutMs ?? 300_000;
  const hostHeader = { cookieName: deps.cookieName, upstreamOrigin: deps.upstream.origin, upstreamHost: target.host };

  function fail(req: IncomingMessage, res: ServerResponse, err: Error & { code?: string }, timedOut: boolean): void {
    deps.logger.warn({ err: { message: err.message, code: err.code }, path: req.url }, timedOut ? 'upstream timeout' : 'upstream error');
    // Headers already on their way: the only honest signal left is cutting the connection.
    if (res.headersSent) return void res.destroy();
    // The client may already be gone (aborted upload): nothing to answer then.
    if (res.destroyed || res.writableEnded) return;
    sendError(req, res, timedOut ? errors.upstreamTimeout(headerTimeoutMs / 1000) : errors.upstreamUnavailable());
  }

  return {
    /** Forwards one admitted request; context must already be set by the front door. */
    forward(req: IncomingMessage, res: ServerResponse): void {
      const ctx = getContext(req);
      // Names the client's Connection header lists are hop-by-hop too (RFC 9110 §7.6.1); dropped before the
      // gateway adds its own, so a client cannot list away X-Forwarded-For or comfy-user.
      const conn = req.headers.connection;
      if (conn && conn !== 'keep-alive' && conn !== 'close')
        for (const name of conn.toLowerCase().split(',')) if (!FRAMING.has(name.trim())) delete req.headers[name.trim()];
      // Usually ComfyUI itself; another worker when the request names what that worker made (gateway/queue).
      const other = ctx.upstream && ctx.upstream !== deps.upstream ? ctx.upstream : null;
      const to = other ? new URL(other.origin) : target;
      const h = sanitizeHeaders(
        req,
        ctx,
        other ? { cookieName: deps.cookieName, upstreamOrigin: other.origin, upstreamHost: to.host } : hostHeader,
      );
      const headers: OutgoingHttpHeaders = {};
      for (const k in h) if (!REQUEST_HOP.has(k)) headers[k] = h[k];
      // DELETE and OPTIONS without a body say so, or some servers wait for one (as http-proxy did).
      if (
        (req.method === 'DELETE' || req.method === 'OPTIONS') &&
        headers['content-length'] === undefined &&
        headers['transfer-encoding'] === undefined
      )
        headers['content-length'] = '0';
      const path = upstreamUrl(ctx);
      req.url = path;
      let timedOut = false;
      let timer: NodeJS.Timeout | null = null;
      const proxyReq = (to.protocol === 'https:' ? https : http).request({
        protocol: to.protocol,
        hostname: to.hostname,
        port: to.port,
        method: req.method,
        path,
        headers,
        agent: (other ?? deps.upstream).agent,
        setHost: false,
      });
      const clear = () => {
        if (timer) clearTimeout(timer);
        timer = null;
      };
      // The clock starts once ComfyUI has the whole request: a large upload is not ComfyUI being slow.
      proxyReq.once('finish', () => {
        if (proxyReq.destroyed) return;
        timer = setTimeout(() => {
          timedOut = true;
          proxyReq.destroy(Object.assign(new Error('no response headers in time'), { code: 'UPSTREAM_TIMEOUT' }));
        }, headerTimeoutMs);
      });
      proxyReq.on('error', (err) => {
        clear();
        fail(req, res, err, timedOut);
      });
      proxyReq.once('response', (proxyRes) => {
        clear();
        // Either side leaving mid-body ends the other: a vanished client must not hold an upstream socket forever,
        // and a client whose upstream died must not wait forever.
        res.once('close', () => {
          if (!res.writableFinished) proxyRes.destroy();
        });
        proxyRes.once('close', () => {
          if (!proxyRes.complete) res.destroy();
        });
        proxyRes.on('error', () => undefined);
        const out: OutgoingHttpHeaders = {};
        const ph = proxyRes.headers;
        for (const k in ph) if (!HOP_BY_HOP.has(k)) out[k] = ph[k];
        out['x-content-type-options'] = 'nosniff';
        if (FILE_ROUTES.has(ctx.route.segments[0]?.toLowerCase() ?? '') && isActiveContent(ph['content-type'])) {
          // A same-origin script would act as the signed-in user, so user files never render here.
          const name = /filename="?([^";]+)"?/i.exec(String(ph['content-disposition'] ?? ''))?.[1] ?? 'download';
          out['content-disposition'] = `attachment; filename="${name.replace(/[^\w.\- ()]/g, '_')}"`;
          out['content-security-policy'] = "sandbox; default-src 'none'";
        }
        res.writeHead(proxyRes.statusCode ?? 502, proxyRes.statusMessage, out);
        relayBody(proxyRes, res);
      });
      // The client leaving before the answer started: stop asking ComfyUI.
      res.once('close', () => {
        clear();
        if (!res.headersSent && !proxyReq.destroyed) proxyReq.destroy();
      });
      req.once('aborted', () => proxyReq.destroy());
      const bodyless = headers['content-length'] === undefined && headers['transfer-encoding'] === undefined;
      if (bodyless || headers['content-length'] === '0') proxyReq.end();
      else req.pipe(proxyReq);
    },
  };
}
