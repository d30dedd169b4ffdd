import type { IncomingMessage } from 'node:http';
import ipaddr from 'ipaddr.js';
import type { Gate } from '../app';
import type { Audit } from '../audit';
import { TOKEN_QUERY_PARAMS } from '../auth/chain';
import { AppError } from '../errors';
import { peekContext } from '../http/context';
import type { Logger } from '../log';
import { inRanges, parseIp, parseRange, socketIp } from './clientIp';
import { localBruteForceState, type BruteForceState } from './bruteForceState';
import type { IpLists } from './ipLists';

/** What the login/register routes call: refuse while locked, count a failure, note a success. */
export interface Limiter {
  /** throws 429 RATE_LIMITED (with Retry-After) while the client IP or the username is locked out */
  check(req: IncomingMessage, username?: string): void;
  fail(req: IncomingMessage, username?: string): void;
  succeed(req: IncomingMessage, username?: string): void;
}

/** The brute-force guard: the Limiter, plus a front-door gate refusing locked-out IPs that present credentials. */
export interface BruteForce extends Limiter {
  gate: Gate;
  /** counts a present-but-invalid credential from the credential chain (`chainDeps.onInvalid`) */
  onInvalidCredential(req: IncomingMessage, kind: string): void;
  close(): void;
}

/** Tunables; the defaults are the product's (DESIGN §4), tests shorten them. */
export interface BruteForceOptions {
  /** failures within the window that lock a key (default 5) */
  maxFailures?: number;
  /** counting window (default 15 minutes) */
  windowMs?: number;
  /** first lockout; each further failure in the window doubles it (default 30 s) */
  baseLockMs?: number;
  /** longest lockout (default 5 minutes) */
  maxLockMs?: number;
  /** window over which `blacklist_after_attempts` failures are counted (default 24 h) */
  blacklistWindowMs?: number;
  now?: () => number;
}

/** Credential kinds worth counting: ones an attacker can guess. A JWT (header, cookie) cannot be guessed, and a
 * browser tab holding a revoked session cookie must not lock its whole network out. */
const GUESSABLE = new Set(['api-key', 'authorization', 'query', 'jwt']);

const MAX_USERNAME_KEY = 64;

/**
 * The unit a client is counted (and auto-blacklisted) as: an IPv4 address itself, an IPv6 address its /64. One host
 * or subscriber is routinely given a whole /64; counted per address it could rotate through 2^64 of them, dodging
 * every lockout and — looking like many clients — locking other people's accounts by name.
 */
export function clientUnit(ip: string): string {
  const addr = parseIp(ip);
  if (!addr) return ip;
  if (addr.kind() === 'ipv4') return addr.toString();
  const parts = (addr as ipaddr.IPv6).parts.slice(0, 4);
  return `${new ipaddr.IPv6([...parts, 0, 0, 0, 0]).toString()}/64`;
}

/**
 * Failed logins, registrations and bad tokens, counted per client IP (the one client-IP function's answer, never a
 * header; IPv6 per /64, see clientUnit) and per username in express-rate-limit's MemoryStore; 5 in 15 minutes locks
 * the key for 30 s, doubling with each further failure up to 5 minutes. A username locks only once its failures come
 * from two or more clients (a distributed guesser); a single one is stopped by its own lock and cannot lock the owner
 * out.
 * `blacklist_after_attempts` N > 0 appends the IP (an IPv6 client's /64) to blacklist.txt after N failures (over 24 h).
 */
