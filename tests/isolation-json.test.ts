/**
 * Issue 9 (Low): JSON bodies the gateway reads and forwards (POST /prompt, /queue, /history, mask refs) are read the
 * way ComfyUI's Python json reads them: deep nesting, NaN/Infinity, a BOM, bad UTF-8 and conflicting duplicate
 * keys are 400 INVALID_BODY with nothing proxied, numbers reach ComfyUI with their exact text, and an unexpected
 * error on the interceptor path is logged.
 */
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { flushedLogs } from './helpers/gateway';
import { raw, received, startIsolationEnv, type IsolationEnv } from './isolation-env';

describe('JSON bodies read like Python reads them', () => {
  let env: IsolationEnv;
  let fake: FakeComfy;
  beforeAll(async () => {
    fake = await startFakeComfy({ promptDelayMs: 20 });
    env = await startIsolationEnv({ fakeInstance: fake });
  });
  afterAll(async () => {
    await env.close();
    await fake.close();
  });

  const send = (path: string, body: string | Buffer) =>
    raw(env.gw, 'POST', path, { headers: { ...env.bob.headers, 'Content-Type': 'application/json' }, body });
  const prompt = JSON.stringify({ prompt: sampleWorkflow('json') });
  const deep = (n: number) => `{"prompt":${JSON.stringify(sampleWorkflow('deep'))},"extra_data":{"x":${'['.repeat(n)}${']'.repeat(n)}}}`;

  const refused: [string, string, string | Buffer][] = [
    ['100 000 levels of nesting', '/prompt', deep(100_000)],
    ['129 levels of nesting', '/api/prompt', deep(129)],
    ['nesting inside a queue edit', '/queue', `{"delete":${'['.repeat(5000)}${']'.repeat(5000)}}`],
    ['nesting inside a history edit', '/api/history', `{"delete":${'{"a":'.repeat(3000)}1${'}'.repeat(3000)}}`],
    ['NaN', '/prompt', prompt.replace('"cfg":7', '"cfg":NaN')],
    ['Infinity', '/prompt', prompt.replace('"cfg":7', '"cfg":Infinity')],
    ['-Infinity', '/api/prompt', prompt.replace('"cfg":7', '"cfg":-Infinity')],
    ['a byte-order mark', '/prompt', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(prompt)])],
    ['bytes that are not UTF-8', '/prompt', Buffer.concat([Buffer.from(prompt.slice(0, -2)), Buffer.from(',"x":"\xff"}}', 'latin1')])],
    [
      'a key given twice with different values',
      '/prompt',
      prompt.replace('"filename_prefix":"json"', '"filename_prefix":"json","filename_prefix":"../alice/x"'),
    ],
    ['a duplicate prompt', '/prompt', `{"prompt":{},${prompt.slice(1)}`],
    ['trailing garbage', '/prompt', `${prompt}x`],
  ];

  it.each(refused)('%s → 400 INVALID_BODY, nothing reaches ComfyUI, nothing logged as an error', async (_n, path, body) => {
    fake.clearRequests();
    const before = (await flushedLogs(env.gw)).length;
    const r = await send(path, body);
    expect([r.status, r.json().error.code]).toEqual([400, 'INVALID_BODY']);
    expect(received(fake, /prompt|queue|history/, 'POST')).toEqual([]);
    const errorsLogged = (await flushedLogs(env.gw)).slice(before).filter((l) => (l.level as number) >= 50);
    expect(errorsLogged).toEqual([]);
  });

  it('the gateway’s own JSON routes answer deep nesting with a 4xx, never a 500', async () => {
    const nest = `${'['.repeat(20_000)}${']'.repeat(20_000)}`;
    for (const [path, headers] of [
      ['/login', {}],
      ['/gateway/api/users', env.admin.headers],
      ['/gateway/api/tokens', env.bob.headers],
    ] as [string, Record<string, string>][]) {
      const before = (await flushedLogs(env.gw)).length;
      const r = await raw(env.gw, 'POST', path, {
        headers: { ...headers, 'Content-Type': 'application/json' },
        body: `{"username":${nest},"password":${nest},"name":${nest}}`,
      });
      expect([path, r.status >= 400 && r.status < 500]).toEqual([path, true]);
      expect((await flushedLogs(env.gw)).slice(before).filter((l) => (l.level as number) >= 50)).toEqual([]);
    }
  });

  it('a body over 8 MB → 413 PAYLOAD_TOO_LARGE, nothing reaches ComfyUI', async () => {
    fake.clearRequests();
    const r = await send('/prompt', `{"prompt":{},"extra_data":{"pad":"${'a'.repeat(9 * 1024 * 1024)}"}}`);
    expect([r.status, r.json().error.code]).toEqual([413, 'PAYLOAD_TOO_LARGE']);
    expect(received(fake, /prompt/, 'POST')).toEqual([]);
  });

  it('nesting up to the limit still works', async () => {
    fake.clearRequests();
    const r = await send('/prompt', deep(120));
    expect(r.status).toBe(200);
    await fake.waitForPrompt(r.json().prompt_id);
  });

  it('numbers reach ComfyUI with their exact text (64-bit seeds, 7.0, 1e2); repeated identical keys are fine', async () => {
    fake.clearRequests();
    const text = prompt
      .replace('"seed":42', '"seed":18446744073709551615')
      .replace('"cfg":7', '"cfg":7.0')
      .replace('"steps":20', '"steps":20,"steps":20')
      .replace('"denoise":1', '"denoise":1e0');
    const r = await send('/prompt', text);
    expect(r.status).toBe(200);
    const sent = received(fake, /^\/prompt$/, 'POST')[0].bodyText!;
    expect(sent).toContain('"seed":18446744073709551615');
    expect(sent).toContain('"cfg":7.0');
    expect(sent).toContain('"denoise":1e0');
    expect(sent).toContain('"filename_prefix":"bob/json"');
    await fake.waitForPrompt(r.json().prompt_id);
  });

  it('a lone surrogate is passed on as the same escape Python reads', async () => {
    fake.clearRequests();
    const r = await send('/prompt', prompt.replace('"a photo of a cat"', '"cat \\ud800"'));
    expect(r.status).toBe(200);
    expect(received(fake, /^\/prompt$/, 'POST')[0].bodyText).toContain('"cat \\ud800"');
    await fake.waitForPrompt(r.json().prompt_id);
  });

  it('an unexpected error on the interceptor path is a logged 500, not a silent one', async () => {
    const up = env.gw.composed.upstream as { request: (...a: unknown[]) => Promise<unknown> };
    const orig = up.request;
    // A malformed upstream answer object stands in for a bug: the only way to reach the catch-all from a test.
    up.request = () => Promise.resolve({ status: 200, headers: null, body: Buffer.from('{}') });
    try {
      const before = (await flushedLogs(env.gw)).length;
      const r = await send('/prompt', prompt);
      expect(r.status).toBe(500);
      const logged = (await flushedLogs(env.gw)).slice(before).filter((l) => l.msg === 'interceptor error');
      expect(logged).toHaveLength(1);
      expect(logged[0]).toMatchObject({ level: 50, interceptor: 'isolation-prompt', user: 'bob' });
      expect(JSON.stringify(logged[0])).toContain('TypeError');
    } finally {
      up.request = orig;
    }
  });
});
