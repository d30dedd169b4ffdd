import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { spawnGateway, type ChildGateway } from './helpers/child';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { TEST_KEY } from './helpers/gateway';
import { multipartUpload } from './helpers/multipart';

const MB = 1024 * 1024;
const SIZE = 200 * MB;
const RSS_BOUND = 64 * MB;
// A fresh connection per request: node's default agent keeps sockets alive, and reusing one the gateway is closing
// (its 5 s keep-alive timeout elapsing while the test hashes or writes 200 MB) fails with "socket hang up" — a race
// of the test's own making that a loaded machine hits in full runs.
const agent = false;

function findFile(dir: string, name: string): string | null {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) {
      const f = findFile(p, name);
      if (f) return f;
    } else if (e.name === name) return p;
  }
  return null;
}

/** Samples a child's RSS every 20 ms while `work` runs; returns the peak. */
async function peakRss<T>(gw: ChildGateway, work: () => Promise<T>): Promise<{ peak: number; result: T }> {
  let peak = gw.rss();
  const t = setInterval(() => {
    try {
      peak = Math.max(peak, gw.rss());
    } catch {
      /* exited */
    }
  }, 20);
  try {
    const result = await work();
    return { peak: Math.max(peak, gw.rss()), result };
  } finally {
    clearInterval(t);
  }
}

