/** Issue 5 item 3: per-user files — prompt paths, uploads, /view, /object_info (and separate_users: false). */
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { multipartUpload } from './helpers/multipart';
import { makePng } from './helpers/png';
import { multipartBody, postJson, raw, received, startIsolationEnv, type Caller, type IsolationEnv } from './isolation-env';

function listFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(d, e.name), rel ? `${rel}/${e.name}` : e.name);
      else out.push(rel ? `${rel}/${e.name}` : e.name);
    }
  };
  walk(dir, '');
  return out.sort();
}

function upload(env: IsolationEnv, who: Caller, parts: Parameters<typeof multipartBody>[0], route = '/api/upload/image') {
  const mp = multipartBody(parts);
  return raw(env.gw, 'POST', route, { headers: { ...who.headers, 'Content-Type': mp.contentType }, body: mp.body });
}

const PNG = makePng({ color: [10, 20, 30] });

describe('per-user files', () => {
  let env: IsolationEnv;
  let fake: FakeComfy;
  beforeAll(async () => {
    fake = await startFakeComfy({ promptDelayMs: 20 });
    env = await startIsolationEnv({ fakeInstance: fake, config: { comfyui: { input_dir: fake.inputDir } } });
  });
  afterAll(async () => {
    await env.close();
    await fake.close();
  });

  describe('prompt paths', () => {
    const saveWith = (prefix: string) => ({ prompt: sampleWorkflow(prefix) });
    const loadWith = (cls: string, input: string, value: string) => ({
      prompt: { ...sampleWorkflow(), '20': { class_type: cls, inputs: { [input]: value } } },
    });
    const tricks: [string, object][] = [
      ['../ in filename_prefix', saveWith('../bob/x')],
      ['backslashes', saveWith('..\\bob\\x')],
      ['absolute path', saveWith('/tmp/x')],
      ['drive letter', saveWith('C:x')],
      ['.. in the middle', saveWith('a/../../bob/x')],
      ['NUL', saveWith('a\u0000b')],
      ['%2e%2e', saveWith('%2e%2e/bob/x')],
      ['%2F', saveWith('x%2F..%2Fbob')],
      ['fullwidth dots and slash', saveWith('\uff0e\uff0e\uff0fbob/x')],
      ['fullwidth solidus', saveWith('a\uff0fb')],
      ['one dot leader', saveWith('\u2024\u2024/bob/x')],
      ['division slash', saveWith('a\u2215b')],
      ['LoadImage ../', loadWith('LoadImage', 'image', '../bob/x.png')],
      ['LoadImage via another user folder', loadWith('LoadImage', 'image', 'alice/../bob/x.png')],
      ['LoadImage absolute', loadWith('LoadImage', 'image', '/etc/passwd')],
      ['LoadImageMask ../ [output]', loadWith('LoadImageMask', 'image', '../bob/x.png [output]')],
      ['LoadImage someone’s temp file', loadWith('LoadImage', 'image', 'ComfyUI_temp_abcde_00001_.png [temp]')],
      ['LoadImage file:// URL', loadWith('LoadImage', 'image', 'file:///etc/passwd')],
      ['LoadAudio absolute', loadWith('LoadAudio', 'audio', '/home/bob/a.wav')],
      ['VHS_LoadVideo ../', loadWith('VHS_LoadVideo', 'video', '../../secret.mp4')],
      [
        'output_path of a saver',
        { prompt: { ...sampleWorkflow(), '21': { class_type: 'Image Save', inputs: { output_path: '/var/www' } } } },
      ],
    ];

    it.each(tricks)('%s → 400 PATH_NOT_ALLOWED, nothing queued', async (_name, body) => {
      fake.clearRequests();
      const r = await postJson(env.gw, '/api/prompt', env.alice, body);
      expect(r.status).toBe(400);
      expect(r.json().error.code).toBe('PATH_NOT_ALLOWED');
      expect(received(fake, /prompt/, 'POST')).toEqual([]);
    });

    it('admins’ saves are prefixed like anyone’s; their loaders read anything', async () => {
      const r = await postJson(env.gw, '/prompt', env.admin, saveWith('boss'));
      expect(r.status).toBe(200);
      expect((await fake.arrival(r.json().prompt_id)).prompt['9'].inputs.filename_prefix).toBe('api-key/boss');
      await fake.waitForPrompt(r.json().prompt_id);
      fs.mkdirSync(path.join(fake.inputDir, 'carol'), { recursive: true });
      fs.writeFileSync(path.join(fake.inputDir, 'carol', 'c.png'), PNG);
      const load = await postJson(env.gw, '/prompt', env.admin, loadWith('LoadImage', 'image', 'carol/c.png'));
      expect(load.status).toBe(200);
      expect((await fake.arrival(load.json().prompt_id)).prompt['20'].inputs.image).toBe('carol/c.png');
      const asUser = await postJson(env.gw, '/prompt', env.alice, loadWith('LoadImage', 'image', 'carol/c.png'));
      expect(asUser.status).toBe(400); // alice's LoadImage reads alice/carol/c.png, which does not exist
      expect(JSON.stringify(asUser.json())).toContain('alice/carol/c.png');
      fs.rmSync(path.join(fake.inputDir, 'carol'), { recursive: true });
    });

    it('an empty prefix still lands in the user’s folder; a prefix already inside it is kept', async () => {
      const a = await postJson(env.gw, '/prompt', env.bob, saveWith(''));
      const b = await postJson(env.gw, '/prompt', env.bob, saveWith('bob/again'));
      expect((await fake.arrival(a.json().prompt_id)).prompt['9'].inputs.filename_prefix).toBe('bob/ComfyUI');
      expect((await fake.arrival(b.json().prompt_id)).prompt['9'].inputs.filename_prefix).toBe('bob/again');
      await fake.waitForPrompt(b.json().prompt_id);
    });
  });

  describe('uploads', () => {
    it('land in input/<user>/, whatever subfolder was asked for', async () => {
      const none = await upload(env, env.alice, [{ name: 'image', filename: 'a.png', data: PNG }]);
      expect(none.status).toBe(200);
      expect(none.json()).toMatchObject({ name: 'a.png', subfolder: 'alice', type: 'input' });
      const sub = await upload(env, env.alice, [
        { name: 'subfolder', value: 'pets' },
        { name: 'image', filename: 'cat.png', data: PNG },
      ]);
      expect(sub.json().subfolder).toBe('alice/pets');
      const already = await upload(env, env.alice, [
        { name: 'image', filename: 'dog.png', data: PNG },
        { name: 'subfolder', value: 'alice/pets' },
      ]);
      expect(already.json().subfolder).toBe('alice/pets');
      const spoofed = await upload(env, env.bob, [
        { name: 'subfolder', value: 'alice' },
        { name: 'image', filename: 'x.png', data: PNG },
      ]);
      expect(spoofed.json().subfolder).toBe('bob/alice');
      // A part charset other than UTF-8 would make ComfyUI read another value than the one checked (issue 9).
      const charset = await upload(env, env.bob, [
        { name: 'subfolder', value: '+AC4ALgAv-alice', headers: ['Content-Type: text/plain; charset=utf-7'] },
        { name: 'image', filename: 'y.png', data: PNG },
      ]);
      expect([charset.status, charset.json().error.code]).toEqual([400, 'INVALID_BODY']);
      const files = listFiles(fake.inputDir);
      expect(files).toEqual(expect.arrayContaining(['alice/a.png', 'alice/pets/cat.png', 'alice/pets/dog.png', 'bob/alice/x.png']));
      expect(files.some((f) => f.endsWith('y.png'))).toBe(false);
      expect(files.filter((f) => !f.startsWith('alice/') && !f.startsWith('bob/'))).toEqual([]);
    });

    const refused: [string, Parameters<typeof multipartBody>[0], string][] = [
      [
        'subfolder ../',
        [
          { name: 'subfolder', value: '../bob' },
          { name: 'image', filename: 'x.png', data: PNG },
        ],
        'PATH_NOT_ALLOWED',
      ],
      [
        'subfolder absolute',
        [
          { name: 'subfolder', value: '/tmp' },
          { name: 'image', filename: 'x.png', data: PNG },
        ],
        'PATH_NOT_ALLOWED',
      ],
      [
        'subfolder backslash',
        [
          { name: 'subfolder', value: '..\\bob' },
          { name: 'image', filename: 'x.png', data: PNG },
        ],
        'PATH_NOT_ALLOWED',
      ],
      [
        'subfolder %2e%2e',
        [
          { name: 'subfolder', value: '%2e%2e' },
          { name: 'image', filename: 'x.png', data: PNG },
        ],
        'PATH_NOT_ALLOWED',
      ],
      [
        'subfolder fullwidth',
        [
          { name: 'subfolder', value: '\uff0e\uff0e\uff0fbob' },
          { name: 'image', filename: 'x.png', data: PNG },
        ],
        'PATH_NOT_ALLOWED',
      ],
      ['filename ../', [{ name: 'image', filename: '../x.png', data: PNG }], 'PATH_NOT_ALLOWED'],
      ['filename with a directory', [{ name: 'image', filename: 'bob/x.png', data: PNG }], 'PATH_NOT_ALLOWED'],
      // a backslash in a quoted parameter is an escape to some parsers and a character to others: refused outright
      ['filename backslash', [{ name: 'image', filename: '..\\x.png', data: PNG }], 'INVALID_BODY'],
      [
        'RFC 5987 name*',
        [
          { name: 'subfolder"; name*=UTF-8\'\'subfolder; x="', value: '../bob' },
          { name: 'image', filename: 'x.png', data: PNG },
        ],
        'INVALID_BODY',
      ],
      ['filename*', [{ name: 'image"; filename*=UTF-8\'\'..%2Fbob%2Fx.png; y="', filename: 'x.png', data: PNG }], 'INVALID_BODY'],
    ];

    it.each(refused)('%s → 400, nothing reaches ComfyUI, nothing written', async (_n, parts, code) => {
      const before = listFiles(fake.inputDir);
      fake.clearRequests();
      const r = await upload(env, env.alice, parts);
      expect([r.status, r.json().error.code]).toEqual([400, code]);
      expect(received(fake, /upload/)).toEqual([]);
      expect(listFiles(fake.inputDir)).toEqual(before);
    });

    it('non-multipart bodies are refused', async () => {
      fake.clearRequests();
      const r = await raw(env.gw, 'POST', '/upload/image', {
        headers: { ...env.alice.headers, 'Content-Type': 'application/x-www-form-urlencoded' },
        body: 'subfolder=../bob',
      });
      expect([r.status, r.json().error.code]).toEqual([400, 'INVALID_BODY']);
      expect(received(fake, /upload/)).toEqual([]);
    });

    it('a mask may only be painted on the user’s own image', async () => {
      const ok = await upload(
        env,
        env.alice,
        [
          { name: 'image', filename: 'mask.png', data: PNG },
          { name: 'original_ref', value: JSON.stringify({ filename: 'cat.png', subfolder: 'alice/pets', type: 'input' }) },
          { name: 'subfolder', value: 'clipspace' },
        ],
        '/upload/mask',
      );
      expect(ok.status).toBe(200);
      expect(ok.json().subfolder).toBe('alice/clipspace');
      fake.clearRequests();
      for (const ref of [
        { filename: 'cat.png', subfolder: 'alice/pets', type: 'input' },
        { filename: 'alice/pets/cat.png', subfolder: '', type: 'input' },
        { filename: '../input/alice/pets/cat.png', type: 'output' },
        { filename: 'cat.png [input]', subfolder: 'alice/../alice/pets' },
      ]) {
        const r = await upload(
          env,
          env.bob,
          [
            { name: 'original_ref', value: JSON.stringify(ref) },
            { name: 'image', filename: 'm.png', data: PNG },
          ],
          '/api/upload/mask',
        );
        expect([JSON.stringify(ref), r.status, r.json().error.code]).toEqual([JSON.stringify(ref), 400, 'PATH_NOT_ALLOWED']);
      }
      expect(received(fake, /upload/)).toEqual([]);
    });

    it('a 200 MB upload streams through the rewriter without buffering', async () => {
      const size = 200 * 1024 * 1024;
      const mp = multipartUpload({ filename: 'big.bin', size, fields: { subfolder: 'big' } });
      global.gc?.();
      const rss0 = process.memoryUsage().rss;
      let peak = rss0;
      const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
      const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = http.request(
          {
            host: '127.0.0.1',
            port: env.gw.port,
            method: 'POST',
            path: '/api/upload/image',
            headers: { ...env.alice.headers, 'Content-Type': mp.contentType, 'Content-Length': mp.contentLength },
          },
          (r) => {
            let b = '';
            r.on('data', (c) => (b += c));
            r.on('end', () => resolve({ status: r.statusCode ?? 0, body: b }));
          },
        );
        req.on('error', reject);
        mp.stream.pipe(req);
      });
      clearInterval(timer);
      expect(res.status).toBe(200);
      expect(JSON.parse(res.body).subfolder).toBe('alice/big');
      expect(fs.statSync(path.join(fake.inputDir, 'alice/big/big.bin')).size).toBe(size);
      // two hops in this process (gateway + fake); the fake spools to disk
      expect(peak - rss0).toBeLessThan(64 * 1024 * 1024);
      fs.rmSync(path.join(fake.inputDir, 'alice/big'), { recursive: true });
    }, 60_000);
  });

  describe('/view', () => {
    let output: { filename: string; subfolder: string };
    let preview: { filename: string; subfolder: string };

    beforeAll(async () => {
      const r = await postJson(env.gw, '/prompt', env.alice, {
        prompt: { ...sampleWorkflow('view'), '10': { class_type: 'PreviewImage', inputs: { images: ['8', 0] } } },
      });
      const id = r.json().prompt_id;
      const h = await fake.waitForPrompt(id);
      output = h.outputs['9'].images[0];
      preview = h.outputs['10'].images[0];
      // the gateway learns a prompt's temp previews from the history (or `executed` events) it relays
      await raw(env.gw, 'GET', `/history/${id}`, { headers: env.alice.headers });
    });

    const q = (o: Record<string, string>) => new URLSearchParams(o).toString();

    it('serves a user their own outputs, inputs and temp previews', async () => {
      for (const p of ['/view', '/api/view', '//api//view', '/%76iew']) {
        const r = await raw(env.gw, 'GET', `${p}?${q({ filename: output.filename, subfolder: output.subfolder, type: 'output' })}`, {
          headers: env.alice.headers,
        });
        expect([p, r.status, r.headers['content-type']]).toEqual([p, 200, 'image/png']);
      }
      const ann = await raw(
        env.gw,
        'GET',
        `/view?${q({ filename: `${output.filename} [output]`, subfolder: output.subfolder, type: 'input' })}`,
        { headers: env.alice.headers },
      );
      expect(ann.status).toBe(200);
      const tmp = await raw(env.gw, 'GET', `/view?${q({ filename: preview.filename, subfolder: preview.subfolder, type: 'temp' })}`, {
        headers: env.alice.headers,
      });
      expect(tmp.status).toBe(200);
      const input = await raw(env.gw, 'GET', `/view?${q({ filename: 'cat.png', subfolder: 'alice/pets', type: 'input' })}`, {
        headers: env.alice.headers,
      });
      expect(input.status).toBe(200);
    });

    it('another user’s file answers exactly like a missing one, whatever the spelling', async () => {
      const missing = await raw(env.gw, 'GET', `/view?${q({ filename: 'nope.png', subfolder: 'bob', type: 'output' })}`, {
        headers: env.bob.headers,
      });
      expect(missing.status).toBe(404);
      const attempts = [
        q({ filename: output.filename, subfolder: output.subfolder, type: 'output' }),
        q({ filename: `${output.filename} [output]`, subfolder: 'alice' }),
        q({ filename: `alice/${output.filename}`, type: 'output' }),
        q({ filename: output.filename, subfolder: 'bob/../alice', type: 'output' }),
        q({ filename: output.filename, subfolder: '../output/alice', type: 'input' }),
        q({ filename: output.filename, subfolder: '/alice', type: 'output' }),
        q({ filename: output.filename, subfolder: 'alice', type: 'path' }),
        q({ filename: preview.filename, subfolder: preview.subfolder, type: 'temp' }),
        q({ filename: 'cat.png', subfolder: 'alice/pets', type: 'input' }),
        q({ filename: 'cat.png', subfolder: 'ALICE/pets', type: 'input' }),
        `filename=cat.png&subfolder=bob&subfolder=alice%2Fpets&type=input`,
        `filename=${encodeURIComponent(output.filename)}&subfolder=%61lice&type=output`,
      ];
      for (const a of attempts) {
        for (const p of ['/view', '/api/view', '//api//view']) {
          const r = await raw(env.gw, 'GET', `${p}?${a}`, { headers: env.bob.headers });
          expect([a, r.status, r.text, r.headers['content-type']]).toEqual([
            a,
            missing.status,
            missing.text,
            missing.headers['content-type'],
          ]);
        }
      }
    });

    it('admins may read everything', async () => {
      const r = await raw(env.gw, 'GET', `/view?${q({ filename: output.filename, subfolder: output.subfolder, type: 'output' })}`, {
        headers: env.admin.headers,
      });
      expect(r.status).toBe(200);
    });

    it('active content is never rendered in the gateway’s origin', async () => {
      const svg = await upload(env, env.alice, [
        { name: 'image', filename: 'x.svg', data: Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>') },
      ]);
      expect(svg.status).toBe(200);
      const r = await raw(env.gw, 'GET', `/view?${q({ filename: 'x.svg', subfolder: 'alice', type: 'input' })}`, {
        headers: env.alice.headers,
      });
      expect(r.status).toBe(200);
      expect(r.headers['content-disposition']).toMatch(/^attachment/);
      expect(r.headers['content-security-policy']).toMatch(/sandbox/);
      expect(r.headers['x-content-type-options']).toBe('nosniff');
    });
  });

  describe('/object_info', () => {
    it('lists only the caller’s own input files in loader options', async () => {
      await upload(env, env.bob, [{ name: 'image', filename: 'bobs.png', data: PNG }]);
      for (const p of ['/object_info', '/api/object_info', '/api/object_info/LoadImage']) {
        const a = (await raw(env.gw, 'GET', p, { headers: env.alice.headers })).json();
        const opts: string[] = a.LoadImage.input.required.image[0];
        expect(opts).toEqual(expect.arrayContaining(['alice/a.png', 'alice/pets/cat.png']));
        expect(opts.filter((o) => !o.startsWith('alice/'))).toEqual([]);
        expect(a.LoadImage.input.required.image[1]).toMatchObject({ image_upload: true });
      }
      const b = (await raw(env.gw, 'GET', '/object_info', { headers: env.bob.headers })).json();
      expect(b.LoadImage.input.required.image[0]).toContain('bob/bobs.png');
      expect(b.LoadImage.input.required.image[0].filter((o: string) => !o.startsWith('bob/'))).toEqual([]);
      expect(b.LoadImageMask.input.required.image[0].filter((o: string) => !o.startsWith('bob/'))).toEqual([]);
      expect(b.CheckpointLoaderSimple.input.required.ckpt_name[0]).toContain('fake_model.safetensors');
      const admin = (await raw(env.gw, 'GET', '/object_info', { headers: env.admin.headers })).json();
      // (ComfyUI's own LoadImage lists only input/'s top level; a picker that walks the folder shows an admin everyone's)
      expect(admin.FolderPicker.input.required.picture[0]).toEqual(expect.arrayContaining(['alice/a.png', 'bob/bobs.png']));
      expect(b.FolderPicker.input.required.picture[0]).toContain('bob/bobs.png');
      expect(b.FolderPicker.input.required.picture[0].filter((o: string) => !o.startsWith('bob/'))).toEqual([]);
    });
  });
});

