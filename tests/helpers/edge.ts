import http from 'node:http';
import https from 'node:https';

/** A URL's hostname as a socket wants it: `[::1]` → `::1`. */
const bare = (hostname: string) => hostname.replace(/^\[(.*)\]$/, '$1');

/** A raw response: status, lower-cased headers, body text and (when JSON) the parsed body. */
export interface Hit {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  body: any;
}

/**
 * One HTTP(S) request with full control over what a test needs to forge: any headers (X-Forwarded-For, Host…), and
 * the local address the socket comes FROM (Linux routes all of 127/8 to lo, so 127.0.0.2 is a second "machine").
 */
export function hit(
  base: string,
  path: string,
  opts: { method?: string; headers?: Record<string, string>; body?: unknown; from?: string } = {},
): Promise<Hit> {
  const u = new URL(base);
  const body = opts.body === undefined ? undefined : typeof opts.body === 'string' ? opts.body : JSON.stringify(opts.body);
  const headers: Record<string, string> = { accept: 'application/json', ...(opts.headers ?? {}) };
  if (body !== undefined && !Object.keys(headers).some((h) => h.toLowerCase() === 'content-type'))
    headers['content-type'] = 'application/json';
  const mod = u.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(
      {
        host: bare(u.hostname),
        port: u.port,
        path,
        method: opts.method ?? 'GET',
        headers,
        localAddress: opts.from,
        agent: false,
        rejectUnauthorized: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = undefined;
          try {
            parsed = JSON.parse(text);
          } catch {
            parsed = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, body: parsed });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** Sends a WebSocket upgrade and returns the status line's code (101 = accepted); the socket is closed at once. */
export function upgradeStatus(base: string, path: string, opts: { headers?: Record<string, string>; from?: string } = {}): Promise<number> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: bare(u.hostname),
      port: u.port,
      path,
      localAddress: opts.from,
      agent: false,
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': Buffer.from('0123456789abcdef').toString('base64'),
        ...(opts.headers ?? {}),
      },
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve(res.statusCode ?? 0);
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    req.end();
  });
}

/** Polls until `fn` returns true (or throws after `timeoutMs`); returns the elapsed milliseconds. */
export async function waitFor(fn: () => boolean | Promise<boolean>, timeoutMs = 3000, stepMs = 50): Promise<number> {
  const start = Date.now();
  for (;;) {
    if (await fn()) return Date.now() - start;
    if (Date.now() - start > timeoutMs) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

/** How many requests the fake ComfyUI received whose path contains `marker`. */
export function reached(fake: { requests: { rawPath: string }[] }, marker: string): number {
  return fake.requests.filter((r) => r.rawPath.includes(marker)).length;
}
