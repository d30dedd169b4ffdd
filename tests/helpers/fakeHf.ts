/**
 * A fake HuggingFace for the model-download tests: the Hub (auth-check, resolve → 302 to a CDN with
 * X-Linked-Size / X-Linked-Etag, OAuth authorize + token with PKCE S256 verification, whoami-v2) and a second
 * server acting as the CDN (Range, If-Range, throttling, cut connections). The Hub listens on 127.0.0.1:P and the CDN
 * is addressed as localhost:Q, so the two are different "hosts" to the gateway's allow-list (HF token only to HF).
 * Every request to either server is recorded.
 */
import crypto from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

/** One request either server received. */
export interface FakeHfRequest {
  server: 'hf' | 'cdn';
  method: string;
  /** path + query as received */
  url: string;
  headers: http.IncomingHttpHeaders;
}

/** Options for a hosted file. */
export interface FakeHfFileOptions {
  /** a gated repo: auth-check and resolve need a token with access */
  gated?: boolean;
  /** served through the CDN with X-Linked-* headers (default true); false = served directly with 200 */
  lfs?: boolean;
  rev?: string;
  /** advertise this sha256 (X-Linked-Etag) instead of the real one (hash-mismatch tests) */
  advertisedSha256?: string;
  /** advertise this size (X-Linked-Size) instead of the real one */
  advertisedSize?: number;
  /** answer resolve with a 302 to this Location instead (redirect / SSRF tests) */
  redirectTo?: string;
  /** CDN: bytes per second (slow downloads for progress / cancellation tests) */
  throttleBytesPerSec?: number;
  /** CDN: cut the connection after this many body bytes, for the first `failTimes` GETs */
  failAfterBytes?: number;
  failTimes?: number;
  /** CDN: ignore Range and always send the whole body */
  ignoreRange?: boolean;
}

interface HostedFile extends FakeHfFileOptions {
  repo: string;
  file: string;
  rev: string;
  bytes: Buffer;
  sha256: string;
  failuresLeft: number;
}

interface IssuedToken {
  hfUser: string;
  expiresAt: number;
}

/** The running fake. */
export interface FakeHf {
  /** the Hub, e.g. http://127.0.0.1:PORT (use as HF_ENDPOINT) */
  url: string;
  /** host:port of the Hub, for `model_downloads.allowed_hosts` */
  host: string;
  /** the CDN, e.g. http://localhost:PORT */
  cdnUrl: string;
  /** host:port of the CDN, for `model_downloads.redirect_hosts` */
  cdnHost: string;
  /** the OAuth client id the fake accepts */
  clientId: string;
  requests: FakeHfRequest[];
  /** the HF account name the next /oauth/authorize signs in as */
  oauthUser: string;
  /** access-token lifetime returned by /oauth/token (seconds) */
  tokenTtlSec: number;
  /** token requests received: grant type and whether the PKCE verifier matched */
  tokenRequests: { grant_type: string; pkceOk: boolean | null }[];
  addFile(repo: string, file: string, bytes: Buffer, opts?: FakeHfFileOptions): { url: string; sha256: string; size: number };
  fileUrl(repo: string, file: string, rev?: string): string;
  /** deny (or re-allow) an HF account's access to a gated repo; by default every valid token has access */
  setAccess(repo: string, hfUser: string, allowed: boolean): void;
  /** issues an access token directly (as if that HF user had logged in) */
  issueToken(hfUser: string): string;
  /** follows an authorize_url like a browser whose user consents; returns the callback URL HF redirects to */
  authorize(authorizeUrl: string): Promise<string>;
  /** requests whose path contains `part` */
  count(part: string, server?: 'hf' | 'cdn'): number;
  clearRequests(): void;
  close(): Promise<void>;
}

const b64url = (b: Buffer) => b.toString('base64url');

async function readBody(req: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

function json(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  const s = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(s), ...headers });
  res.end(s);
}

function listen(server: http.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve((server.address() as AddressInfo).port)));
}

