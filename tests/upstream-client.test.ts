/**
 * gateway/proxy/upstream.ts: the client for the calls whose answers the gateway reads (undici underneath). Against a
 * real node:http server on a real port: what goes out (Host, no hop-by-hop, true lengths), what comes back (headers
 * shaped as node:http gives them), and the failures (too large, no answer in time, nobody listening).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createUpstream } from '../gateway/proxy/upstream';

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

async function server(answer: (req: http.IncomingMessage, res: http.ServerResponse) => void) {
  const seen: Seen[] = [];
  const s = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks).toString() });
      answer(req, res);
    });
  });
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
  return {
    url,
    seen,
    close: () =>
      new Promise<void>((r) => {
        s.closeAllConnections();
        s.close(() => r());
      }),
  };
}

test('sends the call with the upstream Host, without hop-by-hop headers, with the true length; answers like node:http', async () => {
  const up = await server((_req, res) => {
    res.setHeader('x-dup', ['a', 'b']);
    res.setHeader('set-cookie', ['one=1', 'two=2']);
    res.setHeader('content-type', 'application/json');
    res.end('{"ok":true}');
  });
  const client = createUpstream(up.url);
  try {
    const r = await client.request('POST', '/prompt?x=1', {
      headers: {
        host: 'evil.example',
        connection: 'x-secret',
        'keep-alive': 'timeout=99',
        'transfer-encoding': 'chunked',
        upgrade: 'websocket',
        te: 'trailers',
        trailer: 'x-t',
        'content-length': 999,
        'X-Custom': 'kept',
        'comfy-user': 'alice',
        'content-type': 'application/json',
      },
      body: '{"a":"é"}',
    });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body.toString())).toEqual({ ok: true });
    expect(r.headers['x-dup']).toBe('a, b');
    expect(r.headers['set-cookie']).toEqual(['one=1', 'two=2']);
    expect(r.headers['content-type']).toBe('application/json');
    const got = up.seen[0];
    expect(got.method).toBe('POST');
    expect(got.url).toBe('/prompt?x=1');
    expect(got.body).toBe('{"a":"é"}');
    expect(got.headers.host).toBe(new URL(up.url).host);
    expect(got.headers['content-length']).toBe(String(Buffer.byteLength('{"a":"é"}')));
    expect(got.headers['x-custom']).toBe('kept');
    expect(got.headers['comfy-user']).toBe('alice');
    for (const h of ['keep-alive', 'transfer-encoding', 'upgrade', 'te', 'trailer', 'x-secret']) expect(got.headers[h]).toBeUndefined();
    expect(got.headers.connection ?? 'keep-alive').toBe('keep-alive'); // the client's own, never the caller's
  } finally {
    client.close();
    await up.close();
  }
});

test('an answer larger than maxBody is refused, one that never comes times out, and a closed port reports unreachable', async () => {
  const up = await server((req, res) => {
    if (req.url === '/big') res.end(Buffer.alloc(64 * 1024, 1));
    // '/never': no answer at all
  });
  const client = createUpstream(up.url, { maxBody: 1024, timeoutMs: 300 });
  const reach: boolean[] = [];
  client.onReachability((u) => reach.push(u));
  try {
    await expect(client.request('GET', '/big')).rejects.toThrow(/too large/);
    const t0 = Date.now();
    await expect(client.request('GET', '/never')).rejects.toMatchObject({ code: 'UPSTREAM_TIMEOUT' });
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(reach).toEqual([true]);
  } finally {
    client.close();
    await up.close();
  }
  const gone = createUpstream(up.url, { timeoutMs: 2000 });
  const seen: boolean[] = [];
  gone.onReachability((u) => seen.push(u));
  try {
    await expect(gone.request('GET', '/prompt')).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect(seen).toEqual([false]);
    expect(await gone.isUp()).toBe(false);
  } finally {
    gone.close();
  }
});

test('a header value undici cannot send is a rejected call, not a crash', async () => {
  const up = await server((_req, res) => res.end('ok'));
  const client = createUpstream(up.url);
  try {
    await expect(client.request('GET', '/', { headers: { 'x-bad': 'a\r\nb' } })).rejects.toThrow();
    expect(up.seen).toHaveLength(0);
    expect((await client.request('GET', '/')).body.toString()).toBe('ok');
  } finally {
    client.close();
    await up.close();
  }
});
