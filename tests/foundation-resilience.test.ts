import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import request from 'supertest';
import { spawnGateway } from './helpers/child';
import { startFakeComfy } from './helpers/fakeComfy';
import { TEST_KEY } from './helpers/gateway';
import { useStack } from './helpers/stack';
import { openSocket } from './helpers/ws';
import { clientTraffic } from './helpers/traffic';
import { rawExchange } from './helpers/rawSocket';

const raw = (port: number, data: string | Buffer, waitMs = 1500) => rawExchange(port, data, waitMs);

describe('ComfyUI down and back', () => {
  const stack = useStack();

  test('502 UPSTREAM_UNAVAILABLE at once (JSON and HTML), WS refused cleanly, /health degraded, then recovery', async () => {
    await request(stack.gw.url).get('/api/object_info').set('X-API-Key', TEST_KEY).expect(200);
    await stack.fake.stop();
    const t0 = Date.now();
    const res = await request(stack.gw.url).get('/api/object_info').set('X-API-Key', TEST_KEY);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(res.status).toBe(502);
    expect(res.body.error.code).toBe('UPSTREAM_UNAVAILABLE');
    const page = await request(stack.gw.url).get('/').set('X-API-Key', TEST_KEY).set('Accept', 'text/html');
    expect(page.status).toBe(502);
    expect(page.headers['content-type']).toMatch(/text\/html/);
    expect(page.text).toMatch(/ComfyUI is not reachable/);
    await expect(openSocket(stack.gw.url.replace('http', 'ws') + '/ws?clientId=z', { 'X-API-Key': TEST_KEY })).rejects.toMatchObject({
      status: 502,
    });
    await new Promise((r) => setTimeout(r, 1100)); // health probe cache
    expect((await request(stack.gw.url).get('/health')).body).toEqual({ status: 'degraded', upstream: 'down' });
    // the gateway's own pages keep working
    expect((await request(stack.gw.url).get('/gateway/static/gateway.css')).status).toBe(200);

    await stack.fake.start();
    await request(stack.gw.url).get('/api/object_info').set('X-API-Key', TEST_KEY).expect(200);
    const s = await openSocket(stack.gw.url.replace('http', 'ws') + '/ws?clientId=z', { 'X-API-Key': TEST_KEY });
    await s.next((f) => f.json?.type === 'status');
    s.close();
    await new Promise((r) => setTimeout(r, 1100));
    expect((await request(stack.gw.url).get('/health')).body).toEqual({ status: 'ok', upstream: 'up' });
  });
});

describe('hostile input never crashes the process', () => {
  const stack = useStack();

  test('bad percent-encoding, NUL, traversal above the root → 400 INVALID_PATH, nothing proxied', async () => {
    stack.fake.clearRequests();
    for (const p of ['/%', '/%zz/prompt', '/view%00.png', '/../../etc/passwd', '/api/..%2f..%2fx', '/a%5c..%5cprompt']) {
      const out = await raw(stack.gw.port, `GET ${p} HTTP/1.1\r\nHost: x\r\nX-API-Key: ${TEST_KEY}\r\nConnection: close\r\n\r\n`);
      expect(out).toMatch(/^HTTP\/1\.1 400/);
      expect(out).toContain('INVALID_PATH');
    }
    expect(clientTraffic(stack.fake)).toHaveLength(0);
  });

  test('oversized headers, garbage request lines and half requests', async () => {
    expect(await raw(stack.gw.port, `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(100_000)}\r\n\r\n`)).toMatch(/^HTTP\/1\.1 431/);
    expect(await raw(stack.gw.port, 'NOT A REQUEST\r\n\r\n')).toMatch(/^HTTP\/1\.1 400/);
    await raw(stack.gw.port, 'POST /api/prompt HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"a"', 200);
    await raw(stack.gw.port, Buffer.from([0x16, 0x03, 0x01, 0x00, 0xff, 0x01]), 200); // a TLS hello on the plain port
    const res = await request(stack.gw.url).get('/health');
    expect(res.status).toBe(200);
  });

  test('unicode and odd credentials are plain 401s', async () => {
    for (const key of ['ключ', '\u0000', 'a'.repeat(10_000), `${TEST_KEY}\u200b`]) {
      const res = await request(stack.gw.url).get(`/api/prompt?api_key=${encodeURIComponent(key)}`);
      expect(res.status).toBe(401);
    }
    expect((await request(stack.gw.url).get('/health')).status).toBe(200);
  });
});

describe('SIGTERM', () => {
  test('stops accepting, finishes in-flight requests, closes WebSockets with 1001, exits 0', async () => {
    const fake = await startFakeComfy();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-term-'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ host: '127.0.0.1', port: 0, data_dir: 'data' }));
    const gw = await spawnGateway(['--config', path.join(dir, 'config.json'), '--upstream', fake.url, '--api-key', TEST_KEY]);
    try {
      const s = await openSocket(gw.url.replace('http', 'ws') + '/ws?clientId=term', { 'X-API-Key': TEST_KEY });
      await s.next((f) => f.json?.type === 'status');
      // an upload in flight, sent slowly
      const body = `--b\r\nContent-Disposition: form-data; name="image"; filename="slow.png"\r\nContent-Type: image/png\r\n\r\n${'x'.repeat(300_000)}\r\n--b--\r\n`;
      const done = new Promise<number>((resolve, reject) => {
        const req = http.request(`${gw.url}/api/upload/image`, {
          method: 'POST',
          headers: { 'X-API-Key': TEST_KEY, 'Content-Type': 'multipart/form-data; boundary=b', 'Content-Length': Buffer.byteLength(body) },
        });
        req.on('response', (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode!));
        });
        req.on('error', reject);
        req.write(body.slice(0, 1000));
        setTimeout(() => {
          gw.kill('SIGTERM');
          setTimeout(() => req.end(body.slice(1000)), 300);
        }, 100);
      });
      expect(await done).toBe(200);
      expect((await s.closed).code).toBe(1001);
      expect(await gw.exited).toBe(0);
      await expect(fetch(`${gw.url}/health`)).rejects.toThrow();
    } finally {
      gw.kill('SIGKILL');
      await fake.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('refused requests do not hold the connection', () => {
  const stack = useStack();

  test('a refused upload that keeps sending is answered at once and its connection closed', async () => {
    const started = Date.now();
    const out = await new Promise<{ text: string; closedAfterMs: number }>((resolve) => {
      const s = net.connect(stack.gw.port, '127.0.0.1');
      let text = '';
      s.on('data', (d) => (text += d.toString('latin1')));
      s.on('close', () => resolve({ text, closedAfterMs: Date.now() - started }));
      s.on('error', () => undefined);
      s.write(
        `POST /api/upload/image HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: ${200 * 1024 * 1024}\r\n\r\n`,
      );
      const trickle = setInterval(() => (s.writable ? s.write(Buffer.alloc(1024)) : clearInterval(trickle)), 50);
      s.on('close', () => clearInterval(trickle));
      setTimeout(() => s.destroy(), 5000);
    });
    expect(out.text).toMatch(/^HTTP\/1\.1 401/);
    expect(out.text).toMatch(/connection: close/i);
    expect(out.closedAfterMs).toBeLessThan(3000);
    expect(clientTraffic(stack.fake)).toHaveLength(0);
  });
});
