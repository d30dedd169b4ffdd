import type { Logger } from '../log';
import type { HfApi } from './hfApi';
import type { HostPolicy } from './hosts';
import { BlockedError, type SafeHttp } from './safeHttp';

/** What a poll needs to know about one model URL. */
export interface ProbeResult {
  file_size: number | null;
  /** HF only: true = fetchable with the caller's token (or public), false = gated without access, null = not HF / unknown */
  is_hf_downloadable: boolean | null;
  /** sha256 HF publishes for LFS files (X-Linked-Etag), when known */
  sha256: string | null;
  /** why the URL may not be fetched at all (e.g. its name resolves to a private address), else null */
  blocked: string | null;
}

interface SizeEntry {
  size: number | null;
  sha256: string | null;
  blocked: string | null;
  at: number;
}

const NOTHING: ProbeResult = { file_size: null, is_hf_downloadable: null, sha256: null, blocked: null };
/** A size probe that found nothing is retried after this long (a found size is kept). */
const SIZE_RETRY_MS = 30_000;
/**
 * How long a per-user access answer for a gated repo is reused. Clients poll at 1 Hz, and a poll must not cost an HF call
 * per gated repo. Granted access rarely goes away (a download would then fail visibly); a refusal is asked again sooner,
 * so accepting a repo's terms on HF shows up within a minute. Login and logout forget the user's answers at once.
 */
const accessTtlMs = (ok: boolean | null) => (ok === true ? 10 * 60_000 : ok === false ? 60_000 : 10_000);
const MAX_ENTRIES = 10_000;

/** Parses a content length header value. */
export function parseLength(v: string | string[] | undefined): number | null {
  const s = Array.isArray(v) ? v[0] : v;
  if (!s || !/^\d{1,16}$/.test(s.trim())) return null;
  return Number(s.trim());
}

