import request from 'supertest';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';

describe('ComfyUI users are created with gateway users', () => {
  let fake: FakeComfy;
  let gw: TestGateway;
  beforeAll(async () => {
    fake = await startFakeComfy();
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, model_downloads: { enabled: false } });
  });
  afterAll(async () => {
    await gw.close();
    await fake.close();
  });

  test('creating a gateway user creates its ComfyUI user at once, before the user ever signs in', async () => {
    const res = await request(gw.url)
      .post('/gateway/api/users')
      .set('X-API-Key', TEST_KEY)
      .send({ username: 'carol', password: 'carol-password-1' });
    expect(res.status).toBe(201);
    const deadline = Date.now() + 3000;
    while (!Object.values(fake.users).includes('carol') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    expect(Object.values(fake.users)).toContain('carol');
    const created = fake.requests.filter((r) => r.method === 'POST' && r.rawPath === '/users');
    expect(created).toHaveLength(1);
    // the client's own credentials never travel with it
    expect(created[0].headers.authorization).toBeUndefined();
    expect(created[0].headers['x-api-key']).toBeUndefined();
  });
});
