import fs from 'node:fs';
import path from 'node:path';
import request from 'supertest';
import { tokenFileName } from '../gateway/downloads/tokens';
import { login, PW } from './helpers/auth';
import { startGateway, TEST_KEY } from './helpers/gateway';

test('deleting a gateway user deletes their HuggingFace token; a new user of the same name starts logged out', async () => {
  const gw = await startGateway({ api_key: TEST_KEY, comfyui: { models_dir: '/nonexistent-models' } });
  try {
    const create = () => request(gw.url).post('/gateway/api/users').set('X-API-Key', TEST_KEY).send({ username: 'dana', password: PW });
    const made = await create();
    expect(made.status).toBe(201);
    // HF tokens are kept per account id, not per name
    const dir = path.join(gw.config.paths.dataDir, 'hf_tokens');
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, tokenFileName(made.body.id));
    const stored = (who: string) =>
      JSON.stringify({
        access_token: 'hf_secret_of_dana',
        refresh_token: null,
        expires_at: Date.now() / 1000 + 3600,
        scope: 'openid',
        hf_username: who,
      });
    fs.writeFileSync(file, stored('dana-hf'), { mode: 0o600 });
    // a file under the bare name (another account's, say) is not this account's
    fs.writeFileSync(path.join(dir, tokenFileName('dana')), stored('not-dana'), { mode: 0o600 });
    const dana = await login(gw, 'dana');
    const status = await request(gw.url).get('/api/hf-auth-token-status').set('Authorization', `Bearer ${dana.token}`);
    expect(status.body).toEqual({ token_available: true, username: 'dana-hf' });

    expect((await request(gw.url).delete('/gateway/api/users/dana').set('X-API-Key', TEST_KEY)).status).toBe(204);
    expect(fs.existsSync(file)).toBe(false);
    expect((await create()).status).toBe(201);
    const again = await login(gw, 'dana');
    const after = await request(gw.url).get('/api/hf-auth-token-status').set('Authorization', `Bearer ${again.token}`);
    expect(after.body.token_available).toBe(false);
  } finally {
    await gw.close();
  }
});

test('with model_downloads off, /features and the WebSocket feature_flags reply say so, and the routes are gone', async () => {
  const { startFakeComfy } = await import('./helpers/fakeComfy');
  const { openSocket } = await import('./helpers/ws');
  const fake = await startFakeComfy();
  const gw = await startGateway({ api_key: TEST_KEY, upstream: fake.url, model_downloads: { enabled: false } });
  try {
    const f = await request(gw.url).get('/api/features').set('X-API-Key', TEST_KEY);
    expect(f.status).toBe(200);
    expect(f.body).toMatchObject({ server_side_model_downloads: false, hf_auth_eligible: false });
    expect(f.body).toHaveProperty('max_upload_size'); // ComfyUI's own flags pass through
    const s = await openSocket(gw.url.replace('http', 'ws') + '/ws?clientId=ff', { 'X-API-Key': TEST_KEY });
    s.ws.send(JSON.stringify({ type: 'feature_flags', data: {} }));
    const ff = await s.next((fr) => fr.json?.type === 'feature_flags');
    expect(ff.json.data).toMatchObject({ server_side_model_downloads: false, hf_auth_eligible: false });
    s.close();
    expect((await request(gw.url).post('/api/download-models').set('X-API-Key', TEST_KEY).send({ models: {} })).status).toBe(404);
  } finally {
    await gw.close();
    await fake.close();
  }
});
