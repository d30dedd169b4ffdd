/** Self-test of the fake ComfyUI server (tests/helpers/fakeComfy.ts) - no gateway involved. */
import * as http from 'node:http';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as crypto from 'node:crypto';
import WebSocket from 'ws';
import { startFakeComfy, FakeComfy, FAKE_COMFY_ROUTES, sampleWorkflow } from './helpers/fakeComfy';
import { makePng, validatePng, isPng } from './helpers/png';

interface Resp {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  text: string;
  json(): any;
}

function request(
  fake: FakeComfy,
  method: string,
  p: string,
  opts: { headers?: Record<string, string>; body?: Buffer | string } = {},
): Promise<Resp> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: fake.port, method, path: p, headers: opts.headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body,
          text: body.toString('utf8'),
          json: () => JSON.parse(body.toString('utf8')),
        });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    if (opts.body !== undefined) req.end(opts.body);
    else req.end();
  });
}

const postJson = (fake: FakeComfy, p: string, obj: unknown, headers: Record<string, string> = {}) =>
  request(fake, 'POST', p, { body: JSON.stringify(obj), headers: { 'Content-Type': 'application/json', ...headers } });

function multipart(
  fields: Record<string, string>,
  file?: { field?: string; filename: string; data: Buffer; type?: string },
): { body: Buffer; contentType: string } {
  const boundary = '----fakecomfytest' + crypto.randomBytes(8).toString('hex');
  const parts: Buffer[] = [];
  if (file) {
    parts.push(
      Buffer.from(
        `--${boundary}\r\nContent-Disposition: form-data; name="${file.field ?? 'image'}"; filename="${file.filename}"\r\nContent-Type: ${file.type ?? 'image/png'}\r\n\r\n`,
      ),
      file.data,
      Buffer.from('\r\n'),
    );
  }
  for (const [k, v] of Object.entries(fields))
    parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${k}"\r\n\r\n${v}\r\n`));
  parts.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(parts), contentType: `multipart/form-data; boundary=${boundary}` };
}

