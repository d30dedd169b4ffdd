import crypto from 'node:crypto';
import http from 'node:http';
import jwt from 'jsonwebtoken';
import { createJwksCache } from '../gateway/cloudflare/jwks';
import { usernameFromEmail } from '../gateway/cloudflare';
import { createLogger } from '../gateway/log';
import { hit, reached, upgradeStatus } from './helpers/edge';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';

const TEAM = 'edge-team.cloudflareaccess.com';
const AUD = 'aud-0123456789abcdef';
const ISS = `https://${TEAM}`;

/** A team's signing key: an RSA pair and its kid. */
function rsaKey(kid: string) {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { kid, privateKey, publicKey, jwk: { ...(publicKey.export({ format: 'jwk' }) as object), kid, alg: 'RS256', use: 'sig' } };
}
type Key = ReturnType<typeof rsaKey>;

/** A local stand-in for https://<team>/cdn-cgi/access/certs that counts its requests. */
async function startJwks(keys: Key[]) {
  const state = { keys, hits: 0 };
  const server = http.createServer((req, res) => {
    state.hits++;
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ keys: state.keys.map((k) => k.jwk), public_cert: { kid: state.keys[0]?.kid, cert: '' } }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/cdn-cgi/access/certs`;
  return { state, url, close: () => new Promise((r) => server.close(r)) };
}

const now = () => Math.floor(Date.now() / 1000);

/** A Cloudflare Access application token. */
function sign(key: Key, claims: Record<string, unknown> = {}, opts: { kid?: string } = {}): string {
  const payload = {
    aud: [AUD],
    iss: ISS,
    iat: now(),
    nbf: now() - 5,
    exp: now() + 600,
    type: 'app',
    sub: 'uid-1',
    email: 'alice@example.com',
    ...claims,
  };
  for (const k of Object.keys(payload))
    if ((payload as Record<string, unknown>)[k] === undefined) delete (payload as Record<string, unknown>)[k];
  return jwt.sign(payload, key.privateKey, { algorithm: 'RS256', keyid: opts.kid ?? key.kid });
}

const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
const validClaims = () => ({ aud: [AUD], iss: ISS, iat: now(), exp: now() + 600, email: 'alice@example.com' });

let fake: FakeComfy;
let key1: Key;
let jwks: Awaited<ReturnType<typeof startJwks>>;
beforeAll(async () => {
  fake = await startFakeComfy();
  key1 = rsaKey('kid-one');
  jwks = await startJwks([key1]);
});
afterAll(async () => {
  await fake.close();
  await jwks.close();
});
beforeEach(() => fake.clearRequests());

const cfConfig = (extra: Record<string, unknown> = {}) => ({
  cloudflare_access: {
    team_domain: TEAM,
    audience: AUD,
    certs_url: jwks.url,
    auto_provision: true,
    service_tokens: { 'ops.access': 'api-key', 'svc.access': 'robot' },
    ...extra,
  },
});

describe('cloudflare_access (optional): assertions as credentials', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, ...cfConfig() });
  });
  afterAll(() => gw.close());

  const as = (assertion: string, p = '/object_info?edge-cf') => hit(gw.url, p, { headers: { 'Cf-Access-Jwt-Assertion': assertion } });

  test('a valid assertion is accepted: the email becomes a gateway user (role user, created on first sight) and the request is proxied', async () => {
    jwks.state.hits = 0;
    const res = await as(sign(key1));
    expect(res.status).toBe(200);
    expect(reached(fake, 'edge-cf')).toBe(1);
    expect(fake.requests.find((r) => r.rawPath.includes('edge-cf'))?.headers['cf-access-jwt-assertion']).toBeUndefined();
    const me = await as(sign(key1), '/gateway/api/me');
    expect(me.body).toMatchObject({ username: 'alice', role: 'user', source: 'cf-access' });
    const users = (await hit(gw.url, '/gateway/api/users', { headers: { 'x-api-key': TEST_KEY } })).body.users as {
      username: string;
      role: string;
    }[];
    expect(users.find((u) => u.username === 'alice')?.role).toBe('user');
    expect(jwks.state.hits).toBe(1); // keys are cached
    // a user principal is not an admin
    expect((await as(sign(key1), '/gateway/api/audit')).status).toBe(403);
  });

  test('the same local part at another domain does not get that account', async () => {
    const me = await as(sign(key1, { email: 'Alice@other.example' }), '/gateway/api/me');
    expect(me.status).toBe(200);
    expect(me.body.username).toBe('alice-2');
    expect((await as(sign(key1), '/gateway/api/me')).body.username).toBe('alice');
  });

  test('refused: wrong audience, wrong issuer, expired, not yet valid, no expiry, unknown kid, alg none, HS256 with the public key, foreign key, garbage', async () => {
    const forger = rsaKey('kid-one'); // same kid, different key
    const cases: Record<string, string> = {
      'wrong audience': sign(key1, { aud: ['some-other-app'] }),
      'wrong issuer': sign(key1, { iss: 'https://evil.cloudflareaccess.com' }),
      'issuer without https': sign(key1, { iss: `http://${TEAM}` }),
      expired: sign(key1, { exp: now() - 3600, nbf: now() - 7200, iat: now() - 7200 }),
      'not yet valid': sign(key1, { nbf: now() + 3600 }),
      'no expiry': jwt.sign({ aud: [AUD], iss: ISS, email: 'alice@example.com' }, key1.privateKey, { algorithm: 'RS256', keyid: key1.kid }),
      'unknown kid': sign(key1, {}, { kid: 'kid-unknown' }),
      'alg none': `${b64({ alg: 'none', kid: key1.kid, typ: 'JWT' })}.${b64(validClaims())}.`,
      'alg none with a signature': `${b64({ alg: 'none', kid: key1.kid })}.${b64(validClaims())}.c2ln`,
      'HS256 signed with the public key (PEM)': (() => {
        const pem = key1.publicKey.export({ type: 'spki', format: 'pem' }) as string;
        const data = `${b64({ alg: 'HS256', kid: key1.kid, typ: 'JWT' })}.${b64(validClaims())}`;
        return `${data}.${crypto.createHmac('sha256', pem).update(data).digest('base64url')}`;
      })(),
      'RS256 header, HMAC signature': (() => {
        const pem = key1.publicKey.export({ type: 'spki', format: 'pem' }) as string;
        const data = `${b64({ alg: 'RS256', kid: key1.kid })}.${b64(validClaims())}`;
        return `${data}.${crypto.createHmac('sha256', pem).update(data).digest('base64url')}`;
      })(),
      'signed by a foreign key claiming our kid': sign(forger),
      'tampered payload': (() => {
        const [h, , s] = sign(key1).split('.');
        return `${h}.${b64({ ...validClaims(), email: 'admin@example.com' })}.${s}`;
      })(),
      'no identity': sign(key1, { email: undefined }),
      garbage: 'not-a-jwt',
    };
    for (const [name, token] of Object.entries(cases)) {
      const res = await as(token);
      expect([name, res.status, res.body?.error?.code]).toEqual([name, 401, 'INVALID_CREDENTIALS']);
    }
    expect(reached(fake, 'edge-cf')).toBe(0);
    // within the leeway is fine
    expect((await as(sign(key1, { exp: now() - 5 }))).status).toBe(200);
  });

  test('unknown kids refetch the JWKS at most once per 30 s', async () => {
    const before = jwks.state.hits;
    for (let i = 0; i < 10; i++) expect((await as(sign(key1, {}, { kid: `kid-random-${i}` }))).status).toBe(401);
    expect(jwks.state.hits - before).toBeLessThanOrEqual(1);
  });

  test('service tokens: common_name → service_tokens → user; unmapped or unknown target → 403', async () => {
    const svc = (cn: string) => sign(key1, { email: undefined, sub: '', common_name: cn });
    const ops = await as(svc('ops.access'), '/gateway/api/me');
    expect(ops.body).toMatchObject({ username: 'api-key', role: 'admin', source: 'cf-access' });
    const missing = await as(svc('svc.access'));
    expect([missing.status, missing.body.error.code]).toEqual([403, 'CF_ACCESS_UNKNOWN_USER']);
    await hit(gw.url, '/gateway/api/users', {
      method: 'POST',
      headers: { 'x-api-key': TEST_KEY },
      body: { username: 'robot', password: 'robot-password-1', role: 'user' },
    });
    expect((await as(svc('svc.access'), '/gateway/api/me')).body).toMatchObject({ username: 'robot', role: 'user' });
    const unmapped = await as(svc('stranger.access'));
    expect([unmapped.status, unmapped.body.error.code]).toEqual([403, 'CF_ACCESS_UNKNOWN_USER']);
    expect(reached(fake, 'edge-cf')).toBe(0);
  });

  test('a disabled user is refused', async () => {
    await hit(gw.url, '/gateway/api/users/alice', { method: 'PATCH', headers: { 'x-api-key': TEST_KEY }, body: { disabled: true } });
    const res = await as(sign(key1));
    expect(res.status).toBe(403);
    expect(reached(fake, 'edge-cf')).toBe(0);
    await hit(gw.url, '/gateway/api/users/alice', { method: 'PATCH', headers: { 'x-api-key': TEST_KEY }, body: { disabled: false } });
  });
});

