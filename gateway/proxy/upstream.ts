import http from 'node:http';
import https from 'node:https';
import { errors } from '../errors';

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
      const headers: http.OutgoingHttpHeaders = { ...init.headers, host: url.host };
      if (init.body !== undefined) headers['content-length'] = Buffer.byteLength(init.body);
      const req = lib.request(
        {
          protocol: url.protocol,
          hostname: url.hostname,
          port: url.port,
          method,
          path,
          headers,
          agent,
          timeout: init.timeoutMs ?? timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (c: Buffer) => {
            size += c.length;
            if (size > maxBody) {
              res.destroy(new Error('upstream response too large'));
              return;
            }
            chunks.push(c);
          });
          reached(true);
          res.on('end', () => resolve({ status: res.statusCode ?? 502, headers: res.headers, body: Buffer.concat(chunks) }));
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(Object.assign(new Error('upstream timeout'), { code: 'UPSTREAM_TIMEOUT' })));
      req.on('error', (e: NodeJS.ErrnoException) => {
        if (e.code === 'ECONNREFUSED' || e.code === 'ECONNRESET' || e.code === 'EHOSTUNREACH' || e.code === 'ENOTFOUND') reached(false);
        reject(e);
      });
      req.end(init.body);
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
