/**
 * Issue 9 (identity): every event that invalidates a credential closes the WebSockets opened with it (1008, within a
 * second) and their upstream sockets to ComfyUI — logout, a personal token revoked, password change, disabling,
 * deletion — while sockets opened with other credentials stay open. Real `ws` clients, real gateway, fake ComfyUI.
 */
import { PW, login } from './helpers/auth';
import { hit } from './helpers/edge';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { startGateway, TEST_KEY, type TestGateway } from './helpers/gateway';
import { openSocket, type TestSocket } from './helpers/ws';

let fake: FakeComfy;
let gw: TestGateway;
const open: TestSocket[] = [];

beforeAll(async () => {
  fake = await startFakeComfy();
  gw = await startGateway({ api_key: TEST_KEY, upstream: fake.url, model_downloads: { enabled: false } });
});
afterEach(() => {
  for (const s of open.splice(0)) s.close();
});
afterAll(async () => {
  await gw.close();
  await fake.close();
});

const admin = { 'X-API-Key': TEST_KEY };
let n = 0;
/** A fresh user (created by the admin API) and one signed-in session of theirs. */
async function freshUser() {
  const name = `ws-user-${n++}`;
  const r = await hit(gw.url, '/gateway/api/users', { method: 'POST', headers: admin, body: { username: name, password: PW } });
  expect(r.status).toBe(201);
  return { name, ...(await login(gw, name)) };
}

const upstreamSids = () => new Set(fake.wsClients().map((c) => c.sid));
/** Opens a relayed socket and learns which upstream socket (by sid at the fake) it holds. */
async function relayed(headers: Record<string, string>) {
  const before = upstreamSids();
  const s = await openSocket(`${gw.url.replace(/^http/, 'ws')}/ws`, headers);
  open.push(s);
  await s.next((f) => f.json?.type === 'status');
  const sid = [...upstreamSids()].find((x) => !before.has(x));
  expect(sid).toBeDefined();
  return { s, sid: sid! };
}

/** Resolves with the close code if the socket closes within `ms`, else null. */
function closedWithin(s: TestSocket, ms: number): Promise<{ code: number; reason: string } | null> {
  return Promise.race([s.closed, new Promise<null>((r) => setTimeout(() => r(null), ms))]);
}

/** Polls until the fake no longer holds the upstream socket `sid` (deadline `ms`). */
async function upstreamGone(sid: string, ms = 1000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!upstreamSids().has(sid)) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return !upstreamSids().has(sid);
}

/** The socket is still relaying: ComfyUI's frames to it arrive. */
async function stillRelaying(sock: { s: TestSocket; sid: string }) {
  expect(sock.s.ws.readyState).toBe(sock.s.ws.OPEN);
  expect(upstreamSids().has(sock.sid)).toBe(true);
  const marker = ++n;
  // `status` frames reach every user (isolation passes them); the marker tells this one apart.
  fake.sendWs(sock.sid, { type: 'status', data: { status: { exec_info: { queue_remaining: 0 } }, marker } });
  await sock.s.next((f) => f.json?.type === 'status' && f.json?.data?.marker === marker);
}

async function expectRevoked(sock: { s: TestSocket; sid: string }) {
  const closed = await closedWithin(sock.s, 1000);
  expect(closed?.code).toBe(1008);
  expect(await upstreamGone(sock.sid)).toBe(true);
}

