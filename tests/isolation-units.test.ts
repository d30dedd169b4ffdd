/** Issue 5: the isolation building blocks on their own (path normaliser, JSON scanner, ledger; the multipart rewriter: isolation-multipart). */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { AppError } from '../gateway/errors';
import { scanObject } from '../gateway/proxy/isolation/jsonScan';
import { createLedger } from '../gateway/proxy/isolation/ledger';
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
    '..',
    '../x',
    'a/../b',
    'a/..',
    '/abs',
    'C:x',
    'c:/x',
    'a\\b',
    'a\u0000b',
    'a\nb',
    'a\u0085b',
    '%2e%2e/x',
    'x%2Fy',
    'x%5cy',
    'x%00',
    '\uff0e\uff0e/x',
    'a\uff0fb',
    'a\uff3cb',
    '\u2024\u2024/x',
    'a\u2215b',
    'a\u2044b',
    'a\u29f8b',
    'a\ufe52b',
    '\u2025/x',
    'a\ufe55b',
    'x'.repeat(5000),
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
      return Object.fromEntries(
        Array.from({ length: crypto.randomInt(4) }, () => [crypto.randomBytes(3).toString('hex') + '"', rnd(d + 1)]),
      );
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

describe('WebSocket hooks', () => {
  const owners: Record<string, string> = { 'pid-alice': 'alice', 'pid-bob': 'bob' };
  const ledger = { owner: (id: string) => owners[id], addFiles: () => undefined } as unknown as Parameters<
    typeof createIsolationWsHooks
  >[0]['ledger'];
  const tracker = {
    state: { kind: 'unknown' },
    idle: () => false,
    onStatus: () => undefined,
    onPromptEvent: () => undefined,
  } as Parameters<typeof createIsolationWsHooks>[0]['tracker'];
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
    const executed = pyJson({
      type: 'executed',
      data: { node: '9', output: { text: [{ prompt_id: 'pid-alice' }] }, prompt_id: 'pid-bob' },
    });
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