/** Starts the Hub and the CDN. */
export async function startFakeHf(opts: { clientId?: string } = {}): Promise<FakeHf> {
  const files = new Map<string, HostedFile>(); // `${repo}@${rev}/${file}`
  const bySha = new Map<string, HostedFile>();
  const denied = new Set<string>(); // `${repo}\0${hfUser}`
  const access = new Map<string, IssuedToken>();
  const refresh = new Map<string, string>(); // refresh token → hfUser
  const codes = new Map<string, { challenge: string; redirectUri: string; clientId: string; hfUser: string; used: boolean }>();
  const sockets = new Set<import('node:net').Socket>();

  const fake = {
    url: '',
    host: '',
    cdnUrl: '',
    cdnHost: '',
    clientId: opts.clientId ?? 'test-client-id',
    requests: [] as FakeHfRequest[],
    oauthUser: 'hf-alice',
    tokenTtlSec: 3600,
    tokenRequests: [] as { grant_type: string; pkceOk: boolean | null }[],
  } as FakeHf;

  const repoExists = (repo: string) => [...files.values()].some((f) => f.repo === repo);
  const repoGated = (repo: string) => [...files.values()].some((f) => f.repo === repo && f.gated);

  function bearer(req: http.IncomingMessage): IssuedToken | null | undefined {
    const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
    if (!m) return undefined; // none sent
    const t = access.get(m[1]);
    return t && t.expiresAt > Date.now() / 1000 ? t : null; // null: sent but invalid/expired
  }

  /** 200 / 401 / 403 for a repo, as the Hub decides for gated repos. */
  function gate(req: http.IncomingMessage, repo: string): number {
    if (!repoGated(repo)) return 200;
    const t = bearer(req);
    if (!t) return 401;
    return denied.has(`${repo}\u0000${t.hfUser}`) ? 403 : 200;
  }

  function issue(hfUser: string) {
    const at = `hf_at_${b64url(crypto.randomBytes(18))}`;
    const rt = `hf_rt_${b64url(crypto.randomBytes(18))}`;
    access.set(at, { hfUser, expiresAt: Date.now() / 1000 + fake.tokenTtlSec });
    refresh.set(rt, hfUser);
    return { access_token: at, refresh_token: rt, expires_in: fake.tokenTtlSec, token_type: 'bearer', scope: 'openid profile gated-repos' };
  }

  /** Sends `bytes` honouring Range / If-Range, optional throttling and a deliberate cut. */
  function sendBytes(req: http.IncomingMessage, res: http.ServerResponse, f: HostedFile, extra: Record<string, string>) {
    const etag = `"${f.sha256}"`;
    let start = 0;
    let end = f.bytes.length - 1;
    let status = 200;
    const range = /^bytes=(\d+)-(\d*)$/.exec(String(req.headers.range ?? ''));
    const ifRange = req.headers['if-range'];
    if (range && !f.ignoreRange && (!ifRange || ifRange === etag)) {
      start = Number(range[1]);
      if (range[2]) end = Math.min(end, Number(range[2]));
      if (start > end) {
        res.writeHead(416, { 'content-range': `bytes */${f.bytes.length}` });
        return res.end();
      }
      status = 206;
    }
    const body = f.bytes.subarray(start, end + 1);
    const headers: Record<string, string | number> = {
      'content-type': 'application/octet-stream',
      'content-length': body.length,
      'accept-ranges': 'bytes',
      etag,
      ...extra,
    };
    if (status === 206) headers['content-range'] = `bytes ${start}-${end}/${f.bytes.length}`;
    res.writeHead(status, headers);
    if (req.method === 'HEAD') return res.end();
    let cut = Infinity;
    if (f.failAfterBytes !== undefined && f.failuresLeft > 0) {
      f.failuresLeft--;
      cut = f.failAfterBytes;
    }
    const rate = f.throttleBytesPerSec;
    if (!rate && cut === Infinity) return res.end(body);
    const chunk = rate ? Math.max(1, Math.floor(rate / 20)) : 64 * 1024;
    let off = 0;
    const step = () => {
      if (res.destroyed) return;
      if (off >= cut) return void res.socket?.destroy();
      const n = Math.min(chunk, body.length - off, cut - off);
      const piece = body.subarray(off, off + n);
      off += n;
      if (off >= body.length) return void res.end(piece);
      res.write(piece);
      if (rate) setTimeout(step, 50);
      else setImmediate(step);
    };
    step();
  }

  const hub = http.createServer(async (req, res) => {
    fake.requests.push({ server: 'hf', method: req.method ?? 'GET', url: req.url ?? '/', headers: req.headers });
    const u = new URL(req.url ?? '/', 'http://x');
    const parts = u.pathname.split('/').slice(1).map(decodeURIComponent);
    try {
      // /api/models/{org}/{repo}/auth-check
      if (parts[0] === 'api' && parts[1] === 'models' && parts[4] === 'auth-check' && parts.length === 5) {
        const repo = `${parts[2]}/${parts[3]}`;
        if (!repoExists(repo)) return json(res, 404, { error: 'Repository not found' }, { 'x-error-code': 'RepoNotFound' });
        const g = gate(req, repo);
        if (g !== 200) return json(res, g, { error: 'Access to this model is restricted' }, { 'x-error-code': 'GatedRepo' });
        return json(res, 200, {});
      }
      if (u.pathname === '/api/whoami-v2') {
        const t = bearer(req);
        if (!t) return json(res, 401, { error: 'Invalid credentials in Authorization header' });
        return json(res, 200, { type: 'user', name: t.hfUser, fullname: t.hfUser.toUpperCase() });
      }
      if (u.pathname === '/oauth/authorize' && req.method === 'GET') {
        const q = u.searchParams;
        if (q.get('client_id') !== fake.clientId) return json(res, 400, { error: 'invalid_client' });
        if (q.get('response_type') !== 'code' || q.get('code_challenge_method') !== 'S256' || !q.get('code_challenge') || !q.get('state'))
          return json(res, 400, { error: 'invalid_request' });
        const redirectUri = q.get('redirect_uri') ?? '';
        const code = b64url(crypto.randomBytes(16));
        codes.set(code, { challenge: q.get('code_challenge')!, redirectUri, clientId: fake.clientId, hfUser: fake.oauthUser, used: false });
        const loc = new URL(redirectUri);
        loc.searchParams.set('code', code);
        loc.searchParams.set('state', q.get('state')!);
        res.writeHead(302, { location: loc.toString() });
        return res.end();
      }
      if (u.pathname === '/oauth/token' && req.method === 'POST') {
        const form = new URLSearchParams(await readBody(req));
        const grant = form.get('grant_type') ?? '';
        if (grant === 'authorization_code') {
          const c = codes.get(form.get('code') ?? '');
          const verifier = form.get('code_verifier') ?? '';
          const pkceOk = !!c && b64url(crypto.createHash('sha256').update(verifier).digest()) === c.challenge;
          fake.tokenRequests.push({ grant_type: grant, pkceOk });
          if (!c || c.used || !pkceOk || form.get('client_id') !== c.clientId || form.get('redirect_uri') !== c.redirectUri)
            return json(res, 400, { error: 'invalid_grant' });
          c.used = true;
          return json(res, 200, issue(c.hfUser));
        }
        if (grant === 'refresh_token') {
          fake.tokenRequests.push({ grant_type: grant, pkceOk: null });
          const rt = form.get('refresh_token') ?? '';
          const who = refresh.get(rt);
          if (!who || form.get('client_id') !== fake.clientId) return json(res, 400, { error: 'invalid_grant' });
          refresh.delete(rt);
          return json(res, 200, issue(who));
        }
        return json(res, 400, { error: 'unsupported_grant_type' });
      }
      // /{org}/{repo}/resolve/{rev}/{file...}
      if (parts.length >= 5 && parts[2] === 'resolve' && (req.method === 'GET' || req.method === 'HEAD')) {
        const repo = `${parts[0]}/${parts[1]}`;
        const f = files.get(`${repo}@${parts[3]}/${parts.slice(4).join('/')}`);
        if (!f)
          return json(res, 404, { error: 'Entry not found' }, { 'x-error-code': repoExists(repo) ? 'EntryNotFound' : 'RepoNotFound' });
        const g = gate(req, repo);
        if (g !== 200) return json(res, g, { error: 'Access to this model is restricted' }, { 'x-error-code': 'GatedRepo' });
        const sha = f.advertisedSha256 ?? f.sha256;
        const size = String(f.advertisedSize ?? f.bytes.length);
        if (f.redirectTo) {
          res.writeHead(302, { location: f.redirectTo, 'x-linked-size': size, 'content-length': 0 });
          return res.end();
        }
        if (f.lfs === false) return sendBytes(req, res, f, {});
        const sig = b64url(crypto.createHmac('sha256', 'cdn').update(f.sha256).digest()).slice(0, 16);
        const location = `${fake.cdnUrl}/repos/${f.sha256}?response-content-disposition=attachment%3B+filename%3D${encodeURIComponent(f.file)}&sig=${sig}`;
        res.writeHead(302, { location, 'x-linked-size': size, 'x-linked-etag': `"${sha}"`, etag: `"${sha}"`, 'content-length': 0 });
        return res.end();
      }
      json(res, 404, { error: 'not found' });
    } catch (e) {
      if (!res.headersSent) json(res, 500, { error: String(e) });
    }
  });

  const cdn = http.createServer((req, res) => {
    fake.requests.push({ server: 'cdn', method: req.method ?? 'GET', url: req.url ?? '/', headers: req.headers });
    const u = new URL(req.url ?? '/', 'http://x');
    const m = /^\/repos\/([0-9a-f]{64})$/.exec(u.pathname);
    const f = m ? bySha.get(m[1]) : undefined;
    const sig = f ? b64url(crypto.createHmac('sha256', 'cdn').update(f.sha256).digest()).slice(0, 16) : '';
    if (!f || u.searchParams.get('sig') !== sig) return json(res, 403, { error: 'SignatureDoesNotMatch' });
    sendBytes(req, res, f, {});
  });

  for (const s of [hub, cdn]) s.on('connection', (sock) => (sockets.add(sock), sock.on('close', () => sockets.delete(sock))));
  const hubPort = await listen(hub);
  const cdnPort = await listen(cdn);
  fake.url = `http://127.0.0.1:${hubPort}`;
  fake.host = `127.0.0.1:${hubPort}`;
  fake.cdnUrl = `http://localhost:${cdnPort}`;
  fake.cdnHost = `localhost:${cdnPort}`;

  fake.fileUrl = (repo, file, rev = 'main') => `${fake.url}/${repo}/resolve/${rev}/${file}`;
  fake.addFile = (repo, file, bytes, o = {}) => {
    const rev = o.rev ?? 'main';
    const sha256 = crypto.createHash('sha256').update(bytes).digest('hex');
    const f: HostedFile = { ...o, repo, file, rev, bytes, sha256, failuresLeft: o.failTimes ?? (o.failAfterBytes !== undefined ? 1 : 0) };
    files.set(`${repo}@${rev}/${file}`, f);
    bySha.set(sha256, f);
    return { url: fake.fileUrl(repo, file, rev), sha256, size: bytes.length };
  };
  fake.setAccess = (repo, hfUser, allowed) => {
    if (allowed) denied.delete(`${repo}\u0000${hfUser}`);
    else denied.add(`${repo}\u0000${hfUser}`);
  };
  fake.issueToken = (hfUser) => issue(hfUser).access_token;
  fake.authorize = async (authorizeUrl) => {
    const res = await fetch(authorizeUrl, { redirect: 'manual' });
    const loc = res.headers.get('location');
    await res.arrayBuffer();
    if (res.status !== 302 || !loc) throw new Error(`authorize answered ${res.status}`);
    return loc;
  };
  fake.count = (part, server) => fake.requests.filter((r) => r.url.includes(part) && (!server || r.server === server)).length;
  fake.clearRequests = () => {
    fake.requests.length = 0;
  };
  fake.close = async () => {
    for (const s of sockets) s.destroy();
    await Promise.all([hub, cdn].map((s) => new Promise<void>((r) => s.close(() => r()))));
  };
  return fake;
}