describe('without auto_provision', () => {
  const admin = { 'x-api-key': TEST_KEY };
  test('an email binds only to the account holding exactly that email; never by local part, whatever the spelling', async () => {
    const gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, ...cfConfig({ auto_provision: false }) });
    try {
      const asEmail = (email: string, p = '/object_info?edge-cf') =>
        hit(gw.url, p, { headers: { 'Cf-Access-Jwt-Assertion': sign(key1, { email }) } });
      const refused = async (email: string) => {
        const before = reached(fake, 'edge-cf');
        const res = await asEmail(email);
        expect([email, res.status, res.body.error?.code]).toEqual([email, 403, 'CF_ACCESS_UNKNOWN_USER']);
        expect(reached(fake, 'edge-cf')).toBe(before);
      };
      await refused('bob@example.com');
      expect((await hit(gw.url, '/gateway/api/users', { headers: admin })).body.users).toHaveLength(0);
      // an account named after the local part, created by an admin without an email: not anyone's by email
      expect(
        (await hit(gw.url, '/gateway/api/users', { method: 'POST', headers: admin, body: { username: 'bob', password: 'bob-password-1' } }))
          .status,
      ).toBe(201);
      for (const e of ['bob@example.com', 'Bob+x@attacker.example', 'BOB@example.com', 'bob@attacker.example', 'b.o.b@example.com'])
        await refused(e);
      // the admin sets bob's email: exactly that address (lower-cased) binds, nothing around it
      const set = await hit(gw.url, '/gateway/api/users/bob', { method: 'PATCH', headers: admin, body: { email: 'Bob@Example.com' } });
      expect([set.status, set.body.email]).toEqual([200, 'bob@example.com']);
      expect((await asEmail('bob@example.com', '/gateway/api/me')).body).toMatchObject({ username: 'bob', source: 'cf-access' });
      expect((await asEmail('BOB@EXAMPLE.COM', '/gateway/api/me')).body).toMatchObject({ username: 'bob' });
      for (const e of ['bob+x@example.com', 'bob@example.com.attacker.example', 'bob@sub.example.com', 'xbob@example.com'])
        await refused(e);
      const list = (await hit(gw.url, '/gateway/api/users', { headers: admin })).body.users as { username: string; email: string | null }[];
      expect(list.find((u) => u.username === 'bob')?.email).toBe('bob@example.com');
    } finally {
      await gw.close();
    }
  });

  test('emails are unique (any case), validated, and cleared with null; an admin account binds only by its own email', async () => {
    const gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, ...cfConfig({ auto_provision: false }) });
    try {
      const asEmail = (email: string) => hit(gw.url, '/gateway/api/me', { headers: { 'Cf-Access-Jwt-Assertion': sign(key1, { email }) } });
      const post = (body: Record<string, unknown>) => hit(gw.url, '/gateway/api/users', { method: 'POST', headers: admin, body });
      const patch = (name: string, body: Record<string, unknown>) =>
        hit(gw.url, `/gateway/api/users/${name}`, { method: 'PATCH', headers: admin, body });
      expect((await post({ username: 'root', password: 'root-password-1', role: 'admin' })).status).toBe(201);
      const r0 = await asEmail('root@attacker.example');
      expect([r0.status, r0.body.error.code]).toEqual([403, 'CF_ACCESS_UNKNOWN_USER']);
      expect((await post({ username: 'erin', password: 'erin-password-1', email: 'erin@example.com' })).status).toBe(201);
      const dup = await post({ username: 'erin2', password: 'erin-password-1', email: 'ERIN@example.com' });
      expect([dup.status, dup.body.error.code]).toEqual([409, 'EMAIL_EXISTS']);
      const dupPatch = await patch('root', { email: 'Erin@Example.com' });
      expect([dupPatch.status, dupPatch.body.error.code]).toEqual([409, 'EMAIL_EXISTS']);
      for (const bad of ['not-an-email', 'a@b@c', 'x y@z', 42, ['a@b']]) {
        const r = await post({ username: 'frank', password: 'frank-password-1', email: bad });
        expect([r.status, r.body.error.code]).toEqual([400, 'INVALID_BODY']);
        const q = await patch('erin', { email: bad });
        expect([q.status, q.body.error.code]).toEqual([400, 'INVALID_BODY']);
      }
      const users = (await hit(gw.url, '/gateway/api/users', { headers: admin })).body.users as {
        username: string;
        email: string | null;
      }[];
      expect(users.map((u) => u.username).sort()).toEqual(['erin', 'root']);
      expect(users.find((u) => u.username === 'erin')?.email).toBe('erin@example.com');
      // an admin's own email, set by an admin, binds (an explicit decision, not a guess)
      expect((await patch('root', { email: 'root@example.com' })).status).toBe(200);
      expect((await asEmail('root@example.com')).body).toMatchObject({ username: 'root', role: 'admin' });
      expect((await patch('root', { email: null })).body.email).toBeNull();
      expect((await asEmail('root@example.com')).status).toBe(403);
    } finally {
      await gw.close();
    }
  });

  test('a deleted account takes its email with it: a new account of that name is nobody’s by email', async () => {
    const gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, ...cfConfig({ auto_provision: false }) });
    try {
      const asEmail = (email: string) => hit(gw.url, '/gateway/api/me', { headers: { 'Cf-Access-Jwt-Assertion': sign(key1, { email }) } });
      await hit(gw.url, '/gateway/api/users', {
        method: 'POST',
        headers: admin,
        body: { username: 'erin', password: 'erin-password-1', email: 'erin@example.com' },
      });
      expect((await asEmail('erin@example.com')).body).toMatchObject({ username: 'erin', source: 'cf-access' });
      expect((await hit(gw.url, '/gateway/api/users/erin', { method: 'DELETE', headers: admin })).status).toBe(204);
      await hit(gw.url, '/gateway/api/users', { method: 'POST', headers: admin, body: { username: 'erin', password: 'erin-password-2' } });
      for (const e of ['erin@example.com', 'erin@other.example']) {
        const r = await asEmail(e);
        expect([r.status, r.body.error.code]).toEqual([403, 'CF_ACCESS_UNKNOWN_USER']);
      }
    } finally {
      await gw.close();
    }
  });

  test('old bindings carry over only for accounts Access created (no password); local-part bindings are dropped', async () => {
    const at = '2026-01-01T00:00:00.000Z';
    const user = (username: string, hash: string) => ({
      username,
      role: 'user',
      password_hash: hash,
      disabled: false,
      permissions: [],
      created_at: at,
      tokens_valid_after: 0,
    });
    const gw = await startGateway(
      { upstream: fake.url, api_key: TEST_KEY, ...cfConfig({ auto_provision: false }) },
      {
        files: {
          'data/users_db.json': JSON.stringify({
            version: 1,
            users: [user('prov', '!'), user('alice', `$2b$04$${'a'.repeat(53)}`)],
            tokens: [],
            revoked: [],
          }),
          'data/cf_access_bindings.json': JSON.stringify({ emails: { 'prov@example.com': 'prov', 'alice+x@attacker.example': 'alice' } }),
        },
      },
    );
    try {
      const asEmail = (email: string) => hit(gw.url, '/gateway/api/me', { headers: { 'Cf-Access-Jwt-Assertion': sign(key1, { email }) } });
      expect((await asEmail('prov@example.com')).body).toMatchObject({ username: 'prov', source: 'cf-access' });
      const r = await asEmail('alice+x@attacker.example');
      expect([r.status, r.body.error.code]).toEqual([403, 'CF_ACCESS_UNKNOWN_USER']);
      const users = (await hit(gw.url, '/gateway/api/users', { headers: admin })).body.users as {
        username: string;
        email: string | null;
      }[];
      expect(Object.fromEntries(users.map((u) => [u.username, u.email]))).toEqual({ prov: 'prov@example.com', alice: null });
    } finally {
      await gw.close();
    }
  });
});

