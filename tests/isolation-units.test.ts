/** Issue 5: the isolation building blocks on their own (path normaliser, JSON scanner, multipart rewriter, ledger). */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import pino from 'pino';
import { AppError } from '../gateway/errors';
import { scanObject } from '../gateway/proxy/isolation/jsonScan';
import { createLedger } from '../gateway/proxy/isolation/ledger';
import { formDataBoundary, multipartRewriter, parseDisposition } from '../gateway/proxy/isolation/multipart';
import { normaliseRef, parseAnnotated, splitUserPath, underUser } from '../gateway/proxy/isolation/paths';
import { confinePromptPaths } from '../gateway/proxy/isolation/prompt';
import { createIsolationWsHooks } from '../gateway/proxy/isolation/ws';
import { pyJson } from './helpers/fakeComfy';

const code = (f: () => unknown): string | null => {
  try {
    f();
    return null;
  } catch (e) {
    return e instanceof AppError ? e.code : String(e);
  }
};

describe('splitUserPath', () => {
  it.each([
    ['a/b.png', ['a', 'b.png']],
    ['./a//b/', ['a', 'b']],
    ['', []],
    ['a..b/c...png', ['a..b', 'c...png']],
    ['ünïcode/файл.png', ['ünïcode', 'файл.png']],
    ['%date%/x', ['%date%', 'x']],
  ])('%j → %j', (v, segs) => {
    expect(splitUserPath(v)).toEqual(segs);
  });

  it.each([
    '..', '../x', 'a/../b', 'a/..', '/abs', 'C:x', 'c:/x', 'a\\b', 'a\u0000b', 'a\nb', 'a\u0085b', '%2e%2e/x', 'x%2Fy', 'x%5cy', 'x%00',
    '\uff0e\uff0e/x', 'a\uff0fb', 'a\uff3cb', '\u2024\u2024/x', 'a\u2215b', 'a\u2044b', 'a\u29f8b', 'a\ufe52b', '\u2025/x', 'a\ufe55b', 'x'.repeat(5000),
  ])('%j is refused with PATH_NOT_ALLOWED', (v) => {
    expect(code(() => splitUserPath(v))).toBe('PATH_NOT_ALLOWED');
  });

  it('prefixes under the user only once', () => {
    expect(underUser('alice', ['x'])).toEqual(['alice', 'x']);
    expect(underUser('alice', ['alice', 'x'])).toEqual(['alice', 'x']);
    expect(underUser('alice', ['Alice', 'x'])).toEqual(['alice', 'Alice', 'x']);
  });

  it('reads annotated names the way ComfyUI does', () => {
    expect(parseAnnotated('a/b.png [output]')).toEqual({ name: 'a/b.png', type: 'output', suffix: ' [output]' });
    expect(parseAnnotated('b.png [temp]')).toEqual({ name: 'b.png', type: 'temp', suffix: ' [temp]' });
    expect(parseAnnotated('b.png[input]')).toEqual({ name: 'b.pn', type: 'input', suffix: 'g[input]' });
    expect(parseAnnotated('b.png')).toEqual({ name: 'b.png', type: null, suffix: '' });
  });

  it('normalises a /view reference like ComfyUI resolves it (basename of the file name)', () => {
    expect(normaliseRef('output', 'alice//x', 'bob/y.png').ref).toEqual({ type: 'output', subfolder: 'alice/x', filename: 'y.png' });
    expect(normaliseRef('input', '', 'a/b/c.png', { keepDirs: true }).segs).toEqual(['a', 'b', 'c.png']);
    expect(code(() => normaliseRef('output', '', ''))).toBe('PATH_NOT_ALLOWED');
  });
});