/** The sha256 in an HF X-Linked-Etag (LFS files), else null. */
export function sha256FromEtag(v: string | string[] | undefined): string | null {
  const s = (Array.isArray(v) ? v[0] : v)?.trim().replace(/^W\//, '').replace(/^"|"$/g, '').toLowerCase();
  return s && /^[0-9a-f]{64}$/.test(s) ? s : null;
}

/** Runs `fn` once per key among concurrent callers. */
function singleFlight<T>() {
  const inflight = new Map<string, Promise<T>>();
  return (key: string, fn: () => Promise<T>): Promise<T> => {
    let p = inflight.get(key);
    if (!p) {
      p = fn().finally(() => inflight.delete(key));
      inflight.set(key, p);
    }
    return p;
  };
}

/** Caps concurrent outbound probes: a poll naming a thousand new URLs must not open a thousand connections at once. */
function limiter(max: number) {
  let active = 0;
  const waiting: (() => void)[] = [];
  const run = async <T>(fn: () => Promise<T>): Promise<T> => {
    // A finishing call hands its slot straight to the next waiter, so `active` never exceeds `max`.
    if (active >= max) await new Promise<void>((r) => waiting.push(r));
    else active++;
    try {
      return await fn();
    } finally {
      const next = waiting.shift();
      if (next) next();
      else active--;
    }
  };
  return Object.assign(run, { busy: () => active > 0 || waiting.length > 0 });
}

/** Outbound probes in flight at once, in all; and for any one user (the first caller of a single-flight pays). */
const OUTBOUND_MAX = 16;
const OUTBOUND_PER_USER = 8;

function bounded<K, V>(m: Map<K, V>): void {
  if (m.size > MAX_ENTRIES) m.clear();
}

/** Gated detection and size probes, cached per URL as upstream designed; downloadability per caller's token. */
export interface Prober {
  probe(url: string, token: { user: string; token: string | null }): Promise<ProbeResult>;
  /** forget per-user answers (after a login or logout) */
  forgetUser(user: string): void;
}

/** Builds the prober. */
export function createProber(deps: { hosts: HostPolicy; http: SafeHttp; hf: HfApi; logger: Logger }): Prober {
  const gated = new Map<string, boolean>();
  const sizes = new Map<string, SizeEntry>();
  const access = new Map<string, { ok: boolean | null; at: number }>();
  const gatedFlight = singleFlight<boolean | null>();
  const sizeFlight = singleFlight<SizeEntry>();
  const accessFlight = singleFlight<boolean | null>();
  const outbound = limiter(OUTBOUND_MAX);
  const perUser = new Map<string, ReturnType<typeof limiter>>();

  /**
   * Polling is open to every signed-in user, and each new URL costs an outbound probe: one user naming thousands of
   * new URLs waits behind their own probes and never holds every slot, so everyone else's polls still answer.
   */
  async function outboundFor<T>(user: string, fn: () => Promise<T>): Promise<T> {
    let mine = perUser.get(user);
    if (!mine) perUser.set(user, (mine = limiter(OUTBOUND_PER_USER)));
    try {
      return await mine(() => outbound(fn));
    } finally {
      if (!mine.busy() && perUser.get(user) === mine) perUser.delete(user);
    }
  }

  /** Gated-ness is intrinsic: asked once per URL, anonymously (with a token a gated-but-accepted repo looks public). */
  async function isGated(url: string, repo: string, user: string): Promise<boolean | null> {
    const known = gated.get(url);
    if (known !== undefined) return known;
    return gatedFlight(url, async () => {
      const r = await outboundFor(user, () => deps.hf.authCheck(repo, null));
      if (r === null) return null; // network trouble: not cached, asked again next poll
      const g = r !== 'ok';
      bounded(gated);
      gated.set(url, g);
      return g;
    });
  }

  async function hasAccess(user: string, repo: string, token: string): Promise<boolean | null> {
    const key = `${user}\u0000${repo}`;
    const hit = access.get(key);
    if (hit && Date.now() - hit.at < accessTtlMs(hit.ok)) return hit.ok;
    return accessFlight(key, async () => {
      const r = await outboundFor(user, () => deps.hf.authCheck(repo, token));
      const ok = r === null ? null : r === 'ok';
      bounded(access);
      access.set(key, { ok, at: Date.now() });
      return ok;
    });
  }

  async function headOnce(url: string, token: string | null, follow: boolean) {
    const { res, first } = await deps.http.request(url, { method: 'HEAD', hfToken: token, follow, timeoutMs: 15_000 });
    res.resume();
    return { status: res.statusCode ?? 0, headers: res.headers, first };
  }

  /** HEAD without following: HF's 302 carries X-Linked-Size; otherwise follow to the file itself. */
  async function probeSize(url: string, token: string | null): Promise<SizeEntry> {
    try {
      let r = await headOnce(url, token, false);
      const linked = parseLength(r.headers['x-linked-size']);
      if (linked !== null) return { size: linked, sha256: sha256FromEtag(r.headers['x-linked-etag']), blocked: null, at: Date.now() };
      if (r.status >= 300 && r.status < 400) r = await headOnce(url, token, true);
      if (r.status === 200)
        return {
          size: parseLength(r.headers['content-length']),
          sha256: sha256FromEtag(r.first['x-linked-etag']),
          blocked: null,
          at: Date.now(),
        };
    } catch (e) {
      if (e instanceof BlockedError) return { size: null, sha256: null, blocked: e.message, at: Date.now() };
      deps.logger.debug({ err: (e as Error).message }, 'model size probe failed');
    }
    return { size: null, sha256: null, blocked: null, at: Date.now() };
  }

  async function size(url: string, token: string | null, user: string): Promise<SizeEntry> {
    const hit = sizes.get(url);
    if (hit && (hit.size !== null || Date.now() - hit.at < SIZE_RETRY_MS)) return hit;
    return sizeFlight(url, async () => {
      const e = await outboundFor(user, () => probeSize(url, token));
      bounded(sizes);
      sizes.set(url, e);
      return e;
    });
  }

  return {
    async probe(raw, who) {
      const c = deps.hosts.checkInitial(raw);
      if (!c.ok) return NOTHING;
      const repo = deps.hosts.repoId(c.url);
      if (!deps.hosts.isHf(c.url) || !repo) {
        const s = await size(raw, null, who.user);
        return { file_size: s.size, is_hf_downloadable: null, sha256: s.sha256, blocked: s.blocked };
      }
      const g = await isGated(raw, repo, who.user);
      if (g === null) return NOTHING;
      let ok: boolean | null = true;
      if (g) ok = who.token ? await hasAccess(who.user, repo, who.token) : false;
      // Only probe the size when the caller can fetch it: a 401 must not be cached as "size unknown" past a login.
      if (ok !== true) return { file_size: null, is_hf_downloadable: ok, sha256: null, blocked: null };
      const s = await size(raw, g ? who.token : null, who.user);
      return { file_size: s.size, is_hf_downloadable: true, sha256: s.sha256, blocked: s.blocked };
    },
    forgetUser(user) {
      for (const k of access.keys()) if (k.startsWith(`${user}\u0000`)) access.delete(k);
    },
  };
}