describe('auto_provision never takes over an existing account', () => {
  test('an identity whose local part names a password account gets a new account of its own, holding its email', async () => {
    const gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, ...cfConfig({ auto_provision: true }) });
    try {
      const admin = { 'x-api-key': TEST_KEY };
      await hit(gw.url, '/gateway/api/users', {
        method: 'POST',
        headers: admin,
        body: { username: 'carol', password: 'carol-password-1' },
      });
      const me = await hit(gw.url, '/gateway/api/me', {
        headers: { 'Cf-Access-Jwt-Assertion': sign(key1, { email: 'Carol+x@attacker.example' }) },
      });
      expect(me.status).toBe(200);
      expect(me.body.username).not.toBe('carol');
      const users = (await hit(gw.url, '/gateway/api/users', { headers: admin })).body.users as {
        username: string;
        email: string | null;
      }[];
      expect(users.find((u) => u.username === 'carol')?.email).toBeNull();
      expect(users.find((u) => u.username === me.body.username)?.email).toBe('carol+x@attacker.example');
      // the same identity comes back to the account it created
      const again = await hit(gw.url, '/gateway/api/me', {
        headers: { 'Cf-Access-Jwt-Assertion': sign(key1, { email: 'carol+X@attacker.example' }) },
      });
      expect(again.body.username).toBe(me.body.username);
    } finally {
      await gw.close();
    }
  });
});