describe('separate_users: false', () => {
  let env: IsolationEnv;
  beforeAll(async () => {
    env = await startIsolationEnv({ config: { separate_users: false } });
  });
  afterAll(async () => {
    await env.close();
  });

  it('files, queue and history are shared, but comfy-user and client ids stay bound to each user', async () => {
    const r = await postJson(env.gw, '/prompt', env.alice, { prompt: sampleWorkflow('shared'), client_id: 'c' });
    const id = r.json().prompt_id;
    const stored = await env.fake.arrival(id);
    expect(stored.prompt['9'].inputs.filename_prefix).toBe('shared');
    expect(stored.extra_data.client_id).not.toBe('c');
    const h = await env.fake.waitForPrompt(id);
    const img = h.outputs['9'].images[0];
    const v = await raw(env.gw, 'GET', `/view?filename=${img.filename}&type=output`, { headers: env.bob.headers });
    expect(v.status).toBe(200);
    const hist = (await raw(env.gw, 'GET', '/history', { headers: env.bob.headers })).json();
    expect(Object.keys(hist)).toContain(id);
    const users = (await raw(env.gw, 'GET', '/users', { headers: env.bob.headers })).json().users;
    expect(Object.values(users)).toEqual(['bob']);
    const ids = received(env.fake, /\/view/).map((x) => x.headers['comfy-user']);
    expect(ids[0]).toMatch(/^bob_/);
  });
});