// ───────────── small client helpers shared by the downloads tests ─────────────

/** A JSON answer from the gateway. */
export interface JsonReply {
  status: number;
  body: any;
  text: string;
  headers: Headers;
}

/** Calls the gateway's download API with the given credential headers (default: none). */
export async function callApi(
  base: string,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<JsonReply> {
  const res = await fetch(base + path, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: any = null;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = null;
  }
  return { status: res.status, body: parsed, text, headers: res.headers };
}

/** Creates a user with the given permissions through the admin API (as `admin` headers) and signs them in; Bearer headers. */
export async function userWith(
  base: string,
  admin: Record<string, string>,
  username: string,
  permissions: string[],
  password = 'correct-horse-1',
): Promise<Record<string, string>> {
  const c = await callApi(base, 'POST', '/gateway/api/users', { username, password, role: 'user', permissions }, admin);
  if (c.status !== 201 && c.status !== 200) throw new Error(`create ${username}: ${c.status} ${c.text}`);
  const l = await callApi(base, 'POST', '/login', { username, password });
  return { authorization: `Bearer ${l.body.token}` };
}

/** Polls `fn` until it returns a truthy value (or throws after `timeoutMs`); resolves to that value. */
export async function waitFor<T>(fn: () => Promise<T> | T, timeoutMs = 10_000, stepMs = 25): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: T;
  for (;;) {
    last = await fn();
    if (last) return last as NonNullable<T>;
    if (Date.now() > deadline) throw new Error('waitFor: timed out');
    await new Promise((r) => setTimeout(r, stepMs));
  }
}