describe('required: true', () => {
  let gw: TestGateway;
  beforeAll(async () => {
    gw = await startGateway({ upstream: fake.url, api_key: TEST_KEY, ...cfConfig({ required: true }) });
  });
  afterAll(() => gw.close());

  test('every request but /health must carry a valid assertion: 403 CF_ACCESS_REQUIRED, even with the API key', async () => {
    expect((await hit(gw.url, '/health')).status).toBe(200);
    for (const p of ['/object_info?edge-cf', '/login', '/gateway/static/gateway.css', '/register']) {
      const res = await hit(gw.url, p, { headers: { 'x-api-key': TEST_KEY } });
      expect([p, res.status, res.body?.error?.code]).toEqual([p, 403, 'CF_ACCESS_REQUIRED']);
    }
    for (const bad of [
      sign(key1, { aud: ['x'] }),
      sign(key1, { exp: now() - 3600 }),
      `${b64({ alg: 'none', kid: key1.kid })}.${b64(validClaims())}.`,
    ]) {
      const res = await hit(gw.url, '/object_info?edge-cf', { headers: { 'x-api-key': TEST_KEY, 'Cf-Access-Jwt-Assertion': bad } });
      expect([res.status, res.body.error.code]).toEqual([403, 'CF_ACCESS_REQUIRED']);
    }
    expect(await upgradeStatus(gw.url, '/ws?clientId=edge-cf', { headers: { 'x-api-key': TEST_KEY } })).toBe(403);
    expect(reached(fake, 'edge-cf')).toBe(0);
  });

  test('with a valid assertion: the credential chain decides who (an API key still wins over the assertion)', async () => {
    const a = sign(key1, { email: 'carol@example.com' });
    expect((await hit(gw.url, '/object_info?edge-cf', { headers: { 'Cf-Access-Jwt-Assertion': a } })).status).toBe(200);
    const me = await hit(gw.url, '/gateway/api/me', { headers: { 'Cf-Access-Jwt-Assertion': a, 'x-api-key': TEST_KEY } });
    expect(me.body).toMatchObject({ username: 'api-key', role: 'admin' });
  });
});

