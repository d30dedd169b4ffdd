import http from 'node:http';
import https from 'node:https';
import { Pool } from 'undici';
import { errors } from '../errors';
import { HOP_BY_HOP } from './headers';

/** Connection failures that mean ComfyUI is not there (as opposed to one call going wrong). */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'EHOSTUNREACH', 'ENOTFOUND', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT']);

/** The caller's headers for one call, as strings, without hop-by-hop ones (they describe a connection, not a call). */
function requestHeaders(from: http.OutgoingHttpHeaders | undefined, host: string): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  if (from)
    for (const k of Object.keys(from)) {
      const v = from[k];
      const name = k.toLowerCase();
      if (v === undefined || HOP_BY_HOP.has(name) || name === 'host' || name === 'content-length') continue;
      out[name] = Array.isArray(v) ? v : String(v);
    }
  out.host = host;
  return out;
}

/** undici's response headers the way node:http gives them: repeated fields joined, only set-cookie a list. */
function nodeHeaders(h: Record<string, string | string[] | undefined>): http.IncomingHttpHeaders {
  const out: http.IncomingHttpHeaders = {};
  for (const k of Object.keys(h)) {
    const v = h[k];
    if (v === undefined) continue;
    if (k === 'set-cookie') out[k] = Array.isArray(v) ? v : [v];
    else out[k] = Array.isArray(v) ? v.join(', ') : v;
  }
  return out;
}

/** A buffered upstream response, for the routes the gateway must read (JSON rewrites, health). */
export interface UpstreamResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** Plain client for ComfyUI calls the gateway makes itself (health probes, rewrites, user creation). */
export function createUpstream(base: string, opts: { timeoutMs?: number; maxBody?: number; headerTimeoutMs?: number } = {}) {
  const url = new URL(base);
  const lib = url.protocol === 'https:' ? https : http;
  // No socket cap: a cap shared by everyone lets one user's slow transfers stall all others.
  const agent = new lib.Agent({ keepAlive: true });
  // The calls whose answers the gateway reads go through undici: a fifth less CPU per small call than node:http's
  // client. The streaming proxy and uploads keep `agent` (node:http pipes).
  const pool = new Pool(url.origin, { connections: null, pipelining: 1 });
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const maxBody = opts.maxBody ?? 256 * 1024 * 1024;
  let lastProbe = { at: 0, up: false };
  // Whether the last call reached ComfyUI; listeners hear when that changes (server discovery re-learns on reconnect).
  let reachable: boolean | null = null;
  const listeners: ((up: boolean) => void)[] = [];
  const reached = (up: boolean) => {
    if (reachable === up) return;
    reachable = up;
    for (const l of listeners) l(up);
  };

  function request(
    method: string,
    path: string,
    init: { headers?: http.OutgoingHttpHeaders; body?: Buffer | string; timeoutMs?: number } = {},
  ): Promise<UpstreamResponse> {
    return new Promise((resolve, reject) => {
      const headers = requestHeaders(init.headers, url.host);
      if (init.body !== undefined) headers['content-length'] = String(Buffer.byteLength(init.body));
      const limit = init.timeoutMs ?? timeoutMs;
      let status = 502;
      let got: http.IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      let size = 0;
      try {
        pool.dispatch(
          { method, path, headers, body: init.body, headersTimeout: limit, bodyTimeout: limit },
          {
            onRequestStart() {}, // marks the handler as undici's current (v7) kind
            onResponseStart(_c, code, h) {
              status = code;
              got = nodeHeaders(h);
              reached(true);
            },
            onResponseData(c, chunk) {
              size += chunk.length;
              if (size > maxBody) c.abort(new Error('upstream response too large'));
              else chunks.push(chunk);
            },
            onResponseEnd() {
              resolve({ status, headers: got, body: chunks.length === 1 ? chunks[0] : Buffer.concat(chunks) });
            },
            onResponseError(_c, err: NodeJS.ErrnoException) {
              if (err.code === 'UND_ERR_HEADERS_TIMEOUT' || err.code === 'UND_ERR_BODY_TIMEOUT')
                return reject(Object.assign(new Error('upstream timeout'), { code: 'UPSTREAM_TIMEOUT' }));
              if (UNREACHABLE.has(err.code ?? '')) reached(false);
              reject(err);
            },
          },
        );
      } catch (e) {
        reject(e); // a header undici refuses to send
      }
    });
  }

  return {
    origin: url.origin,
    agent,
    /** how long a call made for a client may wait for ComfyUI (`upstream_timeout_s`) */
    headerTimeoutMs: opts.headerTimeoutMs ?? 300_000,
    request,
    /** GET + JSON parse; throws on non-2xx or bad JSON. */
    async json<T = unknown>(method: string, path: string, init: Parameters<typeof request>[2] = {}): Promise<T> {
      const r = await request(method, path, init);
      if (r.status < 200 || r.status >= 300)
        throw Object.assign(new Error(`upstream ${method} ${path} → ${r.status}`), { status: r.status });
      return JSON.parse(r.body.toString('utf8')) as T;
    },
    /** Whether ComfyUI answers, cached for a second so /health cannot be used to hammer it. */
    async isUp(): Promise<boolean> {
      const now = Date.now();
      if (now - lastProbe.at < 1000) return lastProbe.up;
      let up = false;
      try {
        const r = await request('GET', '/prompt', { timeoutMs: 1500 });
        up = r.status < 500;
      } catch {
        up = false;
      }
      lastProbe = { at: Date.now(), up };
      return up;
    },
    /** `listener(up)` whenever ComfyUI becomes reachable again (true) or stops answering (false). */
    onReachability(listener: (up: boolean) => void): void {
      listeners.push(listener);
    },
    close(): void {
      agent.destroy();
      void pool.destroy().catch(() => undefined);
    },
  };
}

/** The upstream client's interface. */
export type Upstream = ReturnType<typeof createUpstream>;

/** A call the gateway makes for a client: a network failure becomes 502 UPSTREAM_UNAVAILABLE, no answer in time 504 UPSTREAM_TIMEOUT. */
export async function callUpstream(
  upstream: Upstream,
  method: string,
  path: string,
  headers: http.OutgoingHttpHeaders,
  body?: Buffer | string,
): Promise<UpstreamResponse> {
  let h = headers;
  if (body === undefined && h['content-type'] !== undefined) {
    h = { ...headers };
    delete h['content-type'];
  }
  try {
    return await upstream.request(method, path, { headers: h, body, timeoutMs: upstream.headerTimeoutMs });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'UPSTREAM_TIMEOUT') throw errors.upstreamTimeout(upstream.headerTimeoutMs / 1000);
    throw errors.upstreamUnavailable();
  }
}