describe('confinePromptPaths', () => {
  it('prefixes saves, confines loaders, leaves other inputs alone', () => {
    const prompt: Record<string, any> = {
      '1': { class_type: 'SaveImage', inputs: { filename_prefix: 'x/y', images: ['2', 0] } },
      '2': { class_type: 'LoadImage', inputs: { image: 'pic.png [output]' } },
      '3': { class_type: 'CLIPTextEncode', inputs: { text: '../../etc/passwd' } },
      '4': { class_type: 'LoadImageFromUrl', inputs: { image: 'https://example.com/a.png' } },
      '5': { class_type: 'SaveAnimatedWEBP', inputs: { filename_prefix: 'alice/anim' } },
      '6': { class_type: 'LoadImage', inputs: { image: 'ComfyUI_temp_x_00001_.png [temp]' } },
    };
    confinePromptPaths(prompt, 'alice', (sub, name) => sub === '' && name === 'ComfyUI_temp_x_00001_.png');
    expect(prompt['1'].inputs.filename_prefix).toBe('alice/x/y');
    expect(prompt['2'].inputs.image).toBe('alice/pic.png [output]');
    expect(prompt['3'].inputs.text).toBe('../../etc/passwd');
    expect(prompt['4'].inputs.image).toBe('https://example.com/a.png');
    expect(prompt['5'].inputs.filename_prefix).toBe('alice/anim');
    expect(prompt['6'].inputs.image).toBe('ComfyUI_temp_x_00001_.png [temp]');
  });
});

describe('scanObject', () => {
  const cases: unknown[] = [
    {},
    { a: 1 },
    { 'k"ey': 'v\\"al', b: [1, { c: '}' }, '[', ']'], d: null, e: true, f: false, g: -1.5e3 },
    { x: 'ends with backslash \\', y: '\\\\', z: '\u00e9\u4e2d\ud83d\ude00' },
    { nested: { deep: { deeper: [[[{ s: '{"prompt_id": "fake"}' }]]] } }, after: 'x' },
  ];

  it.each(cases)('finds exactly the top-level members of %j (both JSON styles)', (obj) => {
    for (const text of [JSON.stringify(obj), pyJson(obj), JSON.stringify(obj, null, 2)]) {
      const b = Buffer.from(text);
      const m = scanObject(b)!;
      expect(m.map((x) => x.key)).toEqual(Object.keys(obj as object));
      for (const x of m) expect(JSON.parse(b.toString('utf8', x.start, x.end))).toEqual((obj as any)[x.key]);
    }
  });

  it('agrees with JSON.parse on random objects', () => {
    const rnd = (d: number): unknown => {
      const k = crypto.randomInt(d > 3 ? 4 : 7);
      if (k === 0) return crypto.randomInt(1e6) - 5e5;
      if (k === 1) return crypto.randomBytes(crypto.randomInt(12)).toString('latin1') + '"\\{}[],:';
      if (k === 2) return [null, true, false][crypto.randomInt(3)];
      if (k === 3) return crypto.randomInt(100) / 7;
      if (k === 4) return Array.from({ length: crypto.randomInt(4) }, () => rnd(d + 1));
      return Object.fromEntries(Array.from({ length: crypto.randomInt(4) }, () => [crypto.randomBytes(3).toString('hex') + '"', rnd(d + 1)]));
    };
    for (let i = 0; i < 300; i++) {
      const obj = Object.fromEntries(Array.from({ length: 1 + crypto.randomInt(6) }, (_, j) => [`k${j}\\"`, rnd(0)]));
      const b = Buffer.from(i % 2 ? pyJson(obj) : JSON.stringify(obj));
      const m = scanObject(b)!;
      expect(m.map((x) => x.key)).toEqual(Object.keys(obj));
      for (const x of m) expect(JSON.parse(b.toString('utf8', x.start, x.end))).toEqual(JSON.parse(JSON.stringify(obj[x.key])));
    }
  });

  it.each(['[]', '"x"', '{', '{"a":}', '{"a":1,}', '{"a" 1}', '{"a":"unterminated}', ''])('returns null for %j', (t) => {
    expect(scanObject(Buffer.from(t))).toBeNull();
  });
});

