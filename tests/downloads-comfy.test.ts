/**
 * Issue 6 against the fake ComfyUI: model folders learned from the upstream's /internal/folder_paths, and the
 * feature flags (GET /api/features and the WebSocket `feature_flags` reply) carrying the gateway's two flags.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { callApi, startFakeHf, waitFor, type FakeHf } from './helpers/fakeHf';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { openSocket } from './helpers/ws';

const KEY = { 'x-api-key': TEST_KEY };

let hf: FakeHf;
let comfy: FakeComfy;
let gw: TestGateway;
let carol: Record<string, string>;
const post = (p: string, body: unknown, h: Record<string, string> = KEY) => callApi(gw.url, 'POST', p, body, h);

beforeAll(async () => {
  hf = await startFakeHf();
  comfy = await startFakeComfy();
  gw = await startGateway(
    {
      api_key: TEST_KEY,
      upstream: comfy.url,
      model_downloads: { allowed_hosts: [hf.host], redirect_hosts: [hf.cdnHost] },
      hf_oauth: { client_id: hf.clientId, callback_port: 0 },
    },
    { env: { HF_ENDPOINT: hf.url } },
  );
  await callApi(
    gw.url,
    'POST',
    '/gateway/api/users',
    { username: 'carol', password: 'correct-horse-battery-1', role: 'user', permissions: [] },
    KEY,
  );
  const l = await callApi(gw.url, 'POST', '/login', { username: 'carol', password: 'correct-horse-battery-1' });
  carol = { authorization: `Bearer ${l.body.token}` };
});

afterAll(async () => {
  await gw?.close();
  await comfy?.close();
  await hf?.close();
});

describe('model folders learned from ComfyUI', () => {
  test('existing models are found in any of a folder’s directories; custom_nodes and configs are not model folders', async () => {
    fs.mkdirSync(path.join(comfy.modelsDir, 'clip'), { recursive: true });
    fs.writeFileSync(path.join(comfy.modelsDir, 'clip', 'te.safetensors'), 'x');
    const url = hf.addFile('org/c', 'x.safetensors', crypto.randomBytes(10)).url;
    const r = await post('/api/models-availability-status', {
      models: {
        'checkpoints/fake_model.safetensors': url,
        'text_encoders/te.safetensors': url,
        'loras/absent.safetensors': url,
      },
    });
    expect(r.body.models['checkpoints/fake_model.safetensors'].state).toBe('available');
    expect(r.body.models['text_encoders/te.safetensors'].state).toBe('available');
    expect(r.body.models['loras/absent.safetensors'].state).toBe('missing');
    for (const id of ['custom_nodes/x.safetensors', 'configs/x.pt', 'diffusers/x.safetensors', 'nonexistent/x.safetensors']) {
      const d = await post('/api/download-models', { models: { [id]: url } });
      expect([id, d.status, d.body.error.code]).toEqual([id, 400, 'INVALID_MODEL_ID']);
    }
  });

  test('a download lands in the first directory of its folder', async () => {
    const bytes = crypto.randomBytes(50_000);
    const f = hf.addFile('org/c', 'landed.safetensors', bytes);
    expect((await post('/api/download-models', { models: { 'loras/landed.safetensors': f.url } })).status).toBe(202);
    await waitFor(
      async () =>
        (await post('/api/models-availability-status', { models: { 'loras/landed.safetensors': f.url } })).body.models[
          'loras/landed.safetensors'
        ].state === 'available',
    );
    expect(fs.readFileSync(path.join(comfy.modelsDir, 'loras', 'landed.safetensors')).equals(bytes)).toBe(true);
  });
});

describe('feature flags', () => {
  test('GET /api/features and /features merge the gateway flags per caller', async () => {
    for (const p of ['/api/features', '/features']) {
      const r = await callApi(gw.url, 'GET', p, undefined, KEY);
      expect(r.status).toBe(200);
      expect(r.body).toEqual({
        supports_preview_metadata: true,
        max_upload_size: expect.any(Number),
        server_side_model_downloads: true,
        hf_auth_eligible: true,
      });
    }
    const fwd = await callApi(gw.url, 'GET', '/api/features', undefined, { ...KEY, 'x-forwarded-for': '203.0.113.1' });
    expect(fwd.body.hf_auth_eligible).toBe(false);
    const c = await callApi(gw.url, 'GET', '/api/features', undefined, carol);
    expect(c.body).toMatchObject({ server_side_model_downloads: true, hf_auth_eligible: false });
    const anon = await callApi(gw.url, 'GET', '/api/features', undefined, {});
    expect(anon.status).toBe(401);
  });

  test("the WebSocket feature_flags reply carries the session's flags", async () => {
    const wsUrl = gw.url.replace(/^http/, 'ws');
    const admin = await openSocket(`${wsUrl}/ws?clientId=dl-flags-1`, KEY);
    const user = await openSocket(`${wsUrl}/ws?clientId=dl-flags-2`, carol);
    try {
      for (const s of [admin, user]) s.ws.send(JSON.stringify({ type: 'feature_flags', data: { supports_preview_metadata: true } }));
      const a = await admin.next((f) => f.json?.type === 'feature_flags');
      expect(a.json.data).toMatchObject({ supports_preview_metadata: true, server_side_model_downloads: true, hf_auth_eligible: true });
      const u = await user.next((f) => f.json?.type === 'feature_flags');
      expect(u.json.data).toMatchObject({ server_side_model_downloads: true, hf_auth_eligible: false });
    } finally {
      admin.close();
      user.close();
    }
  });
});

test('with ComfyUI unreachable and no models_dir, polls say missing and downloads are 502 UPSTREAM_UNAVAILABLE', async () => {
  const g = await startGateway(
    { api_key: TEST_KEY, upstream: 'http://127.0.0.1:9', model_downloads: { allowed_hosts: [hf.host], redirect_hosts: [hf.cdnHost] } },
    { env: { HF_ENDPOINT: hf.url } },
  );
  try {
    const url = hf.addFile('org/c', 'down.safetensors', crypto.randomBytes(10)).url;
    const p = await callApi(g.url, 'POST', '/api/models-availability-status', { models: { 'checkpoints/down.safetensors': url } }, KEY);
    expect(p.body.models['checkpoints/down.safetensors'].state).toBe('missing');
    const d = await callApi(g.url, 'POST', '/api/download-models', { models: { 'checkpoints/down.safetensors': url } }, KEY);
    expect([d.status, d.body.error.code]).toEqual([502, 'UPSTREAM_UNAVAILABLE']);
  } finally {
    await g.close();
  }
});