class WsClient {
  ws: WebSocket;
  msgs: any[] = [];
  binaries: Buffer[] = [];
  private waiters: (() => void)[] = [];
  constructor(url: string, headers?: Record<string, string>) {
    this.ws = new WebSocket(url, { headers });
    this.ws.on('message', (data, isBinary) => {
      if (isBinary) this.binaries.push(Buffer.from(data as Buffer));
      else this.msgs.push(JSON.parse(data.toString()));
      for (const w of this.waiters.splice(0)) w();
    });
  }
  open(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.ws.once('open', () => resolve());
      this.ws.once('error', reject);
      this.ws.once('unexpected-response', (_req, res) => reject(new Error(`unexpected response ${res.statusCode}`)));
    });
  }
  async waitFor(pred: (m: any) => boolean, timeoutMs = 3000): Promise<any> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.msgs.find(pred);
      if (found) return found;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timeout waiting for ws message; got: ' + JSON.stringify(this.msgs.map((m) => m.type)));
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }
  close(): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((r) => {
      this.ws.once('close', () => r());
      this.ws.close();
    });
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('fake ComfyUI', () => {
  let fake: FakeComfy;
  const clients: WsClient[] = [];
  const ws = (q = '', headers?: Record<string, string>) => {
    const c = new WsClient(`ws://127.0.0.1:${fake.port}/ws${q}`, headers);
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    fake = await startFakeComfy({ promptDelayMs: 20 });
  });
  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close()));
  });
  afterAll(async () => {
    await fake.close();
    expect(fs.existsSync(fake.baseDir)).toBe(false);
  });

  test('layout and route table', () => {
    for (const d of [
      fake.inputDir,
      fake.outputDir,
      fake.tempDir,
      path.join(fake.modelsDir, 'checkpoints'),
      path.join(fake.modelsDir, 'loras'),
    ]) {
      expect(fs.statSync(d).isDirectory()).toBe(true);
    }
    expect(fake.url).toBe(`http://127.0.0.1:${fake.port}`);
    const has = (m: string, p: string) => FAKE_COMFY_ROUTES.some((r) => r.method === m && r.path === p);
    expect(has('POST', '/prompt')).toBe(true);
    expect(has('GET', '/userdata/{file}')).toBe(true);
    expect(has('POST', '/v2/manager/queue/install')).toBe(true);
    expect(has('GET', '/internal/folder_paths')).toBe(true);
    // only the jobs API is itself registered under /api (so real ComfyUI also answers /api/api/jobs)
    expect(FAKE_COMFY_ROUTES.filter((r) => r.path.startsWith('/api/')).map((r) => r.path)).toEqual(['/api/jobs', '/api/jobs/{job_id}']);
  });

  test('origin check: loopback Host with a foreign Origin is refused (HTTP and WS)', async () => {
    const bad = await request(fake, 'GET', '/prompt', { headers: { Origin: 'http://evil.example' } });
    expect(bad.status).toBe(403);
    expect(bad.headers['content-type']).toMatch(/text\/plain/);
    const badPost = await postJson(fake, '/api/prompt', { prompt: sampleWorkflow('nope') }, { Origin: 'http://evil.example:8188' });
    expect(badPost.status).toBe(403);
    const same = await request(fake, 'GET', '/prompt', { headers: { Origin: `http://127.0.0.1:${fake.port}` } });
    expect(same.status).toBe(200);
    // origin without port: only hostnames are compared
    expect((await request(fake, 'GET', '/prompt', { headers: { Origin: 'http://127.0.0.1' } })).status).toBe(200);
    // non-loopback Host: no check
    expect((await request(fake, 'GET', '/prompt', { headers: { Host: 'comfy.example.com', Origin: 'http://evil.example' } })).status).toBe(
      200,
    );
    const c = ws('?clientId=o1', { Origin: 'http://evil.example' });
    await expect(c.open()).rejects.toThrow(/403/);
    expect(fake.wsClients().some((x) => x.sid === 'o1')).toBe(false);
  });

  test('routes answer at /x and /api/x; static files and /internal have no twin; 404/405', async () => {
    const a = await request(fake, 'GET', '/prompt');
    const b = await request(fake, 'GET', '/api/prompt');
    expect(a.status).toBe(200);
    expect(b.status).toBe(200);
    expect(a.text).toBe('{"exec_info": {"queue_remaining": 0}}'); // python json.dumps formatting
    expect(b.json()).toEqual(a.json());
    expect((await request(fake, 'GET', '/%61pi/prompt')).status).toBe(200); // aiohttp decodes the path
    const idx = await request(fake, 'GET', '/');
    expect(idx.status).toBe(200);
    expect(idx.headers['content-type']).toMatch(/text\/html/);
    expect(idx.text).toContain('<title>ComfyUI</title>');
    expect((await request(fake, 'GET', '/api/')).status).toBe(200);
    expect((await request(fake, 'GET', '/index.html')).status).toBe(200);
    expect((await request(fake, 'GET', '/api/index.html')).status).toBe(404);
    const js = await request(fake, 'GET', '/extensions/core/foo.js');
    expect(js.status).toBe(200);
    expect(js.headers['content-type']).toMatch(/application\/javascript/);
    expect((await request(fake, 'GET', '/internal/folder_paths')).status).toBe(200);
    expect((await request(fake, 'GET', '/api/internal/folder_paths')).status).toBe(404);
    expect((await request(fake, 'GET', '/nope')).status).toBe(404);
    expect((await request(fake, 'GET', '/api/nope')).status).toBe(404);
    const m = await request(fake, 'DELETE', '/prompt');
    expect(m.status).toBe(405);
    expect((await request(fake, 'OPTIONS', '/anything')).status).toBe(200);
    for (const p of ['/manager/reboot', '/api/manager/reboot', '/v2/manager/reboot', '/api/v2/manager/reboot']) {
      expect((await request(fake, 'POST', p)).status).toBe(200);
    }
    expect((await request(fake, 'POST', '/api/customnode/install', { body: '{}' })).status).toBe(200);
    const fp = (await request(fake, 'GET', '/internal/folder_paths')).json();
    expect(fp.checkpoints[0]).toBe(path.join(fake.modelsDir, 'checkpoints'));
    expect(fp.custom_nodes).toEqual([path.join(fake.baseDir, 'custom_nodes')]);
    const features = (await request(fake, 'GET', '/api/features')).json();
    expect(features.supports_preview_metadata).toBe(true);
    const stats = (await request(fake, 'GET', '/system_stats')).json();
    expect(stats.devices[0].type).toBe('cuda');
    const oi = (await request(fake, 'GET', '/object_info')).json();
    expect(oi.CheckpointLoaderSimple.input.required.ckpt_name[0]).toContain('fake_model.safetensors');
    expect(oi.SaveImage.input.required.filename_prefix[0]).toBe('STRING');
    expect((await request(fake, 'GET', '/object_info/KSampler')).json()).toHaveProperty('KSampler');
    expect((await request(fake, 'GET', '/object_info/Nope')).json()).toEqual({});
    expect((await request(fake, 'GET', '/models/checkpoints')).json()).toEqual(['fake_model.safetensors']);
    expect((await request(fake, 'GET', '/models/nope')).status).toBe(404);
  });

  test('requests are recorded with raw path and body digest', async () => {
    fake.clearRequests();
    const body = JSON.stringify({ clear: true });
    await request(fake, 'POST', '/api/queue?x=%2e%2E/a', { body, headers: { 'Content-Type': 'application/json', 'X-Test': '1' } });
    await request(fake, 'GET', '/%61pi//view?filename=a');
    expect(fake.requests).toHaveLength(2);
    const [r0, r1] = fake.requests;
    expect(r0.method).toBe('POST');
    expect(r0.rawPath).toBe('/api/queue?x=%2e%2E/a');
    expect(r0.headers['x-test']).toBe('1');
    expect(r0.bodyLength).toBe(Buffer.byteLength(body));
    expect(r0.bodySha256).toBe(crypto.createHash('sha256').update(body).digest('hex'));
    expect(r1.rawPath).toBe('/%61pi//view?filename=a');
    expect(r1.bodyLength).toBe(0);
    const c = ws('?clientId=rec1');
    await c.open();
    const up = fake.requests.find((r) => r.ws);
    expect(up?.rawPath).toBe('/ws?clientId=rec1');
  });

  test('POST /prompt with SaveImage writes prefix_00001_.png then _00002_, /view serves it', async () => {
    const prompt = { '1': { class_type: 'SaveImage', inputs: { filename_prefix: 'selftest/pic' } } };
    const r1 = await postJson(fake, '/prompt', { prompt });
    expect(r1.status).toBe(200);
    const j1 = r1.json();
    expect(j1.node_errors).toEqual({});
    expect(typeof j1.number).toBe('number');
    const h1 = await fake.waitForPrompt(j1.prompt_id);
    expect(h1.outputs['1'].images).toEqual([{ filename: 'pic_00001_.png', subfolder: 'selftest', type: 'output' }]);
    expect(h1.status.status_str).toBe('success');
    expect(h1.prompt[1]).toBe(j1.prompt_id);
    const r2 = await postJson(fake, '/api/prompt', { prompt, prompt_id: 'my-own-id' });
    expect(r2.json().prompt_id).toBe('my-own-id');
    const h2 = await fake.waitForPrompt('my-own-id');
    expect(h2.outputs['1'].images[0].filename).toBe('pic_00002_.png');
    expect(fs.readdirSync(path.join(fake.outputDir, 'selftest')).sort()).toEqual(['pic_00001_.png', 'pic_00002_.png']);

    const hist = (await request(fake, 'GET', `/history/${j1.prompt_id}`)).json();
    expect(Object.keys(hist)).toEqual([j1.prompt_id]);
    expect((await request(fake, 'GET', '/history/unknown')).json()).toEqual({});
    const last = (await request(fake, 'GET', '/history?max_items=1')).json();
    expect(Object.keys(last)).toEqual(['my-own-id']);

    const v = await request(fake, 'GET', '/view?filename=pic_00001_.png&subfolder=selftest&type=output');
    expect(v.status).toBe(200);
    expect(v.headers['content-type']).toBe('image/png');
    expect(v.headers['content-disposition']).toBe('filename="pic_00001_.png"');
    expect(isPng(v.body)).toBe(true);
    const info = validatePng(v.body);
    expect(info.width).toBe(2);
    expect(JSON.parse(info.text.prompt)).toEqual(prompt);
    expect(v.body.equals(fs.readFileSync(path.join(fake.outputDir, 'selftest', 'pic_00001_.png')))).toBe(true);
  });

  test('a SaveImage prefix escaping the output dir is refused with 400 and nothing is written', async () => {
    const before = fs.readdirSync(fake.baseDir).sort();
    for (const prefix of ['../x', 'a/../../x', '/tmp/evil']) {
      const r = await postJson(fake, '/prompt', { prompt: { '9': { class_type: 'SaveImage', inputs: { filename_prefix: prefix } } } });
      expect(r.status).toBe(400);
      const j = r.json();
      expect(j.error.type).toBe('prompt_outputs_failed_validation');
      expect(j.node_errors['9'].class_type).toBe('SaveImage');
    }
    await sleep(60);
    expect(fs.readdirSync(fake.baseDir).sort()).toEqual(before);
    expect(fs.existsSync(path.join(path.dirname(fake.baseDir), 'x_00001_.png'))).toBe(false);
  });

  test('prompt validation errors', async () => {
    const bad = await request(fake, 'POST', '/prompt', { body: '{not json' });
    expect(bad.status).toBe(400);
    expect(bad.json().error.type).toBe('invalid_prompt');
    const none = await postJson(fake, '/prompt', { client_id: 'x' });
    expect(none.status).toBe(400);
    expect(none.json().error.type).toBe('no_prompt');
    const unknown = await postJson(fake, '/prompt', { prompt: { '1': { class_type: 'EvilNode', inputs: {} } } });
    expect(unknown.status).toBe(400);
    expect(unknown.json().error.type).toBe('invalid_prompt');
    const noOut = await postJson(fake, '/prompt', { prompt: { '1': { class_type: 'EmptyLatentImage', inputs: {} } } });
    expect(noOut.json().error.type).toBe('prompt_no_outputs');
    const li = await postJson(fake, '/prompt', {
      prompt: {
        '1': { class_type: 'LoadImage', inputs: { image: '../../etc/passwd' } },
        '2': { class_type: 'PreviewImage', inputs: { images: ['1', 0] } },
      },
    });
    expect(li.status).toBe(400);
    expect(li.json().node_errors['1'].errors[0].type).toBe('custom_validation_failed');
    expect(li.json().node_errors['1'].dependent_outputs).toEqual(['2']);
    const ck = await postJson(fake, '/prompt', { prompt: sampleWorkflow('x', { ckpt: 'missing.safetensors' }) });
    expect(ck.json().node_errors['4'].errors[0].type).toBe('value_not_in_list');
  });

  test('/view refuses traversal', async () => {
    fs.writeFileSync(path.join(fake.baseDir, 'secret.txt'), 'secret');
    expect((await request(fake, 'GET', '/view?filename=../secret.txt')).status).toBe(400);
    expect((await request(fake, 'GET', '/view?filename=%2Fetc%2Fpasswd')).status).toBe(400);
    expect((await request(fake, 'GET', '/view?filename=secret.txt&subfolder=..')).status).toBe(403);
    expect((await request(fake, 'GET', '/view?filename=secret.txt&subfolder=/')).status).toBe(403);
    expect((await request(fake, 'GET', '/view?filename=secret.txt&type=models')).status).toBe(400);
    expect((await request(fake, 'GET', '/view?filename=nothere.png')).status).toBe(404);
    expect((await request(fake, 'GET', '/view')).status).toBe(404);
    fs.symlinkSync(path.join(fake.baseDir, 'secret.txt'), path.join(fake.outputDir, 'link.txt'));
    expect((await request(fake, 'GET', '/view?filename=link.txt')).status).toBe(403);
  });

  test('upload then view; duplicates are renamed; bad names refused', async () => {
    const png = makePng({ width: 3, height: 1, color: [1, 2, 3] });
    const up = multipart({ subfolder: 'alice', type: 'input' }, { filename: 'cat.png', data: png });
    const r = await request(fake, 'POST', '/api/upload/image', { body: up.body, headers: { 'Content-Type': up.contentType } });
    expect(r.status).toBe(200);
    expect(r.json()).toEqual({ name: 'cat.png', subfolder: 'alice', type: 'input' });
    const v = await request(fake, 'GET', '/view?filename=cat.png&subfolder=alice&type=input');
    expect(v.status).toBe(200);
    expect(v.body.equals(png)).toBe(true);
    // same bytes again: the real server detects the duplicate and keeps the name
    const again = await request(fake, 'POST', '/upload/image', { body: up.body, headers: { 'Content-Type': up.contentType } });
    expect(again.json().name).toBe('cat.png');
    // different bytes: renamed "cat (1).png"
    const other = multipart({ subfolder: 'alice' }, { filename: 'cat.png', data: makePng({ color: [9, 9, 9] }) });
    const r2 = await request(fake, 'POST', '/upload/image', { body: other.body, headers: { 'Content-Type': other.contentType } });
    expect(r2.json().name).toBe('cat (1).png');
    const over = multipart({ subfolder: 'alice', overwrite: 'true' }, { filename: 'cat.png', data: makePng({ color: [7, 7, 7] }) });
    expect(
      (await request(fake, 'POST', '/upload/image', { body: over.body, headers: { 'Content-Type': over.contentType } })).json().name,
    ).toBe('cat.png');
    // LoadImage lists input/'s top level only, as ComfyUI's does; a custom picker walks the folder
    const oi = (await request(fake, 'GET', '/object_info/LoadImage')).json();
    expect(oi.LoadImage.input.required.image[0].filter((f: string) => f.includes('/'))).toEqual([]);
    expect(oi.LoadImage.input.required.image[1]).toEqual({ image_upload: true });
    const picker = (await request(fake, 'GET', '/object_info/FolderPicker')).json();
    expect(picker.FolderPicker.input.required.picture[0]).toEqual(expect.arrayContaining(['alice/cat.png', 'alice/cat (1).png']));

    for (const [fields, name] of [
      [{ subfolder: '../x' }, 'a.png'],
      [{ subfolder: '/tmp' }, 'a.png'],
      [{}, '../a.png'],
      [{ type: 'models' }, 'a.png'],
    ] as [Record<string, string>, string][]) {
      const b = multipart(fields, { filename: name, data: png });
      expect((await request(fake, 'POST', '/upload/image', { body: b.body, headers: { 'Content-Type': b.contentType } })).status).toBe(400);
    }
    expect((await request(fake, 'POST', '/upload/image', { body: 'x', headers: { 'Content-Type': 'text/plain' } })).status).toBe(400);
    const trunc = multipart({}, { filename: 'z.png', data: png });
    expect(
      (await request(fake, 'POST', '/upload/image', { body: trunc.body.subarray(0, 60), headers: { 'Content-Type': trunc.contentType } }))
        .status,
    ).toBe(400);

    // a LoadImage prompt referencing the upload validates
    const ok = await postJson(fake, '/prompt', {
      prompt: {
        '1': { class_type: 'LoadImage', inputs: { image: 'alice/cat.png [input]' } },
        '2': { class_type: 'PreviewImage', inputs: { images: ['1', 0] } },
      },
    });
    expect(ok.status).toBe(200);
    const h = await fake.waitForPrompt(ok.json().prompt_id);
    expect(h.outputs['2'].images[0]).toMatchObject({ type: 'temp', subfolder: '' });
    expect(h.outputs['2'].images[0].filename).toMatch(/^ComfyUI_temp_[a-z]{5}_00001_\.png$/);
  });

  test('a multi-MB upload is spooled and streamed back intact', async () => {
    const data = crypto.randomBytes(6 * 1024 * 1024 + 123);
    const up = multipart({ type: 'output' }, { filename: 'big.bin', data, type: 'application/octet-stream' });
    fake.clearRequests();
    const r = await request(fake, 'POST', '/upload/image', { body: up.body, headers: { 'Content-Type': up.contentType } });
    expect(r.status).toBe(200);
    expect(fake.requests[0].bodySha256).toBe(crypto.createHash('sha256').update(up.body).digest('hex'));
    const v = await request(fake, 'GET', '/view?filename=big.bin');
    expect(v.headers['content-type']).toBe('application/octet-stream');
    expect(v.body.equals(data)).toBe(true);
    const html = multipart({ type: 'output' }, { filename: 'x.html', data: Buffer.from('<script>alert(1)</script>'), type: 'text/html' });
    expect((await request(fake, 'POST', '/upload/image', { body: html.body, headers: { 'Content-Type': html.contentType } })).status).toBe(
      200,
    );
    const hv = await request(fake, 'GET', '/view?filename=x.html');
    expect(hv.headers['content-type']).toBe('text/html'); // worst case: active content served inline
    expect(hv.headers['x-content-type-options']).toBeUndefined();
    const part = await request(fake, 'GET', '/view?filename=big.bin', { headers: { Range: 'bytes=10-19' } });
    expect(part.status).toBe(206);
    expect(part.body.equals(data.subarray(10, 20))).toBe(true);
  });

  test('WebSocket: status with sid, targeted execution events, binary preview frame', async () => {
    const c = ws('?clientId=alice-1');
    await c.open();
    const st = await c.waitFor((m) => m.type === 'status');
    expect(st.data.sid).toBe('alice-1');
    expect(st.data.status.exec_info.queue_remaining).toBe(0);
    expect(fake.wsClients()).toContainEqual(expect.objectContaining({ clientId: 'alice-1', sid: 'alice-1', active: true }));
    c.ws.send(JSON.stringify({ type: 'feature_flags', data: { supports_preview_metadata: true } }));
    const ff = await c.waitFor((m) => m.type === 'feature_flags');
    expect(ff.data.supports_preview_metadata).toBe(true);

    const other = new WsClient(`ws://127.0.0.1:${fake.port}/api/ws?clientId=bob-1`); // the /api twin
    clients.push(other);
    await other.open();

    const r = await postJson(fake, '/prompt', { prompt: sampleWorkflow('ws/run'), client_id: 'alice-1' });
    expect(r.status).toBe(200);
    const pid = r.json().prompt_id;
    await c.waitFor((m) => m.type === 'executing' && m.data.node === null && m.data.prompt_id === pid);
    const types = c.msgs.filter((m) => m.data?.prompt_id === pid).map((m) => m.type);
    expect(types[0]).toBe('execution_start');
    expect(types).toEqual(expect.arrayContaining(['execution_cached', 'executing', 'progress', 'executed', 'execution_success']));
    expect(types[types.length - 1]).toBe('executing');
    const executed = c.msgs.find((m) => m.type === 'executed' && m.data.prompt_id === pid);
    expect(executed.data.node).toBe('9');
    expect(executed.data.output.images[0]).toEqual({ filename: 'run_00001_.png', subfolder: 'ws', type: 'output' });
    const progress = c.msgs.find((m) => m.type === 'progress' && m.data.prompt_id === pid);
    expect(progress.data.node).toBe('3'); // the KSampler
    expect(c.binaries.length).toBeGreaterThanOrEqual(1);
    const frame = c.binaries[0];
    expect(frame.readUInt32BE(0)).toBe(1); // PREVIEW_IMAGE
    expect(frame.readUInt32BE(4)).toBe(2); // PNG
    expect(validatePng(frame.subarray(8)).width).toBe(2);
    // the other client only saw queue status broadcasts
    expect(other.msgs.every((m) => m.type === 'status')).toBe(true);
    expect(other.binaries).toHaveLength(0);
    const q = (await request(fake, 'GET', '/queue')).json();
    expect(q).toEqual({ queue_running: [], queue_pending: [] });
  });

  test('a prompt without client_id is broadcast to every socket (per-node events)', async () => {
    const a = ws('?clientId=bc-a');
    const b = ws(); // no clientId: the server generates one
    await Promise.all([a.open(), b.open()]);
    const sb = await b.waitFor((m) => m.type === 'status');
    expect(sb.data.sid).toMatch(/^[0-9a-f]{32}$/);
    const r = await postJson(fake, '/prompt', { prompt: { '1': { class_type: 'SaveImage', inputs: { filename_prefix: 'bc' } } } });
    const pid = r.json().prompt_id;
    for (const c of [a, b]) {
      const ex = await c.waitFor((m) => m.type === 'executed' && m.data.prompt_id === pid);
      expect(ex.data.output.images[0].filename).toBe('bc_00001_.png');
      expect(c.binaries.length).toBe(1);
    }
    await fake.waitForPrompt(pid);
    await sleep(20);
    // lifecycle messages are only sent to a client_id (PromptExecutor.add_message(broadcast=False))
    expect(a.msgs.some((m) => m.type === 'execution_start')).toBe(false);
  });

  test('reusing a clientId takes over: the older socket stops receiving', async () => {
    const old = ws('?clientId=dup');
    await old.open();
    await old.waitFor((m) => m.type === 'status');
    const neu = ws('?clientId=dup');
    await neu.open();
    await neu.waitFor((m) => m.type === 'status');
    const infos = fake.wsClients().filter((x) => x.sid === 'dup');
    expect(infos).toHaveLength(2);
    expect(infos.filter((x) => x.active)).toHaveLength(1);
    const oldCount = old.msgs.length;
    const r = await postJson(fake, '/prompt', {
      prompt: { '1': { class_type: 'SaveImage', inputs: { filename_prefix: 'dup' } } },
      client_id: 'dup',
    });
    const pid = r.json().prompt_id;
    await neu.waitFor((m) => m.type === 'executing' && m.data.node === null && m.data.prompt_id === pid);
    expect(old.msgs.length).toBe(oldCount);
    expect(old.ws.readyState).toBe(WebSocket.OPEN);
    fake.sendWs('dup', { type: 'custom', data: { x: 1 } });
    await neu.waitFor((m) => m.type === 'custom');
    fake.sendWs(null, { type: 'hello-all', data: {} });
    await neu.waitFor((m) => m.type === 'hello-all');
    await sleep(20);
    expect(old.msgs.length).toBe(oldCount);
    // real quirk: when the superseded socket closes, server.py pops the sid, detaching the newer socket too
    await old.close();
    await sleep(20);
    expect(fake.wsClients().filter((x) => x.sid === 'dup')).toEqual([expect.objectContaining({ active: false })]);
  });

  test('queue, interrupt and history management', async () => {
    // a stays running until interrupted however slow the machine is; b finishes once the delay is shortened below
    fake.promptDelayMs = 600_000;
    try {
      const p = { '1': { class_type: 'SaveImage', inputs: { filename_prefix: 'q/q' } } };
      const a = (await postJson(fake, '/prompt', { prompt: p, client_id: 'qq' })).json().prompt_id;
      const b = (await postJson(fake, '/prompt', { prompt: p })).json().prompt_id;
      const c = (await postJson(fake, '/prompt', { prompt: p })).json().prompt_id;
      await sleep(30);
      const q = (await request(fake, 'GET', '/api/queue')).json();
      expect(q.queue_running.map((x: any[]) => x[1])).toEqual([a]);
      expect(q.queue_pending.map((x: any[]) => x[1])).toEqual([b, c]);
      expect(q.queue_running[0][3]).toEqual({ client_id: 'qq' });
      expect((await request(fake, 'GET', '/prompt')).json().exec_info.queue_remaining).toBe(3);
      const jobs = (await request(fake, 'GET', '/api/jobs?status=pending')).json();
      expect(jobs.jobs.map((j: any) => j.id).sort()).toEqual([b, c].sort());
      expect((await request(fake, 'GET', `/api/jobs/${a}`)).json().status).toBe('in_progress');
      expect((await request(fake, 'GET', `/api/api/jobs/${a}`)).status).toBe(200);
      expect((await request(fake, 'GET', `/jobs/${a}`)).status).toBe(404);
      expect((await postJson(fake, '/queue', { delete: [c] })).status).toBe(200);
      expect((await postJson(fake, '/interrupt', { prompt_id: 'not-running' })).status).toBe(200);
      expect((await postJson(fake, '/interrupt', { prompt_id: a })).status).toBe(200);
      const ha = await fake.waitForPrompt(a);
      expect(ha.status).toMatchObject({ status_str: 'error', completed: false });
      expect(ha.status.messages.map((m: any[]) => m[0])).toContain('execution_interrupted');
      fake.promptDelayMs = 10;
      await fake.waitForPrompt(b);
      expect((await request(fake, 'GET', `/history/${c}`)).json()).toEqual({});
      expect((await postJson(fake, '/history', { delete: [a] })).status).toBe(200);
      expect((await request(fake, 'GET', `/history/${a}`)).json()).toEqual({});
      expect((await postJson(fake, '/free', { unload_models: true, free_memory: true })).status).toBe(200);
      expect((await postJson(fake, '/history', { clear: true })).status).toBe(200);
      expect((await request(fake, 'GET', '/history')).json()).toEqual({});
    } finally {
      fake.promptDelayMs = 20;
    }
  });

  test('multi-user: users and userdata', async () => {
    const r = await postJson(fake, '/users', { username: 'Alice Smith' });
    expect(r.status).toBe(200);
    const id = r.json();
    expect(id).toMatch(/^Alice-Smith_[0-9a-f-]{36}$/);
    expect((await postJson(fake, '/users', { username: 'Alice Smith' })).status).toBe(400);
    expect((await request(fake, 'GET', '/users')).json().users[id]).toBe('Alice Smith');
    const h = { 'comfy-user': id };
    const w = await request(fake, 'POST', '/api/userdata/workflows%2Fa.json', { body: '{"nodes":[]}', headers: h });
    expect(w.status).toBe(200);
    expect(w.json()).toBe('workflows/a.json');
    expect(fs.readFileSync(path.join(fake.baseDir, 'user', id, 'workflows', 'a.json'), 'utf8')).toBe('{"nodes":[]}');
    expect((await request(fake, 'GET', '/userdata?dir=workflows', { headers: h })).json()).toEqual(['a.json']);
    const g = await request(fake, 'GET', '/userdata/workflows%2Fa.json', { headers: h });
    expect(g.text).toBe('{"nodes":[]}');
    expect((await request(fake, 'GET', '/userdata?dir=workflows', { headers: { 'comfy-user': 'mallory' } })).status).toBe(401);
    expect((await request(fake, 'GET', '/userdata?dir=workflows')).status).toBe(401);
    expect((await request(fake, 'GET', '/userdata/..%2F..%2Fusers.json', { headers: h })).status).toBe(403);
    expect((await request(fake, 'DELETE', '/userdata/workflows%2Fa.json', { headers: h })).status).toBe(204);
    expect((await request(fake, 'GET', '/userdata/workflows%2Fa.json', { headers: h })).status).toBe(404);
    expect((await postJson(fake, '/settings', { 'Comfy.Theme': 'dark' }, h)).status).toBe(200);
    expect((await request(fake, 'GET', '/settings/Comfy.Theme', { headers: h })).json()).toBe('dark');
  });

  test('bodies over max_upload_size get 413', async () => {
    const small = await startFakeComfy({ maxUploadSize: 1024 });
    try {
      const r = await request(small, 'POST', '/upload/image', {
        body: Buffer.alloc(4096),
        headers: { 'Content-Type': 'application/octet-stream' },
      });
      expect(r.status).toBe(413);
      expect(small.requests[0].tooLarge).toBe(true);
      const ok = await postJson(small, '/prompt', { prompt: { '1': { class_type: 'SaveImage', inputs: {} } } });
      expect(ok.status).toBe(200);
    } finally {
      await small.close();
    }
  });

  test('stop() frees the port and start() listens again on the same port', async () => {
    const other = await startFakeComfy({ promptDelayMs: 5 });
    try {
      const port = other.port;
      const c = new WsClient(`ws://127.0.0.1:${port}/ws?clientId=s1`);
      await c.open();
      const closed = new Promise<number>((r) => c.ws.once('close', (code) => r(code)));
      await other.stop();
      expect(await closed).toBe(1006);
      await expect(request(other, 'GET', '/prompt')).rejects.toThrow(/ECONNREFUSED/);
      expect(other.wsClients()).toHaveLength(0);
      await other.start();
      expect(other.port).toBe(port);
      expect((await request(other, 'GET', '/prompt')).status).toBe(200);
      const c2 = new WsClient(`ws://127.0.0.1:${port}/ws?clientId=s1`);
      await c2.open();
      await c2.waitFor((m) => m.type === 'status');
      await c2.close();
    } finally {
      await other.close();
    }
  });
});
