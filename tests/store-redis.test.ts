import fs from 'node:fs';
import request from 'supertest';
import { login, PW, registerFirstAdmin, registerUser } from './helpers/auth';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { startGateway, type TestGateway } from './helpers/gateway';
import { createTestDatabase, eventually, type TestDatabase } from './helpers/pg';
import { createTestRedisPrefix } from './helpers/redis';
import { startTcpProxy, type TcpProxy } from './helpers/tcpProxy';

/** Two gateways sharing PostgreSQL and Redis: lockouts counted across them, and failing closed without Redis. */
const ENV = { COMFYUI_GATEWAY_HF_TOKEN_KEY: 'ef'.repeat(32) };
let db: TestDatabase;
let redis: Awaited<ReturnType<typeof createTestRedisPrefix>>;
let relay: TcpProxy;
let fake: FakeComfy;
let a: TestGateway;
let b: TestGateway;

beforeAll(async () => {
  db = await createTestDatabase();
  redis = await createTestRedisPrefix();
  relay = await startTcpProxy('127.0.0.1', Number(new URL(redis.url).port || 6379));
  fake = await startFakeComfy();
  const base = { upstream: fake.url, trusted_proxies: ['127.0.0.1'], store: { kind: 'postgres', url: db.url } };
  a = await startGateway({ ...base, redis: { url: redis.url, key_prefix: redis.prefix } }, { env: ENV });
  // B reaches Redis through a relay the test can cut.
  b = await startGateway({ ...base, redis: { url: relay.via(redis.url), key_prefix: redis.prefix } }, { env: ENV });
  await registerFirstAdmin(a);
  await registerUser(a, 'alice');
});
afterAll(async () => {
  await a?.close();
  await b?.close();
  await fake?.close();
  await relay?.close();
  await redis?.drop();
  await db?.drop();
});

const loginFrom = (gw: TestGateway, ip: string, username: string, password: string) =>
  request(gw.url).post('/login').set('X-Forwarded-For', ip).send({ username, password });

test('failures from one address are counted across replicas: 5 spread over two lock it out on both', async () => {
  const ip = '198.51.100.7';
  for (let i = 0; i < 5; i++) {
    const r = await loginFrom(i % 2 ? b : a, ip, 'alice', 'wrong-password');
    expect(r.status).toBe(401);
  }
  for (const gw of [a, b]) {
    const locked = await eventually(
      async () => {
        const r = await loginFrom(gw, ip, 'alice', PW);
        return r.status === 429 ? r : null;
      },
      5000,
      'locked out',
    );
    expect(locked!.body.error.code).toBe('RATE_LIMITED');
    expect(Number(locked!.headers['retry-after'])).toBeGreaterThan(0);
  }
  // Another address is not affected.
  expect((await loginFrom(b, '198.51.100.8', 'alice', PW)).status).toBe(200);
});

test('Redis away: signed-in requests keep working, password checks are refused (fail closed), and it recovers', async () => {
  const s = await login(b, 'alice');
  relay.block();
  const refused = await eventually(
    async () => {
      const r = await loginFrom(b, '198.51.100.20', 'alice', PW);
      return r.status === 503 ? r : null;
    },
    10_000,
    'sign-in refused while Redis is away',
  );
  expect(refused!.body.error.code).toBe('STORE_UNAVAILABLE');
  // Never open: a wrong password is not even checked.
  expect((await loginFrom(b, '198.51.100.21', 'alice', 'wrong-password')).status).toBe(503);
  expect((await request(b.url).get('/api/queue').set('authorization', `Bearer ${s.token}`)).status).toBe(200);
  relay.unblock();
  await eventually(async () => (await loginFrom(b, '198.51.100.22', 'alice', PW)).status === 200, 15_000, 'sign-in back');
  // A lock set while B was cut off is known to B once it is back (read back from Redis).
  relay.block();
  await eventually(async () => (await loginFrom(b, '198.51.100.23', 'alice', PW)).status === 503, 10_000, 'cut again');
  for (let i = 0; i < 5; i++) expect((await loginFrom(a, '198.51.100.30', 'alice', 'wrong-password')).status).toBe(401);
  await eventually(async () => (await loginFrom(a, '198.51.100.30', 'alice', PW)).status === 429, 5000, 'locked on A');
  relay.unblock();
  await eventually(
    async () => (await loginFrom(b, '198.51.100.30', 'alice', PW)).status === 429,
    15_000,
    'lock known on B after the outage',
  );
});

test('an IP-list change made through one replica is in force on the other within a second, in its own file', async () => {
  const admin = await login(a, 'admin');
  const put = await request(a.url)
    .put('/gateway/api/ip-lists')
    .set('authorization', `Bearer ${admin.token}`)
    .set('X-Forwarded-For', '198.51.100.40')
    .send({ blacklist: ['198.51.100.66', '203.0.113.0/24'] });
  expect(put.status).toBe(200);
  const t0 = Date.now();
  const blocked = await eventually(
    async () => {
      const r = await request(b.url).get('/api/queue').set('X-Forwarded-For', '203.0.113.9');
      return r.status === 403 ? r : null;
    },
    1000,
    'refused on B',
  );
  expect(Date.now() - t0).toBeLessThan(1000);
  expect(blocked!.body.error.code).toBe('IP_BLOCKED');
  expect(fs.readFileSync(b.config.paths.blacklist, 'utf8')).toMatch(/^198\.51\.100\.66$/m);
  // Lifted the same way.
  await request(b.url)
    .put('/gateway/api/ip-lists')
    .set('authorization', `Bearer ${admin.token}`)
    .set('X-Forwarded-For', '198.51.100.40')
    .send({ blacklist: [] });
  await eventually(
    async () => (await request(a.url).get('/health').set('X-Forwarded-For', '203.0.113.9')).status === 200,
    1000,
    'lifted on A',
  );
});