describe('multipart rewriter', () => {
  const B = 'XyZ-boundary-123';
  const file = crypto.randomBytes(200_000);
  const body = Buffer.concat([
    Buffer.from(`preamble junk\r\n--${B}\r\nContent-Disposition: form-data; name="type"\r\n\r\ninput\r\n`),
    Buffer.from(`--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n`),
    file,
    Buffer.from(`\r\n--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\nContent-Type: text/plain; charset="UTF-8"\r\n\r\nsub/dir\r\n`),
    Buffer.from(`--${B}--\r\nepilogue`),
  ]);
  const rules = (extra: Partial<Parameters<typeof multipartRewriter>[0]> = {}) => ({
    boundary: B,
    fields: { subfolder: (v: string) => underUser('alice', splitUserPath(v)).join('/'), type: (v: string) => v },
    ensure: { subfolder: () => 'alice' },
    files: {
      image: (n: string) => {
        if (splitUserPath(n).length !== 1) throw new AppError(400, 'PATH_NOT_ALLOWED', 'dir');
      },
    },
    ...extra,
  });
  async function run(input: Buffer, chunk: (i: number) => number, r = rules()): Promise<Buffer> {
    const pieces: Buffer[] = [];
    for (let i = 0, n = 0; i < input.length; n++) {
      const len = Math.max(1, chunk(n));
      pieces.push(input.subarray(i, i + len));
      i += len;
    }
    const out: Buffer[] = [];
    const t = Readable.from(pieces).pipe(multipartRewriter(r));
    for await (const c of t) out.push(c as Buffer);
    return Buffer.concat(out);
  }

  it('gives the same output however the body is chunked', async () => {
    const whole = await run(body, () => body.length);
    expect(whole.toString('latin1')).toContain(`--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\nalice/sub/dir\r\n--${B}--\r\n`);
    expect(whole.toString('latin1')).not.toContain('charset');
    expect(whole.toString('latin1')).not.toContain('preamble');
    expect(whole.toString('latin1')).not.toContain('epilogue');
    expect(whole.includes(file)).toBe(true);
    expect(await run(body, () => 1 + crypto.randomInt(70))).toEqual(whole);
    expect(await run(body, () => 4096)).toEqual(whole);
    // byte by byte, on a body small enough for it: boundaries split at every possible offset
    const small = Buffer.concat([body.subarray(0, 200), body.subarray(body.length - 200)]);
    expect(await run(small, () => 1)).toEqual(await run(small, () => small.length));
    const truncated = await run(body.subarray(0, body.length - 400), () => 1000).catch((e) => e);
    expect(truncated).toBeInstanceOf(AppError);
  });

  it('adds the subfolder when the body has none', async () => {
    const b = Buffer.from(`--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nPNG\r\n--${B}--\r\n`);
    const out = (await run(b, () => 3)).toString();
    expect(out).toBe(`--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nPNG\r\n--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\nalice\r\n--${B}--\r\n`);
  });

  it.each([
    ['a bare boundary inside a part', `--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nxx\n--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n../x\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a truncated body', `--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nxx`, 'INVALID_BODY'],
    ['name*', `--${B}\r\nContent-Disposition: form-data; name*=UTF-8''subfolder\r\n\r\n../x\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['two dispositions', `--${B}\r\nContent-Disposition: form-data; name="x"\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n../x\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a folded header', `--${B}\r\nContent-Disposition: form-data;\r\n name="subfolder"\r\n\r\n../x\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a part without headers', `--${B}\r\n\r\n../x\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a bad subfolder', `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n../x\r\n--${B}--\r\n`, 'PATH_NOT_ALLOWED'],
    ['a directory in the file name', `--${B}\r\nContent-Disposition: form-data; name="image"; filename="a/b.png"\r\n\r\nx\r\n--${B}--\r\n`, 'PATH_NOT_ALLOWED'],
    ['a _charset_ part', `--${B}\r\nContent-Disposition: form-data; name="_charset_"\r\n\r\nutf-7\r\n--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a utf-7 part charset', `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\nContent-Type: text/plain; charset=utf-7\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a quoted, upper-case utf-7 part charset', `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\nContent-Type: text/plain; CHARSET = "UTF-7"\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a second charset after utf-8', `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\nContent-Type: text/plain; charset=utf-8; charset=utf-7\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a charset on the file part', `--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png; charset=utf-16\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['base64 transfer encoding', `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\nContent-Transfer-Encoding: base64\r\n\r\nLi4vYm9i\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['quoted-printable transfer encoding', `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\ncontent-transfer-encoding: Quoted-Printable\r\n\r\n=2E=2E/bob\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['7bit transfer encoding on the file', `--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Transfer-Encoding: 7bit\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['another part header', `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\nContent-Encoding: gzip\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['two content types', `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\nContent-Type: text/plain\r\nContent-Type: text/plain; charset=utf-7\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['an unknown field', `--${B}\r\nContent-Disposition: form-data; name="comfy_user"\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a field name in another case', `--${B}\r\nContent-Disposition: form-data; name="Subfolder"\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a duplicate field', `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\nx\r\n--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\ny\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a duplicate file', `--${B}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nx\r\n--${B}\r\nContent-Disposition: form-data; name="image"; filename="b.png"\r\n\r\ny\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a field sent as a file', `--${B}\r\nContent-Disposition: form-data; name="subfolder"; filename="x"\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a file sent as a field', `--${B}\r\nContent-Disposition: form-data; name="image"\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['an empty file name', `--${B}\r\nContent-Disposition: form-data; name="image"; filename=""\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['name*0 continuation', `--${B}\r\nContent-Disposition: form-data; name*0="sub"; name*1="folder"\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['an unquoted non-token value', `--${B}\r\nContent-Disposition: form-data; name="image"; filename=a/b.png\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['a non-ASCII parameter name', `--${B}\r\nContent-Disposition: form-data; \u212Aey="x"; name="subfolder"\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['two semicolons in a quoted value', `--${B}\r\nContent-Disposition: form-data; name="image"; filename="a;b;c.png"\r\n\r\nx\r\n--${B}--\r\n`, 'INVALID_BODY'],
    ['an oversized subfolder', `--${B}\r\nContent-Disposition: form-data; name="subfolder"\r\n\r\n${'a'.repeat(70_000)}\r\n--${B}--\r\n`, 'INVALID_BODY'],
  ])('refuses %s', async (_n, text, expected) => {
    const err = await run(Buffer.from(text), () => 7).catch((e) => e);
    expect(err).toBeInstanceOf(AppError);
    expect((err as AppError).code).toBe(expected);
  });

  it('parses Content-Type boundaries and dispositions strictly', () => {
    expect(formDataBoundary('multipart/form-data; boundary=abc')).toBe('abc');
    expect(formDataBoundary('multipart/form-data; boundary="a b:c"')).toBe('a b:c');
    expect(formDataBoundary('multipart/form-data; boundary=a; boundary=b')).toBeNull();
    expect(formDataBoundary('multipart/mixed; boundary=a')).toBeNull();
    expect(formDataBoundary('application/json')).toBeNull();
    expect(formDataBoundary('multipart/form-data; charset=utf-8; boundary=a')).toBe('a');
    expect(formDataBoundary('multipart/form-data; charset=utf-7; boundary=a')).toBeNull();
    expect(parseDisposition('form-data; name="a;b"; filename="x.png"')).toEqual({ name: 'a;b', filename: 'x.png' });
    expect(code(() => parseDisposition('form-data; name="a"; NAME="b"'))).toBe('INVALID_BODY');
    expect(code(() => parseDisposition('attachment; name="a"'))).toBe('INVALID_BODY');
  });
});

describe('WebSocket hooks', () => {
  const owners: Record<string, string> = { 'pid-alice': 'alice', 'pid-bob': 'bob' };
  const ledger = { owner: (id: string) => owners[id], addFiles: () => undefined } as unknown as Parameters<typeof createIsolationWsHooks>[0]['ledger'];
  const tracker = { state: { kind: 'unknown' }, idle: () => false, onStatus: () => undefined, onPromptEvent: () => undefined } as Parameters<typeof createIsolationWsHooks>[0]['tracker'];
  const clientIds = { upstreamFor: (u: string, c: string) => `up-${u}-${c}`, fresh: () => 'fresh-id', nobody: () => 'nobody' };
  const hooks = createIsolationWsHooks({ clientIds, ledger, tracker });
  const session = (user: string, clientId: string | null) => {
    const principal = { username: user, role: 'user' as const, permissions: [], source: 'jwt' as const };
    return { principal, clientId, upstreamClientId: hooks.upstreamClientId!(principal, clientId) };
  };
  const pass = (s: ReturnType<typeof session>, text: string) => hooks.fromUpstream!(s, Buffer.from(text), false) !== null;

  it('attributes progress frames by their own top-level prompt id, whatever the node id says', () => {
    const a = session('alice', 'c');
    const b = session('bob', 'c');
    const forAlice = pyJson({ type: 'progress', data: { value: 1, max: 2, prompt_id: 'pid-alice', node: '3' } });
    expect([pass(a, forAlice), pass(b, forAlice)]).toEqual([true, false]);
    expect(pass(a, JSON.stringify({ type: 'progress', data: { value: 1, max: 2, prompt_id: 'pid-alice', node: '3' } }))).toBe(true);
    const sneaky = pyJson({ type: 'progress', data: { value: 1, max: 2, node: '", "prompt_id": "pid-alice', prompt_id: 'pid-bob' } });
    expect([pass(a, sneaky), pass(b, sneaky)]).toEqual([false, true]);
    const twoKeys = pyJson({ type: 'progress', data: { nested: { prompt_id: 'pid-alice' }, prompt_id: 'pid-bob' } });
    expect([pass(a, twoKeys), pass(b, twoKeys)]).toEqual([false, true]);
    const unknown = pyJson({ type: 'progress', data: { prompt_id: 'pid-nobody' } });
    expect([pass(a, unknown), pass(b, unknown)]).toEqual([false, false]);
    const executed = pyJson({ type: 'executed', data: { node: '9', output: { text: [{ prompt_id: 'pid-alice' }] }, prompt_id: 'pid-bob' } });
    expect([pass(a, executed), pass(b, executed)]).toEqual([false, true]);
  });

  it('maps the status sid back to the client’s own id, and invents one for sockets that asked for none', () => {
    const a = session('alice', 'tab');
    const out = hooks.fromUpstream!(a, Buffer.from(pyJson({ type: 'status', data: { status: {}, sid: a.upstreamClientId } })), false);
    expect(JSON.parse(String(out)).data.sid).toBe('tab');
    const n = session('alice', null);
    expect(n.upstreamClientId).toBe('up-alice-fresh-id');
    const out2 = hooks.fromUpstream!(n, Buffer.from(pyJson({ type: 'status', data: { status: {}, sid: n.upstreamClientId } })), false);
    expect(JSON.parse(String(out2)).data.sid).toBe('fresh-id');
    const foreign = hooks.fromUpstream!(a, Buffer.from(pyJson({ type: 'status', data: { status: {}, sid: 'someone-else' } })), false);
    expect(JSON.parse(String(foreign)).data.sid).toBeUndefined();
  });

  it('ownerless binary frames go only to a socket in the middle of one of its user’s prompts', () => {
    const a = session('alice', 'x');
    const b = session('bob', 'x');
    const text = Buffer.concat([Buffer.from([0, 0, 0, 3, 0, 0, 0, 1]), Buffer.from('3hello')]);
    const bin = (s: ReturnType<typeof session>) => hooks.fromUpstream!(s, text, true) !== null;
    expect([bin(a), bin(b)]).toEqual([false, false]);
    pass(a, pyJson({ type: 'execution_start', data: { prompt_id: 'pid-alice' } }));
    expect([bin(a), bin(b)]).toEqual([true, false]);
    pass(a, pyJson({ type: 'executing', data: { node: null, prompt_id: 'pid-alice' } }));
    expect([bin(a), bin(b)]).toEqual([false, false]);
    expect(hooks.fromUpstream!(a, Buffer.from([0, 0]), true)).toBeNull();
    expect(hooks.fromUpstream!(a, Buffer.from('not json'), false)).toBeNull();
  });
});

describe('prompt ledger', () => {
  const logger = pino({ level: 'silent' });
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-ledger-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('is bounded, persisted atomically with mode 0600, and reloads with files and owners', async () => {
    const file = path.join(dir, 'ledger.json');
    const l = createLedger({ file, logger, max: 3 });
    for (const id of ['a', 'b', 'c', 'd']) l.add({ id, owner: id === 'b' ? 'bob' : 'alice', clientId: '', upstreamClientId: `u-${id}` });
    l.addFiles('c', [{ type: 'temp', subfolder: '', filename: 't.png' }]);
    expect(l.size).toBe(3);
    expect(l.owner('a')).toBeUndefined();
    expect(l.idsOf('alice')).toEqual(['c', 'd']);
    await l.close();
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const again = createLedger({ file, logger, max: 3 });
    expect(again.idsOf('bob')).toEqual(['b']);
    expect(again.ownsFile('alice', { type: 'temp', subfolder: '', filename: 't.png' })).toBe(true);
    expect(again.ownsFile('bob', { type: 'temp', subfolder: '', filename: 't.png' })).toBe(false);
    expect(again.get('d')?.upstreamClientId).toBe('u-d');
    await again.close();
  });

  it('moves a corrupt file aside instead of overwriting it', async () => {
    const file = path.join(dir, 'ledger.json');
    fs.writeFileSync(file, '{"version":1,"prompts":[[');
    const l = createLedger({ file, logger });
    expect(l.size).toBe(0);
    expect(fs.readdirSync(dir).some((f) => f.startsWith('ledger.json.corrupt-'))).toBe(true);
    await l.close();
  });
});