export function createBruteForce(deps: {
  config: { blacklist_after_attempts: number; trusted_proxies?: string[] };
  audit: Audit;
  ipLists: IpLists;
  logger: Logger;
  options?: BruteForceOptions;
  /** where counts and locks live (default: this process; redisBruteForceState for several replicas) */
  state?: (windowMs: number, blacklistWindowMs: number) => BruteForceState;
}): BruteForce {
  const { audit, ipLists, logger } = deps;
  const o = deps.options ?? {};
  const maxFailures = o.maxFailures ?? 5;
  const windowMs = o.windowMs ?? 15 * 60_000;
  const baseLockMs = o.baseLockMs ?? 30_000;
  const maxLockMs = o.maxLockMs ?? 5 * 60_000;
  const now = o.now ?? Date.now;
  const blacklistAfter = deps.config.blacklist_after_attempts;
  // A trusted proxy is infrastructure: when it names no client, its own address collects the failures, and
  // blacklisting it would lock out everyone behind it.
  const proxies = (deps.config.trusted_proxies ?? []).map(parseRange);

  const state = (deps.state ?? localBruteForceState)(windowMs, o.blacklistWindowMs ?? 24 * 3600_000);
  const { failures, blacklistCounts } = state;
  /** requests already counted once (the chain and a route may both report the same request) */
  const counted = new WeakSet<IncomingMessage>();

  const ipOf = (req: IncomingMessage) => peekContext(req)?.clientIp ?? socketIp(req);
  const unitOf = (req: IncomingMessage) => clientUnit(ipOf(req));
  const userKey = (username?: string) => {
    const u = typeof username === 'string' ? username.trim().toLowerCase().slice(0, MAX_USERNAME_KEY) : '';
    return u ? `user:${u}` : null;
  };
  const keysOf = (req: IncomingMessage, username?: string) => [`ip:${unitOf(req)}`, userKey(username)].filter((k): k is string => !!k);

  function retryAfterMs(keys: string[]): number {
    const t = now();
    let wait = 0;
    for (const k of keys) {
      const until = state.lockedUntil(k);
      if (until === undefined || until <= t) continue;
      wait = Math.max(wait, until - t);
    }
    return wait;
  }

  function refuse(waitMs: number): never {
    const secs = Math.max(1, Math.ceil(waitMs / 1000));
    throw new AppError(
      429,
      'RATE_LIMITED',
      `Too many failed attempts; try again in ${secs} s`,
      { retry_after: secs },
      { 'Retry-After': String(secs) },
    );
  }

  function check(req: IncomingMessage, username?: string): void {
    // Several replicas count in Redis: while it is away a password check could not be counted, so it is refused.
    if (!state.available())
      throw new AppError(
        503,
        'STORE_UNAVAILABLE',
        'Sign-in is paused: the shared lockout counters are unreachable; try again shortly',
        {},
        {
          'Retry-After': '2',
        },
      );
    const wait = retryAfterMs(keysOf(req, username));
    if (wait > 0) refuse(wait);
  }

  function countKey(req: IncomingMessage, key: string, username?: string): void {
    const ip = ipOf(req);
    failures.increment(key).then(
      async ({ totalHits }) => {
        if (key.startsWith('user:')) {
          // A name is locked only when its failures come from more than one address: one address is already
          // stopped by its own counter, and letting it lock the name too would let anyone lock the owner out.
          if ((await state.addUserIp(key, clientUnit(ip), totalHits === 1)) < 2) return;
        }
        if (totalHits < maxFailures) return;
        const lockMs = Math.min(maxLockMs, baseLockMs * 2 ** Math.min(20, totalHits - maxFailures));
        state.lock(key, now() + lockMs);
        audit.record({
          event: 'lockout',
          scope: key.startsWith('ip:') ? 'ip' : 'user',
          ip,
          user: username ?? null,
          user_agent: req.headers['user-agent'],
          failures: totalHits,
          retry_after: Math.ceil(lockMs / 1000),
        });
      },
      (err) => logger.error({ err }, 'brute-force counter failed'),
    );
  }

  function countForBlacklist(req: IncomingMessage): void {
    if (blacklistAfter <= 0) return;
    if (inRanges(ipOf(req), proxies)) {
      logger.warn({ ip: ipOf(req) }, 'failures counted against a trusted proxy (it sent no client address?); not blacklisting it');
      return;
    }
    const ip = unitOf(req);
    blacklistCounts
      .increment(ip)
      .then(async ({ totalHits }) => {
        if (totalHits < blacklistAfter) return;
        const added = await ipLists.appendToBlacklist(
          ip,
          `auto-blacklisted ${new Date(now()).toISOString()} after ${totalHits} failed attempts`,
        );
        if (added) {
          audit.record({
            event: 'ip_auto_blacklisted',
            ip: ipOf(req),
            entry: ip,
            user_agent: req.headers['user-agent'],
            failures: totalHits,
          });
          logger.warn({ ip, failures: totalHits }, 'address appended to the blacklist after repeated failures');
        }
      })
      .catch((err) => logger.error({ err, ip }, 'could not append to the blacklist'));
  }

  function fail(req: IncomingMessage, username?: string): void {
    const first = !counted.has(req);
    counted.add(req);
    // A request reported twice (chain and route) counts once for its IP; the username is only known to the route.
    if (first) {
      countKey(req, `ip:${unitOf(req)}`, username);
      countForBlacklist(req);
    }
    const uk = userKey(username);
    if (uk) countKey(req, uk, username);
  }

  function succeed(_req: IncomingMessage, username?: string): void {
    // The account owner got in: their name's counter starts over. The IP's does not — a valid login of one's own
    // must not buy more guesses at other accounts.
    const uk = userKey(username);
    if (!uk) return;
    state.unlock(uk);
    state.forgetUserIps(uk);
    void failures.resetKey(uk);
  }

  /** True when the request carries a credential an attacker could be guessing. */
  function presentsGuessable(req: IncomingMessage): boolean {
    if (req.headers['x-api-key'] !== undefined || req.headers.authorization !== undefined) return true;
    const q = peekContext(req)?.query;
    return !!q && TOKEN_QUERY_PARAMS.some((p) => q.has(p));
  }

  const gate: Gate = (req) => {
    if (!presentsGuessable(req)) return;
    const wait = retryAfterMs([`ip:${unitOf(req)}`]);
    if (wait > 0) refuse(wait);
  };

  return {
    check,
    fail,
    succeed,
    gate,
    onInvalidCredential(req, kind) {
      if (GUESSABLE.has(kind)) fail(req);
    },
    close() {
      state.close();
    },
  };
}
