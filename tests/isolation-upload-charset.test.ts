/**
 * Issue 9 (High): multipart encodings on POST /upload/image and /upload/mask. ComfyUI's parser (aiohttp) decodes
 * form fields through a first `_charset_` part, part-level `charset=`, Content-Transfer-Encoding and RFC 5987
 * `name*`/`filename*`; the fake does the same, so each trick below really would land in alice's folders if it got
 * through. Through the gateway every one is refused (400 INVALID_BODY) with nothing sent to ComfyUI or written.
 */
import fs from 'node:fs';
import path from 'node:path';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { ALICE_PNG, ATTACKS, B, BOB_PNG, MASK_REF_UTF7, body, field, file, listFiles, type Part } from './helpers/uploadAttacks';
import { raw, received, startIsolationEnv, until, type IsolationEnv } from './isolation-env';

describe('multipart encodings on uploads', () => {
  let env: IsolationEnv;
  let fake: FakeComfy;
  const all = () => [
    ...listFiles(fake.inputDir).map((f) => `input/${f}`),
    ...listFiles(fake.outputDir).map((f) => `output/${f}`),
    ...listFiles(fake.tempDir).map((f) => `temp/${f}`),
  ];
  const post = (route: string, b: Buffer, headers: Record<string, string>, contentType = `multipart/form-data; boundary=${B}`) =>
    raw(env.gw, 'POST', route, { headers: { ...headers, 'Content-Type': contentType }, body: b });

  beforeAll(async () => {
    fake = await startFakeComfy({ promptDelayMs: 20 });
    env = await startIsolationEnv({ fakeInstance: fake, config: { comfyui: { input_dir: fake.inputDir } } });
  });
  afterAll(async () => {
    await env.close();
    await fake.close();
  });
  beforeEach(() => {
    for (const dir of [path.join(fake.inputDir, 'alice'), path.join(fake.outputDir, 'alice')]) {
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'secret.png'), ALICE_PNG);
    }
  });

  it.each(ATTACKS)('the fake (like aiohttp) falls for %s', async (_n, route, parts, target) => {
    const r = await raw({ port: Number(new URL(fake.url).port) }, 'POST', route.replace(/^\/api/, ''), {
      headers: { 'Content-Type': `multipart/form-data; boundary=${B}` },
      body: body(parts('bob/')),
    });
    expect(r.status).toBe(200);
    const [area, ...rest] = target.split('/');
    const dir = area === 'output' ? fake.outputDir : fake.inputDir;
    expect(fs.readFileSync(path.join(dir, ...rest))).toEqual(BOB_PNG);
  });

  it.each(ATTACKS)('through the gateway, %s → 400 INVALID_BODY; nothing reaches ComfyUI or is written', async (_n, route, parts) => {
    const before = all();
    fake.clearRequests();
    const r = await post(route, body(parts('')), env.bob.headers);
    expect([r.status, r.json().error.code]).toEqual([400, 'INVALID_BODY']);
    expect(received(fake, /upload/)).toEqual([]);
    expect(all()).toEqual(before);
    expect(fs.readFileSync(path.join(fake.inputDir, 'alice', 'secret.png'))).toEqual(ALICE_PNG);
    expect(fs.readFileSync(path.join(fake.outputDir, 'alice', 'secret.png'))).toEqual(ALICE_PNG);
  });

  const refused: [string, string, Part[]][] = [
    ['_charset_ not first', '/upload/image', [file(), field('_charset_', 'utf-7'), field('subfolder', 'x')]],
    ['_charset_ in another case', '/upload/image', [field('_CHARSET_', 'utf-7'), file()]],
    ['_charset_ that names utf-8', '/upload/image', [field('_charset_', 'utf-8'), file()]],
    [
      '_charset_ on the mask route',
      '/api/upload/mask',
      [
        field('_charset_', 'utf-7'),
        file(),
        field('original_ref', JSON.stringify({ filename: 'secret.png', subfolder: 'bob', type: 'input' })),
      ],
    ],
    [
      'UTF-7 original_ref gaining a second subfolder',
      '/upload/mask',
      [field('_charset_', 'utf-7'), file(), field('original_ref', MASK_REF_UTF7)],
    ],
    [
      'a part charset on original_ref',
      '/upload/mask',
      [file(), field('original_ref', '{"filename":"secret.png"}', ['Content-Type: text/plain; charset=utf-16'])],
    ],
    ['utf-16 on type', '/upload/image', [file(), field('type', 'output', ['Content-Type: text/plain; charset=utf-16le'])]],
    ['charset on the file part', '/upload/image', [file('image', 'a.png', BOB_PNG, ['Content-Type: image/png; charset=utf-7'])]],
    [
      'base64 on the file part',
      '/upload/image',
      [file('image', 'a.png', Buffer.from(BOB_PNG.toString('base64')), ['Content-Type: image/png', 'Content-Transfer-Encoding: base64'])],
    ],
    ['a duplicate subfolder', '/upload/image', [file(), field('subfolder', 'a'), field('subfolder', 'b')]],
    ['a duplicate type', '/upload/image', [file(), field('type', 'input'), field('type', 'output')]],
    ['a duplicate overwrite', '/upload/image', [file(), field('overwrite', 'false'), field('overwrite', 'true')]],
    ['a second image', '/upload/image', [file(), file('image', 'b.png')]],
    ['an unknown field', '/upload/image', [file(), field('comfy_user', 'alice')]],
    ['a field name in another case', '/upload/image', [file(), field('Subfolder', '../alice')]],
    ['original_ref on the image route', '/upload/image', [file(), field('original_ref', '{}')]],
    ['a subfolder sent as a file', '/upload/image', [file(), file('subfolder', 'alice')]],
    ['the image sent as a field', '/upload/image', [field('image', 'x')]],
    ['an unknown type', '/upload/image', [file(), field('type', 'models')]],
    ['a type with a space', '/upload/image', [file(), field('type', 'output ')]],
    ['a type in another case', '/upload/image', [file(), field('type', 'Output')]],
    [
      'a field that is not UTF-8',
      '/upload/image',
      [file(), [['Content-Disposition: form-data; name="subfolder"'], Buffer.from([0x2e, 0xc0, 0xae])]],
    ],
  ];

  it.each(refused)('%s → 400 INVALID_BODY; nothing reaches ComfyUI or is written', async (_n, route, parts) => {
    const before = all();
    fake.clearRequests();
    const r = await post(route, body(parts), env.bob.headers);
    expect([r.status, r.json().error.code]).toEqual([400, 'INVALID_BODY']);
    expect(received(fake, /upload/)).toEqual([]);
    expect(all()).toEqual(before);
  });

  it('a charset other than UTF-8 on the whole body is refused too', async () => {
    fake.clearRequests();
    const r = await post('/upload/image', body([file()]), env.bob.headers, `multipart/form-data; charset=utf-7; boundary=${B}`);
    expect([r.status, r.json().error.code]).toEqual([400, 'INVALID_BODY']);
    expect(received(fake, /upload/)).toEqual([]);
  });

  it('what browsers send still works: utf-8 / us-ascii charsets, every area, overwrite, a mask on one’s own image', async () => {
    const a = await post(
      '/upload/image',
      body([
        file('image', 'ok.png'),
        field('subfolder', 'pets', ['Content-Type: text/plain; charset=UTF-8']),
        field('type', 'input', ['Content-Type: text/plain; charset="us-ascii"']),
        field('overwrite', 'true'),
      ]),
      env.bob.headers,
    );
    expect([a.status, a.json()]).toEqual([200, { name: 'ok.png', subfolder: 'bob/pets', type: 'input' }]);
    for (const type of ['output', 'temp']) {
      const r = await post('/api/upload/image', body([file('image', `${type}.png`), field('type', type)]), env.bob.headers);
      expect([r.status, r.json()]).toEqual([200, { name: `${type}.png`, subfolder: 'bob', type }]);
    }
    const m = await post(
      '/upload/mask',
      body([
        file('image', 'mask.png'),
        field('original_ref', JSON.stringify({ filename: 'ok.png', subfolder: 'bob/pets', type: 'input' })),
        field('type', 'input'),
        field('subfolder', 'clipspace'),
      ]),
      env.bob.headers,
    );
    expect([m.status, m.json()]).toEqual([200, { name: 'mask.png', subfolder: 'bob/clipspace', type: 'input' }]);
    expect(fs.readFileSync(path.join(fake.inputDir, 'bob', 'pets', 'ok.png'))).toEqual(BOB_PNG);
    expect(fs.existsSync(path.join(fake.outputDir, 'bob', 'output.png'))).toBe(true);
    expect(fs.existsSync(path.join(fake.tempDir, 'bob', 'temp.png'))).toBe(true);
  });

  it('a bad subfolder after a small file part: refused before ComfyUI is called', async () => {
    const before = listFiles(fake.inputDir);
    fake.clearRequests();
    const r = await post(
      '/api/upload/image',
      body([file('image', 'late.png', Buffer.alloc(256 * 1024, 1)), field('subfolder', '../bob')]),
      env.alice.headers,
    );
    expect([r.status, r.json().error.code]).toEqual([400, 'PATH_NOT_ALLOWED']);
    expect(received(fake, /upload/)).toEqual([]);
    expect(listFiles(fake.inputDir)).toEqual(before);
  });

  it('a bad subfolder after a large file part aborts the upstream request: nothing written', async () => {
    const before = listFiles(fake.inputDir);
    fake.clearRequests();
    const r = await post(
      '/api/upload/image',
      body([file('image', 'late.png', Buffer.alloc(3 * 1024 * 1024, 1)), field('subfolder', '../bob')]),
      env.alice.headers,
    );
    expect([r.status, r.json().error.code]).toEqual([400, 'PATH_NOT_ALLOWED']);
    // ComfyUI saw the start of the body, then the connection was cut: it never got a whole body to act on.
    await until(() => received(fake, /upload/).some((q) => q.aborted), 10_000, 'the aborted upstream request');
    for (const req of received(fake, /upload/)) expect(req.complete).toBe(false);
    expect(listFiles(fake.inputDir)).toEqual(before);
  });
});