describe('JWKS cache (unit)', () => {
  test('a rotated key is fetched once the refetch interval allows; keys the team no longer publishes are dropped', async () => {
    const k2 = rsaKey('kid-two');
    const server = await startJwks([key1]);
    const logger = createLogger({ levels: ['silent'], file: null, stdout: false });
    const cache = createJwksCache({ url: server.url, logger, minRefetchMs: 150, maxAgeMs: 400 });
    try {
      expect(await cache.getKey('kid-one')).not.toBeNull();
      server.state.keys = [k2];
      expect(await cache.getKey('kid-two')).toBeNull(); // too soon to refetch
      expect(server.state.hits).toBe(1);
      await new Promise((r) => setTimeout(r, 200));
      expect(await cache.getKey('kid-two')).not.toBeNull();
      expect(server.state.hits).toBe(2);
      expect(await cache.getKey('kid-one')).toBeNull(); // rotation dropped it (no refetch: too soon)
      await Promise.all(Array.from({ length: 20 }, (_, i) => cache.getKey(`nope-${i}`)));
      expect(server.state.hits).toBe(2);
    } finally {
      await server.close();
    }
  });

  test('usernameFromEmail', () => {
    expect(usernameFromEmail('alice@example.com')).toBe('alice');
    expect(usernameFromEmail('Alice.Smith+comfy@example.com')).toBe('alice-smith');
    expect(usernameFromEmail('a@example.com')).toMatch(/^cf-[0-9a-f]{8}$/);
    expect(usernameFromEmail('api-key@example.com')).toMatch(/^cf-[0-9a-f]{8}$/);
    expect(usernameFromEmail(`${'x'.repeat(60)}@example.com`)).toBe('x'.repeat(32));
    expect(usernameFromEmail('__@example.com')).toMatch(/^cf-/);
  });
});