describe('streaming through the gateway (a separate process, RSS measured from /proc)', () => {
  let fake: FakeComfy;
  let gw: ChildGateway;
  let dir: string;
  beforeAll(async () => {
    fake = await startFakeComfy();
    dir = fs.mkdtempSync(path.join(require('node:os').tmpdir(), 'cgw-stream-'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ host: '127.0.0.1', port: 0, data_dir: 'data', log_levels: ['warn'] }));
    gw = await spawnGateway(['--config', path.join(dir, 'config.json'), '--upstream', fake.url, '--api-key', TEST_KEY]);
    // warm up: first requests allocate the proxy machinery
    for (let i = 0; i < 20; i++)
      await fetch(`${gw.url}/api/object_info`, { headers: { 'X-API-Key': TEST_KEY } }).then((r) => r.arrayBuffer());
  }, 120_000);
  afterAll(async () => {
    gw.kill('SIGKILL');
    await gw.exited;
    await fake.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('a 200 MB upload streams through with gateway RSS growth under 64 MB', async () => {
    const body = multipartUpload({ filename: 'big-upload.png', size: SIZE, fields: { type: 'input', overwrite: 'true' } });
    const before = gw.rss();
    const { peak, result } = await peakRss(
      gw,
      () =>
        new Promise<{ status: number; text: string }>((resolve, reject) => {
          const req = http.request(`${gw.url}/api/upload/image`, {
            method: 'POST',
            agent,
            headers: { 'X-API-Key': TEST_KEY, 'Content-Type': body.contentType, 'Content-Length': body.contentLength },
          });
          req.on('response', (res) => {
            let text = '';
            res.on('data', (c) => (text += c));
            res.on('end', () => resolve({ status: res.statusCode!, text }));
          });
          req.on('error', reject);
          body.stream.pipe(req);
        }),
    );
    expect(result.status).toBe(200);
    const saved = findFile(fake.inputDir, 'big-upload.png');
    expect(saved).not.toBeNull();
    expect(fs.statSync(saved!).size).toBe(SIZE);
    const digest = crypto.createHash('sha256').update(fs.readFileSync(saved!)).digest('hex');
    expect(digest).toBe(body.digest());
    expect(peak - before).toBeLessThan(RSS_BOUND);
  }, 120000);

  test('a 200 MB /view streams back byte for byte with gateway RSS growth under 64 MB', async () => {
    const file = path.join(fake.outputDir, 'big-view.bin');
    const fd = fs.openSync(file, 'w');
    const block = crypto.randomBytes(MB);
    const want = crypto.createHash('sha256');
    for (let i = 0; i < SIZE / MB; i++) {
      fs.writeSync(fd, block);
      want.update(block);
    }
    fs.closeSync(fd);
    const before = gw.rss();
    const { peak, result } = await peakRss(
      gw,
      () =>
        new Promise<{ status: number; bytes: number; digest: string }>((resolve, reject) => {
          http
            .get(`${gw.url}/api/view?filename=big-view.bin&type=output`, { agent, headers: { 'X-API-Key': TEST_KEY } }, (res) => {
              const h = crypto.createHash('sha256');
              let bytes = 0;
              res.on('data', (c: Buffer) => {
                bytes += c.length;
                h.update(c);
              });
              res.on('end', () => resolve({ status: res.statusCode!, bytes, digest: h.digest('hex') }));
            })
            .on('error', reject);
        }),
    );
    expect(result.status).toBe(200);
    expect(result.bytes).toBe(SIZE);
    expect(result.digest).toBe(want.digest('hex'));
    expect(peak - before).toBeLessThan(RSS_BOUND);
    fs.rmSync(file);
  }, 120000);

  test('a reader that stops reading makes the gateway stop reading ComfyUI (backpressure, not buffering)', async () => {
    const file = path.join(fake.outputDir, 'stalled.bin');
    fs.writeFileSync(file, Buffer.alloc(SIZE, 3));
    // Bytes the gateway has read from any socket or file (/proc/<pid>/io rchar): it must stop well short of 200 MB.
    const rchar = () => Number(/rchar: (\d+)/.exec(fs.readFileSync(`/proc/${gw.proc.pid}/io`, 'utf8'))![1]);
    const before = { read: rchar(), rss: gw.rss() };
    let req: http.ClientRequest | null = null;
    await new Promise<void>((resolve, reject) => {
      req = http.get(`${gw.url}/api/view?filename=stalled.bin&type=output`, { agent, headers: { 'X-API-Key': TEST_KEY } }, (res) => {
        expect(res.statusCode).toBe(200);
        res.once('data', () => {
          res.pause();
          resolve();
        });
      });
      req.on('error', reject);
    });
    // Wait until the gateway stops reading (half a second without progress), within a deadline.
    let last = rchar();
    let still = 0;
    const deadline = Date.now() + 30_000;
    while (still < 500 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      const now = rchar();
      still = now === last ? still + 50 : 0;
      last = now;
    }
    expect(still).toBeGreaterThanOrEqual(500);
    expect(last - before.read).toBeLessThan(RSS_BOUND);
    expect(gw.rss() - before.rss).toBeLessThan(RSS_BOUND);
    req!.destroy();
    fs.rmSync(file);
  }, 60000);

  test('aborted uploads and vanished readers leave the gateway healthy', async () => {
    for (let i = 0; i < 3; i++) {
      await new Promise<void>((resolve) => {
        const req = http.request(`${gw.url}/api/upload/image`, {
          method: 'POST',
          agent,
          headers: { 'X-API-Key': TEST_KEY, 'Content-Type': 'multipart/form-data; boundary=xyz', 'Content-Length': 50 * MB },
        });
        req.on('error', () => resolve());
        req.write(`--xyz\r\nContent-Disposition: form-data; name="image"; filename="aborted-${i}.png"\r\n\r\n`);
        req.write(Buffer.alloc(4 * MB, 1), () => setTimeout(() => req.destroy(), 50));
        req.on('close', () => resolve());
      });
    }
    // a reader that goes away after the first bytes
    const file = path.join(fake.outputDir, 'mid.bin');
    fs.writeFileSync(file, Buffer.alloc(20 * MB, 7));
    await new Promise<void>((resolve) => {
      const req = http.get(`${gw.url}/api/view?filename=mid.bin&type=output`, { agent, headers: { 'X-API-Key': TEST_KEY } }, (res) => {
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', () => resolve());
    });
    await new Promise((r) => setTimeout(r, 200));
    expect(gw.proc.exitCode).toBeNull();
    const health = await fetch(`${gw.url}/health`);
    expect(await health.json()).toEqual({ status: 'ok', upstream: 'up' });
    const ok = await fetch(`${gw.url}/api/object_info`, { headers: { 'X-API-Key': TEST_KEY } });
    expect(ok.status).toBe(200);
    // no half-written upload under its final name
    expect(findFile(fake.inputDir, 'aborted-0.png')).toBeNull();
  }, 60000);
});