describe('closing WebSockets when their credential is invalidated', () => {
  it('logout of a Bearer session closes that session’s sockets only', async () => {
    const u = await freshUser();
    const other = await login(gw, u.name); // a second session of the same user
    const a = await relayed({ Authorization: `Bearer ${u.token}` });
    const b = await relayed({ Authorization: `Bearer ${other.token}` });
    const keyed = await relayed(admin);
    const out = await hit(gw.url, '/logout', { method: 'POST', headers: { Authorization: `Bearer ${u.token}` } });
    expect(out.status).toBe(200);
    await expectRevoked(a);
    await stillRelaying(b);
    await stillRelaying(keyed);
    // and the revoked session cannot open a new one
    await expect(openSocket(`${gw.url.replace(/^http/, 'ws')}/ws`, { Authorization: `Bearer ${u.token}` })).rejects.toMatchObject({
      status: 401,
    });
  });

  it('logout of a cookie session (browser) closes the socket opened with the cookie', async () => {
    const u = await freshUser();
    const c = await relayed({ Cookie: u.cookie, Origin: gw.url });
    const out = await hit(gw.url, '/logout', { method: 'POST', headers: { Cookie: u.cookie, Origin: gw.url } });
    expect(out.status).toBe(200);
    await expectRevoked(c);
  });

  it('revoking one personal token closes its sockets; the session and another token keep theirs', async () => {
    const u = await freshUser();
    const mk = async (name: string) => {
      const r = await hit(gw.url, '/gateway/api/tokens', {
        method: 'POST',
        headers: { Authorization: `Bearer ${u.token}` },
        body: { name },
      });
      expect(r.status).toBe(201);
      return r.body as { id: string; token: string };
    };
    const t1 = await mk('one');
    const t2 = await mk('two');
    const viaT1 = await relayed({ 'X-API-Key': t1.token });
    const viaT1q = await (async () => {
      const before = upstreamSids();
      const s = await openSocket(`${gw.url.replace(/^http/, 'ws')}/ws?token=${t1.token}`);
      open.push(s);
      await s.next((f) => f.json?.type === 'status');
      return { s, sid: [...upstreamSids()].find((x) => !before.has(x))! };
    })();
    const viaT2 = await relayed({ 'X-API-Key': t2.token });
    const viaSession = await relayed({ Authorization: `Bearer ${u.token}` });
    const del = await hit(gw.url, `/gateway/api/tokens/${t1.id}`, { method: 'DELETE', headers: { Authorization: `Bearer ${u.token}` } });
    expect(del.status).toBe(204);
    await expectRevoked(viaT1);
    await expectRevoked(viaT1q);
    await stillRelaying(viaT2);
    await stillRelaying(viaSession);
  });

  it('a password change closes every socket opened before it; one opened with the new session stays', async () => {
    const u = await freshUser();
    const other = await freshUser();
    const s1 = await relayed({ Authorization: `Bearer ${u.token}` });
    const s2 = await relayed({ Cookie: u.cookie, Origin: gw.url });
    const bystander = await relayed({ Authorization: `Bearer ${other.token}` });
    const r = await hit(gw.url, '/gateway/api/me/password', {
      method: 'POST',
      headers: { Authorization: `Bearer ${u.token}` },
      body: { current_password: PW, new_password: 'another-horse-2' },
    });
    expect(r.status).toBe(200);
    await expectRevoked(s1);
    await expectRevoked(s2);
    await stillRelaying(bystander);
    const fresh = await relayed({ Authorization: `Bearer ${r.body.token}` });
    await stillRelaying(fresh);
  });

  it('an admin setting a password closes the user’s sockets', async () => {
    const u = await freshUser();
    const s = await relayed({ Authorization: `Bearer ${u.token}` });
    const r = await hit(gw.url, `/gateway/api/users/${u.name}`, {
      method: 'PATCH',
      headers: admin,
      body: { password: 'reset-by-admin-3' },
    });
    expect(r.status).toBe(200);
    await expectRevoked(s);
  });

  it('disabling a user closes all their sockets (any credential); other users’ stay', async () => {
    const u = await freshUser();
    const other = await freshUser();
    const tok = await hit(gw.url, '/gateway/api/tokens', {
      method: 'POST',
      headers: { Authorization: `Bearer ${u.token}` },
      body: { name: 't' },
    });
    const viaJwt = await relayed({ Authorization: `Bearer ${u.token}` });
    const viaToken = await relayed({ 'X-API-Key': tok.body.token });
    const bystander = await relayed({ Authorization: `Bearer ${other.token}` });
    const r = await hit(gw.url, `/gateway/api/users/${u.name}`, { method: 'PATCH', headers: admin, body: { disabled: true } });
    expect(r.status).toBe(200);
    await expectRevoked(viaJwt);
    await expectRevoked(viaToken);
    await stillRelaying(bystander);
  });

  it('deleting a user closes their sockets', async () => {
    const u = await freshUser();
    const s = await relayed({ Authorization: `Bearer ${u.token}` });
    const r = await hit(gw.url, `/gateway/api/users/${u.name}`, { method: 'DELETE', headers: admin });
    expect(r.status).toBe(204);
    await expectRevoked(s);
  });

  it('a socket left silent by a reconnect with the same clientId is closed too', async () => {
    const u = await freshUser();
    const url = `${gw.url.replace(/^http/, 'ws')}/ws?clientId=same-tab`;
    const first = await openSocket(url, { Authorization: `Bearer ${u.token}` });
    open.push(first);
    await first.next((f) => f.json?.type === 'status');
    const second = await openSocket(url, { Authorization: `Bearer ${u.token}` });
    open.push(second);
    await second.next((f) => f.json?.type === 'status');
    const out = await hit(gw.url, '/logout', { method: 'POST', headers: { Authorization: `Bearer ${u.token}` } });
    expect(out.status).toBe(200);
    expect((await closedWithin(first, 1000))?.code).toBe(1008);
    expect((await closedWithin(second, 1000))?.code).toBe(1008);
  });
});
