import http from 'node:http';
import type { AddressInfo } from 'node:net';
import zlib from 'node:zlib';
import type { RequestContext } from '../gateway/http/context';
import { injectTag, insertTag } from '../gateway/proxy/inject';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { useStack } from './helpers/stack';

const TAG = '<script src="/gateway/static/inject.js"';

interface Raw {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** A GET that leaves the bytes alone (no decompression), so Content-Length and encodings can be checked. */
function rawGet(base: string, path: string, headers: Record<string, string> = {}): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const req = http.get(base + path, { headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
}

const count = (s: string, needle: string) => s.split(needle).length - 1;

describe('index.html through the gateway (fake ComfyUI)', () => {
  const stack = useStack();
  beforeEach(() => stack.fake.clearRequests());

  test.each(['/', '/index.html', '//index.html'])(
    'GET %s carries exactly one inject script, before </head>, with a correct Content-Length',
    async (p) => {
      const res = await rawGet(stack.gw.url, p, { 'X-API-Key': TEST_KEY, 'Accept-Encoding': 'gzip, deflate, br', 'If-None-Match': '"x"' });
      expect(res.status).toBe(200);
      const html = res.body.toString('utf8');
      expect(count(html, TAG)).toBe(1);
      expect(count(html, '<script')).toBe(1);
      expect(html.indexOf(TAG)).toBeLessThan(html.indexOf('</head>'));
      expect(html.indexOf('<title>ComfyUI</title>')).toBeLessThan(html.indexOf(TAG));
      expect(html).toContain('<div id="app">ComfyUI fake</div>');
      expect(Number(res.headers['content-length'])).toBe(res.body.length);
      expect(res.headers['content-encoding']).toBeUndefined();
      expect(res.headers['content-type']).toMatch(/^text\/html/);
      expect(res.headers['x-content-type-options']).toBe('nosniff');
      expect(res.headers['cache-control']).toBe('no-store');
      expect(res.headers.etag).toBeUndefined();
      // The tag names the signed-in principal so the page can pin ComfyUI's user choice before the app starts.
      expect(html).toContain(`${TAG} data-user="api-key"`);
      // ComfyUI saw one plain request without our credentials, asked for an uncompressed, unconditional page.
      const seen = stack.fake.requests.filter((r) => r.rawPath === '/' || r.rawPath === '/index.html');
      expect(seen).toHaveLength(1);
      expect(seen[0].method).toBe('GET');
      expect(seen[0].headers['accept-encoding']).toBe('identity');
      expect(seen[0].headers['x-api-key']).toBeUndefined();
      expect(seen[0].headers['if-none-match']).toBeUndefined();
    },
  );

  test('unauthenticated: a browser is sent to /login, a script gets 401, ComfyUI sees nothing', async () => {
    const nav = await rawGet(stack.gw.url, '/', { Accept: 'text/html' });
    expect(nav.status).toBe(302);
    expect(nav.headers.location).toBe('/login?next=%2F');
    const api = await rawGet(stack.gw.url, '/index.html', { Accept: 'application/json' });
    expect(api.status).toBe(401);
    expect(JSON.parse(api.body.toString()).error.code).toBe('AUTH_REQUIRED');
    expect(stack.fake.requests.filter((r) => r.rawPath === '/' || r.rawPath === '/index.html')).toHaveLength(0);
  });

  test('other ComfyUI files are streamed untouched (no injection)', async () => {
    const res = await rawGet(stack.gw.url, '/scripts/app.js', { 'X-API-Key': TEST_KEY });
    expect(res.status).toBe(200);
    expect(res.body.toString()).not.toContain('inject.js');
  });
});

describe('index.html from an upstream that misbehaves', () => {
  type Reply = { status?: number; headers?: Record<string, string>; body: Buffer | string };
  // The gateway may probe its upstream at start-up (health, folder paths): answer those plainly too.
  let reply: Reply = { status: 404, headers: { 'Content-Type': 'text/plain' }, body: 'not here' };
  let seen: http.IncomingHttpHeaders[] = [];
  let upstream: http.Server;
  let gw: TestGateway;

  beforeAll(async () => {
    upstream = http.createServer((req, res) => {
      req.resume();
      if (req.url === '/users') {
        // ComfyUI without --multi-user: the gateway's user lookup learns there is one shared user.
        res.writeHead(200, { 'Content-Type': 'application/json' });
        return void res.end('{"storage": "server", "migrated": true}');
      }
      if (req.url === '/' || req.url === '/index.html') seen.push(req.headers);
      const body = typeof reply.body === 'string' ? Buffer.from(reply.body) : reply.body;
      // No Content-Length: chunked, as aiohttp does for compressed responses.
      res.writeHead(reply.status ?? 200, reply.headers ?? {});
      res.end(body);
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
    gw = await startGateway({ upstream: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`, api_key: TEST_KEY });
  });
  afterAll(async () => {
    await gw.close();
    await new Promise((r) => upstream.close(r));
  });
  beforeEach(() => {
    seen = [];
  });
  const get = (p = '/') => rawGet(gw.url, p, { 'X-API-Key': TEST_KEY, 'Accept-Encoding': 'gzip, br' });

  const page = '<!doctype html><HTML><HEAD><meta charset="utf-8"><title>Comfy ✓ ü</title></HEAD><body>日本語 body</body></HTML>';

  test.each([
    ['gzip', (b: Buffer) => zlib.gzipSync(b)],
    ['deflate', (b: Buffer) => zlib.deflateSync(b)],
    ['br', (b: Buffer) => zlib.brotliCompressSync(b)],
  ])('a %s-compressed page is decoded, injected and sent plain with a correct length', async (enc, compress) => {
    reply = {
      headers: { 'Content-Type': 'text/html; charset=utf-8', 'Content-Encoding': enc, ETag: '"abc"', 'X-Upstream': 'kept' },
      body: compress(Buffer.from(page)),
    };
    const res = await get();
    expect(res.status).toBe(200);
    expect(seen[0]['accept-encoding']).toBe('identity');
    expect(res.headers['content-encoding']).toBeUndefined();
    expect(res.headers['transfer-encoding']).toBeUndefined();
    expect(Number(res.headers['content-length'])).toBe(res.body.length);
    expect(res.headers.etag).toBeUndefined();
    expect(res.headers['x-upstream']).toBe('kept');
    const html = res.body.toString('utf8');
    expect(count(html, TAG)).toBe(1);
    // Inserted right before the (upper-case) </HEAD>; multi-byte characters survive byte for byte.
    expect(html).toMatch(/<title>Comfy ✓ ü<\/title><script src="\/gateway\/static\/inject\.js"[^>]*><\/script><\/HEAD>/);
    expect(html).toContain('日本語 body');
    expect(res.body.length).toBe(Buffer.byteLength(page) + Buffer.byteLength(html.match(/<script[^>]*><\/script>/)![0]));
  });

  test('no </head>: the tag goes right after <body>; no <body> either: at the end', async () => {
    reply = { headers: { 'Content-Type': 'text/html' }, body: '<p>hi</p><body class="x"><div>app</div></body>' };
    let html = (await get()).body.toString();
    expect(html).toMatch(/^<p>hi<\/p><body class="x"><script src="\/gateway\/static\/inject\.js"[^>]*><\/script><div>app<\/div><\/body>$/);
    reply = { headers: { 'Content-Type': 'text/html' }, body: '<div>bare</div>' };
    html = (await get('/index.html')).body.toString();
    expect(html).toMatch(/^<div>bare<\/div><script src="\/gateway\/static\/inject\.js"[^>]*><\/script>$/);
  });

  test('non-HTML at / passes through byte for byte with its own type and encoding', async () => {
    const json = zlib.gzipSync(Buffer.from('{"not":"html","head":"</head>"}'));
    reply = { headers: { 'Content-Type': 'application/json', 'Content-Encoding': 'gzip' }, body: json };
    const res = await get();
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toBe('application/json');
    expect(res.headers['content-encoding']).toBe('gzip');
    expect(Number(res.headers['content-length'])).toBe(json.length);
    expect(res.body.equals(json)).toBe(true);
    expect(res.headers['x-content-type-options']).toBe('nosniff');
  });

  test('a non-200 HTML page passes through unchanged', async () => {
    const body = '<html><head></head><body>404: Not Found</body></html>';
    reply = { status: 404, headers: { 'Content-Type': 'text/html' }, body };
    const res = await get();
    expect(res.status).toBe(404);
    expect(res.body.toString()).toBe(body);
    expect(Number(res.headers['content-length'])).toBe(Buffer.byteLength(body));
  });

  test('an HTML page with an encoding we cannot decode, or a corrupt one, is passed through rather than mangled', async () => {
    const odd = Buffer.from('not really zstd');
    reply = { headers: { 'Content-Type': 'text/html', 'Content-Encoding': 'zstd' }, body: odd };
    let res = await get();
    expect(res.headers['content-encoding']).toBe('zstd');
    expect(res.body.equals(odd)).toBe(true);
    const corrupt = Buffer.from([0x1f, 0x8b, 0x08, 0x00, 1, 2, 3]);
    reply = { headers: { 'Content-Type': 'text/html', 'Content-Encoding': 'gzip' }, body: corrupt };
    res = await get();
    expect(res.body.equals(corrupt)).toBe(true);
    expect(Number(res.headers['content-length'])).toBe(corrupt.length);
  });

  test('POST / is not intercepted (only GET of the page)', async () => {
    reply = { headers: { 'Content-Type': 'text/html' }, body: '<html><head></head></html>' };
    const res = await new Promise<Raw>((resolve, reject) => {
      const req = http.request(
        gw.url + '/',
        { method: 'POST', headers: { 'X-API-Key': TEST_KEY, 'Content-Length': '0' }, agent: false },
        (r) => {
          const chunks: Buffer[] = [];
          r.on('data', (c: Buffer) => chunks.push(c));
          r.on('end', () => resolve({ status: r.statusCode ?? 0, headers: r.headers, body: Buffer.concat(chunks) }));
        },
      );
      req.on('error', reject);
      req.end();
    });
    expect(res.body.toString()).toBe('<html><head></head></html>');
  });

  test('ComfyUI down → 502 UPSTREAM_UNAVAILABLE at once', async () => {
    const down = await startGateway({ upstream: 'http://127.0.0.1:9', api_key: TEST_KEY });
    try {
      const res = await rawGet(down.url, '/', { 'X-API-Key': TEST_KEY, Accept: 'application/json' });
      expect(res.status).toBe(502);
      expect(JSON.parse(res.body.toString()).error.code).toBe('UPSTREAM_UNAVAILABLE');
    } finally {
      await down.close();
    }
  });
});

describe('the injected tag', () => {
  const ctxWith = (principal: RequestContext['principal']) => ({ principal }) as RequestContext;

  test('names the signed-in user and their ComfyUI user id, HTML-escaped', () => {
    const tag = injectTag(ctxWith({ username: 'alice', role: 'user', permissions: [], source: 'cookie', comfyUser: 'alice_"><script>x' }));
    expect(tag).toBe(
      '<script src="/gateway/static/inject.js" data-user="alice" data-comfy-user="alice_&#34;&#62;&#60;script&#62;x"></script>',
    );
    expect(injectTag(ctxWith(null))).toBe('<script src="/gateway/static/inject.js"></script>');
  });

  test('insertion keeps every other byte, including ones that are not valid UTF-8', () => {
    const html = Buffer.concat([Buffer.from('<head>'), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from('</head >x')]);
    const out = insertTag(html, '<s></s>');
    expect(out.equals(Buffer.concat([Buffer.from('<head>'), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from('<s></s></head >x')]))).toBe(true);
  });
});
