import { TEST_KEY } from './helpers/gateway';
import { useStack } from './helpers/stack';
import { openSocket } from './helpers/ws';
import { clientTraffic } from './helpers/traffic';

describe('WebSocket through the gateway', () => {
  const stack = useStack();
  const wsUrl = (path: string) => stack.wsUrl(path);
  beforeEach(() => stack.fake.clearRequests());

  test.each(['/ws?clientId=abc', '/api/ws?clientId=abc', '/ws', '//api//ws'])(
    '%s without a credential is refused before any upstream connection',
    async (p) => {
      await expect(openSocket(wsUrl(p))).rejects.toMatchObject({ status: 401 });
      await expect(openSocket(wsUrl(p), { 'X-API-Key': 'wrong-key-0123456789abcdef' })).rejects.toMatchObject({ status: 401 });
      expect(clientTraffic(stack.fake)).toHaveLength(0);
    },
  );

  test('with a credential: status with sid, JSON events and binary preview frames arrive; text goes both ways', async () => {
    const s = await openSocket(wsUrl('/ws?clientId=client-one'), { 'X-API-Key': TEST_KEY });
    const status = await s.next((f) => f.json?.type === 'status');
    expect(typeof status.json.data.sid).toBe('string');
    // client → server text: ComfyUI answers feature_flags with its own
    s.ws.send(JSON.stringify({ type: 'feature_flags', data: { supports_preview_metadata: true } }));
    const ff = await s.next((f) => f.json?.type === 'feature_flags');
    expect(ff.json.data).toHaveProperty('supports_preview_metadata');
    // server → client binary: the preview frame of our own prompt, byte for byte (type 1, format 2 = PNG)
    const res = await fetch(`${stack.gw.url}/api/prompt`, {
      method: 'POST',
      headers: { 'X-API-Key': TEST_KEY, 'Content-Type': 'application/json' },
      body: JSON.stringify({
        client_id: 'client-one',
        prompt: { '1': { class_type: 'KSampler', inputs: {} }, '2': { class_type: 'PreviewImage', inputs: {} } },
      }),
    });
    expect(res.status).toBe(200);
    const bin = await s.next((f) => f.isBinary);
    expect([...bin.data.subarray(0, 8)]).toEqual([0, 0, 0, 1, 0, 0, 0, 2]);
    expect(bin.data.subarray(8, 12).toString('latin1')).toBe('\x89PNG');
    const done = await s.next((f) => f.json?.type === 'executing' && f.json.data.node === null);
    expect(done.json.data.prompt_id).toBeDefined();
    s.close();
    expect(stack.fake.requests.some((r) => r.ws)).toBe(true);
    const upgrade = stack.fake.requests.find((r) => r.ws)!;
    expect(JSON.stringify(upgrade.headers)).not.toContain(TEST_KEY);
  });

  test('the query credential is stripped from the upstream socket URL', async () => {
    const s = await openSocket(wsUrl(`/api/ws?clientId=q1&token=${TEST_KEY}`));
    await s.next((f) => f.json?.type === 'status');
    s.close();
    const upgrade = stack.fake.requests.find((r) => r.ws)!;
    expect(upgrade.rawPath).not.toContain(TEST_KEY);
    expect(upgrade.rawPath).not.toContain('token=');
  });

  test('a refused WebSocket path outside /ws gets 404 and nothing upstream', async () => {
    await expect(openSocket(wsUrl('/prompt'), { 'X-API-Key': TEST_KEY })).rejects.toMatchObject({ status: 404 });
    expect(clientTraffic(stack.fake)).toHaveLength(0);
  });
});

describe('WebSocket resource limits', () => {
  const stack = useStack();

  test('one principal holds at most 64 relayed sockets; the next is refused before ComfyUI sees it', async () => {
    const open: Awaited<ReturnType<typeof openSocket>>[] = [];
    for (let i = 0; i < 64; i++) {
      const s = await openSocket(stack.wsUrl(`/ws?clientId=many-${i}`), { 'X-API-Key': TEST_KEY });
      await s.next((f) => f.json?.type === 'status');
      open.push(s);
    }
    const before = stack.fake.requests.filter((r) => r.ws).length;
    await expect(openSocket(stack.wsUrl('/ws?clientId=one-too-many'), { 'X-API-Key': TEST_KEY })).rejects.toMatchObject({ status: 429 });
    expect(stack.fake.requests.filter((r) => r.ws)).toHaveLength(before);
    open.pop()!.close();
    await new Promise((r) => setTimeout(r, 100));
    const again = await openSocket(stack.wsUrl('/ws?clientId=room-again'), { 'X-API-Key': TEST_KEY });
    await again.next((f) => f.json?.type === 'status');
    for (const s of [...open, again]) s.close();
    await Promise.all([...open, again].map((s) => s.closed));
    await new Promise((r) => setTimeout(r, 100));
  });

  test('a client message over 4 MB closes that socket (1009); the gateway stays up', async () => {
    const s = await openSocket(stack.wsUrl('/ws?clientId=big'), { 'X-API-Key': TEST_KEY });
    await s.next((f) => f.json?.type === 'status');
    s.ws.send(Buffer.alloc(5 * 1024 * 1024, 1));
    expect((await s.closed).code).toBe(1009);
    expect((await fetch(`${stack.gw.url}/health`)).status).toBe(200);
  });
});
