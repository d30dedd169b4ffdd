/**
 * Verified sessions and personal tokens are remembered for a moment (auth/credentialCache.ts) — and every change
 * that invalidates one still takes effect on the very next request: logout, token revocation, disabling, a role
 * change, a password change, and a removal written to the users file by another process while the gateway runs.
 * Each case first makes the credential "hot" (used just before, so it sits in the cache).
 */
import fs from 'node:fs';
import { PW, login, registerFirstAdmin, registerUser } from './helpers/auth';
import { hit } from './helpers/edge';
import { useStack } from './helpers/stack';
import { clientTraffic } from './helpers/traffic';

const stack = useStack();
let admin: { token: string };

let refusals = 0;
const bearer = (t: string) => ({ Authorization: `Bearer ${t}` });
/** Uses a credential a few times in a row, so it is certainly cached; each must pass. */
async function warm(headers: Record<string, string>, p = '/prompt') {
  for (let i = 0; i < 3; i++) expect((await hit(stack.gw.url, p, { headers })).status).toBe(200);
}
/** The next request with it: refused with `code`, and nothing of it reached ComfyUI. */
async function refusedNow(headers: Record<string, string>, code: string | RegExp, status = 401) {
  stack.fake.clearRequests();
  // each refusal from its own loopback address, so the failures do not add up to a brute-force lockout
  const r = await hit(stack.gw.url, '/prompt?marker=after-invalidation', { headers, from: `127.0.0.${10 + refusals++}` });
  expect(r.status).toBe(status);
  expect(r.body.error.code).toMatch(code);
  expect(clientTraffic(stack.fake).filter((x) => x.rawPath.includes('after-invalidation'))).toHaveLength(0);
}

beforeAll(async () => {
  await registerFirstAdmin(stack.gw);
  admin = await login(stack.gw, 'admin');
});

test('logout revokes a hot session at once', async () => {
  await registerUser(stack.gw, 'lou');
  const s = await login(stack.gw, 'lou');
  await warm(bearer(s.token));
  expect((await hit(stack.gw.url, '/logout', { method: 'POST', headers: bearer(s.token), body: {} })).status).toBe(200);
  await refusedNow(bearer(s.token), 'TOKEN_REVOKED');
});

test('a revoked personal token is refused at once, whichever way it is sent', async () => {
  await registerUser(stack.gw, 'tom');
  const s = await login(stack.gw, 'tom');
  const made = await hit(stack.gw.url, '/gateway/api/tokens', { method: 'POST', headers: bearer(s.token), body: { name: 'hot' } });
  expect(made.status).toBe(201);
  const token = made.body.token as string;
  await warm(bearer(token));
  await warm({ 'X-API-Key': token });
  expect((await hit(stack.gw.url, `/gateway/api/tokens/${made.body.id}`, { method: 'DELETE', headers: bearer(s.token) })).status).toBe(204);
  await refusedNow(bearer(token), 'INVALID_CREDENTIALS');
  await refusedNow({ 'X-API-Key': token }, 'INVALID_CREDENTIALS');
});

test('disabling, a password change and a demotion by an admin apply to hot credentials at once', async () => {
  await registerUser(stack.gw, 'dana');
  await registerUser(stack.gw, 'pete');
  await registerUser(stack.gw, 'rita', { admin: ['admin', PW], role: 'admin' });
  const dana = await login(stack.gw, 'dana');
  const pete = await login(stack.gw, 'pete');
  const rita = await login(stack.gw, 'rita');
  await warm(bearer(dana.token));
  await warm(bearer(pete.token));
  await warm(bearer(rita.token), '/gateway/api/users');

  expect(
    (await hit(stack.gw.url, '/gateway/api/users/dana', { method: 'PATCH', headers: bearer(admin.token), body: { disabled: true } }))
      .status,
  ).toBe(200);
  await refusedNow(bearer(dana.token), /INVALID_CREDENTIALS|TOKEN_REVOKED/);

  expect(
    (
      await hit(stack.gw.url, '/gateway/api/users/pete', {
        method: 'PATCH',
        headers: bearer(admin.token),
        body: { password: 'another-password-2' },
      })
    ).status,
  ).toBe(200);
  await refusedNow(bearer(pete.token), 'TOKEN_REVOKED');

  expect(
    (await hit(stack.gw.url, '/gateway/api/users/rita', { method: 'PATCH', headers: bearer(admin.token), body: { role: 'user' } })).status,
  ).toBe(200);
  const after = await hit(stack.gw.url, '/gateway/api/users', { headers: bearer(rita.token) });
  expect(after.status).toBe(403);
  expect(after.body.error.code).toBe('FORBIDDEN');
});

test('a removal written to users_db.json by another process applies to a hot session on the next request', async () => {
  await registerUser(stack.gw, 'carl');
  const carl = await login(stack.gw, 'carl');
  await warm(bearer(carl.token));
  // What the users CLI does, done here directly so it lands well inside the cache window: replace the file.
  const file = stack.gw.config.paths.usersDb;
  await stack.gw.composed.users.flush();
  const data = JSON.parse(fs.readFileSync(file, 'utf8'));
  data.users = data.users.filter((u: { username: string }) => u.username !== 'carl');
  fs.writeFileSync(`${file}.other`, JSON.stringify(data, null, 2), { mode: 0o600 });
  fs.renameSync(`${file}.other`, file);
  await refusedNow(bearer(carl.token), 'INVALID_CREDENTIALS');
});
