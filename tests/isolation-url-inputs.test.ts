/**
 * Issue 9 (Low): URL-fetching inputs. A node that loads from a URL fetches it from the ComfyUI host, behind the
 * gateway; for non-admins a prompt naming an internal address (loopback, private, link-local, unspecified, the
 * upstream itself) in any input is 400 PROMPT_REFUSED with the node id, and nothing reaches ComfyUI.
 */
import { sampleWorkflow, startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { startGateway, TEST_KEY } from './helpers/gateway';
import { postJson, received, startIsolationEnv, type Caller, type IsolationEnv } from './isolation-env';

/** The sample workflow with a URL in one more node's input (a URL loader as custom node packs ship them). */
const withUrl = (value: unknown, cls = 'LoadImageFromUrl', input = 'url') => ({
  ...sampleWorkflow('url'),
  '20': { class_type: cls, inputs: { [input]: value } },
});

describe('URL inputs in prompts', () => {
  let env: IsolationEnv;
  let fake: FakeComfy;
  let upstreamPort: string;
  beforeAll(async () => {
    fake = await startFakeComfy({ promptDelayMs: 20 });
    upstreamPort = new URL(fake.url).port;
    env = await startIsolationEnv({ fakeInstance: fake });
  });
  afterAll(async () => {
    await env.close();
    await fake.close();
  });

  const submit = async (who: Caller, prompt: Record<string, unknown>) => {
    fake.clearRequests();
    const r = await postJson(env.gw, '/api/prompt', who, { prompt });
    return { r, proxied: received(fake, /^\/(api\/)?prompt$/, 'POST').length };
  };

  const internal = () => [
    `http://127.0.0.1:${upstreamPort}/prompt`,
    `http://localhost:${upstreamPort}/api/prompt`,
    'http://LOCALHOST./x.png',
    'https://127.0.0.1/x.png',
    'HTTP://127.0.0.1/x.png',
    '  http://127.0.0.1/x.png',
    'http://127.1/x.png',
    'http://2130706433/x.png',
    'http://0x7f.0.0.1/x.png',
    'http://0177.0.0.1/x.png',
    'http://0.0.0.0:8188/',
    'http://[::1]/x.png',
    'http://[::ffff:127.0.0.1]/x.png',
    'http://[::]/x.png',
    'http://169.254.169.254/latest/meta-data/',
    'http://10.0.0.5/x.png',
    'http://172.16.3.4/x.png',
    'http://192.168.1.1/x.png',
    'http://100.64.0.1/x.png',
    'http://[fd00::1]/x.png',
    'http://[fe80::1]/x.png',
    'http://224.0.0.1/x.png',
    'http://evil.example@127.0.0.1/x.png',
    'http://127.0.0.1\\@evil.example/x.png',
    'http:\\\\127.0.0.1\\x.png',
    'http://no-such-host.invalid/x.png',
  ];

  it.each(internal().map((u) => [u]))('%s → 400 PROMPT_REFUSED with the node id; nothing reaches ComfyUI', async (url) => {
    const { r, proxied } = await submit(env.bob, withUrl(url));
    expect([r.status, r.json().error.code, r.json().error.details.node]).toEqual([400, 'PROMPT_REFUSED', '20']);
    expect(proxied).toBe(0);
  });

  it('whatever the node or input is called, and inside structured or list values', async () => {
    for (const prompt of [
      withUrl('http://127.0.0.1/x.png', 'LoadImage', 'image'),
      withUrl('http://10.0.0.1/a.safetensors', 'MyCustomDownloader', 'source'),
      withUrl({ image: 'http://192.168.0.2/cap.png' }, 'Load3D', 'camera'),
      withUrl(['a', 'http://[::1]/x'], 'BatchUrls', 'urls'),
    ]) {
      const { r, proxied } = await submit(env.bob, prompt);
      expect([r.status, r.json().error.code, r.json().error.details.node]).toEqual([400, 'PROMPT_REFUSED', '20']);
      expect(proxied).toBe(0);
    }
  });

  it('public addresses, text that merely mentions a URL, and admins are let through', async () => {
    for (const [who, prompt] of [
      [env.bob, withUrl('http://93.184.216.34/cat.png')],
      [env.bob, withUrl('a photo like http://127.0.0.1/x.png', 'CLIPTextEncode', 'text')],
      [env.admin, withUrl('http://127.0.0.1/x.png')],
    ] as [Caller, Record<string, unknown>][]) {
      const { proxied } = await submit(who, prompt);
      expect(proxied).toBe(1);
    }
  });
});

describe('prompt_url_allow', () => {
  let env: IsolationEnv;
  let fake: FakeComfy;
  beforeAll(async () => {
    fake = await startFakeComfy({ promptDelayMs: 20 });
    env = await startIsolationEnv({
      fakeInstance: fake,
      config: { prompt_url_allow: ['10.0.0.0/8', '127.0.0.0/8', 'fd00::/8', 'images.internal'] },
    });
  });
  afterAll(async () => {
    await env.close();
    await fake.close();
  });

  it('admits listed hosts and ranges, but never the upstream’s own address', async () => {
    const port = new URL(fake.url).port;
    const cases: [string, boolean][] = [
      ['http://10.1.2.3/x.png', true],
      ['http://127.0.0.2:9000/x.png', true],
      ['http://[fd00::7]/x.png', true],
      ['http://images.internal/cat.png', true],
      [`http://127.0.0.1:${port}/prompt`, false],
      ['http://127.0.0.1:1/other-port-same-host', false],
      ['http://192.168.0.1/x.png', false],
      ['http://images.internal.evil.example/x.png', false],
    ];
    for (const [url, ok] of cases) {
      fake.clearRequests();
      const r = await postJson(env.gw, '/prompt', env.bob, { prompt: withUrl(url) });
      const proxied = received(fake, /^\/prompt$/, 'POST').length;
      expect([url, proxied, ok ? null : r.json().error.code]).toEqual([url, ok ? 1 : 0, ok ? null : 'PROMPT_REFUSED']);
    }
  });

  it('a malformed entry stops start-up', async () => {
    await expect(startGateway({ api_key: TEST_KEY, prompt_url_allow: ['not a host!'] })).rejects.toThrow(/prompt_url_allow/);
  });
});
