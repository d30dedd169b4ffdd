import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../log';
import type { HfApi, HfTokenResponse } from './hfApi';

/** One user's HuggingFace OAuth token as kept on disk (never sent to a browser). */
export interface StoredToken {
  access_token: string;
  refresh_token: string | null;
  /** absolute unix seconds */
  expires_at: number;
  scope: string;
  /** the HF account name from whoami, when known */
  hf_username: string | null;
}

/** Refresh this long before the access token expires, so it never goes stale between a probe and a download. */
export const EXPIRY_BUFFER_SECS = 60;
/** After a refresh failed for a reason that may pass (network, HF 5xx), polls wait this long before asking HF again. */
export const REFRESH_RETRY_SECS = 30;

/** Per-user HuggingFace tokens under `<data_dir>/hf_tokens/<user>.json`, mode 0600, written atomically. */
export interface TokenStore {
  /** whether the user is logged in to HF (a token that is valid or can be refreshed) */
  has(user: string): boolean;
  /** a usable access token for the user, refreshing it when near expiry; null when none */
  valid(user: string): Promise<string | null>;
  /** the stored HF account name */
  hfUsername(user: string): string | null;
  save(user: string, t: HfTokenResponse, hfUsername: string | null): void;
  setHfUsername(user: string, name: string | null): void;
  /** removes only this user's token; idempotent */
  remove(user: string): boolean;
}

/** Where tokens live when not in files: every token known at start, writes, and what other replicas write. */
export interface TokenPersistence {
  initial: Map<string, StoredToken>;
  /** stores (or with null, deletes) a user's token; failures are logged there */
  save(user: string, t: StoredToken | null): void;
  onRemote(handler: (user: string, t: StoredToken | null) => void): void;
}

/** A filesystem-safe file name for a gateway username (hashed when it has unusual characters). */
export function tokenFileName(user: string): string {
  return /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$/.test(user)
    ? `${user}.json`
    : `u-${crypto.createHash('sha256').update(user).digest('hex')}.json`;
}

/** Turns an HF token response into what we keep. */
export function toStored(t: HfTokenResponse, previous: StoredToken | null, hfUsername: string | null, now: number): StoredToken {
  const expiresIn = Number(t.expires_in);
  return {
    access_token: t.access_token,
    refresh_token: t.refresh_token ?? previous?.refresh_token ?? null,
    expires_at: now + (Number.isFinite(expiresIn) && expiresIn > 0 ? expiresIn : 3600),
    scope: typeof t.scope === 'string' ? t.scope : (previous?.scope ?? ''),
    hf_username: hfUsername ?? previous?.hf_username ?? null,
  };
}

/** Creates the store. Memory is authoritative after first read: the gateway is the only writer. */
export function createTokenStore(deps: {
  dir: string;
  hfApi: HfApi;
  clientId: string | null;
  logger: Logger;
  now?: () => number;
  /** kept (encrypted) in the replicas' shared store instead of `dir` (store/compose.ts hfTokenPersistence) */
  persistence?: TokenPersistence;
}): TokenStore {
  const now = deps.now ?? (() => Date.now() / 1000);
  const cache = new Map<string, StoredToken | null>();
  /** bumped on every save/remove so a refresh that finishes after a logout is discarded, not resurrected */
  const generation = new Map<string, number>();
  const refreshing = new Map<string, Promise<string | null>>();
  /** when a user's last refresh failed transiently: polls run at 1 Hz and must not each call HF's token endpoint */
  const failedAt = new Map<string, number>();
  const file = (user: string) => path.join(deps.dir, tokenFileName(user));

  const shared = deps.persistence;
  if (shared) {
    for (const [u, t] of shared.initial) cache.set(u, t);
    shared.onRemote((u, t) => {
      cache.set(u, t);
      bump(u);
    });
  }

  function load(user: string): StoredToken | null {
    if (cache.has(user)) return cache.get(user)!;
    if (shared) return null;
    let t: StoredToken | null = null;
    try {
      const raw = JSON.parse(fs.readFileSync(file(user), 'utf8')) as Partial<StoredToken>;
      if (raw && typeof raw.access_token === 'string' && raw.access_token && typeof raw.expires_at === 'number') {
        t = {
          access_token: raw.access_token,
          refresh_token: typeof raw.refresh_token === 'string' ? raw.refresh_token : null,
          expires_at: raw.expires_at,
          scope: typeof raw.scope === 'string' ? raw.scope : '',
          hf_username: typeof raw.hf_username === 'string' ? raw.hf_username : null,
        };
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') deps.logger.warn({ user }, 'hf token file unreadable; treating as logged out');
    }
    cache.set(user, t);
    return t;
  }

  function write(user: string, t: StoredToken): void {
    if (shared) return shared.save(user, t);
    fs.mkdirSync(deps.dir, { recursive: true, mode: 0o700 });
    const target = file(user);
    const tmp = `${target}.${process.pid}.${crypto.randomBytes(6).toString('hex')}.tmp`;
    const fd = fs.openSync(tmp, 'w', 0o600);
    try {
      fs.writeSync(fd, JSON.stringify(t));
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.chmodSync(tmp, 0o600);
    fs.renameSync(tmp, target);
  }

  function bump(user: string): void {
    generation.set(user, (generation.get(user) ?? 0) + 1);
    failedAt.delete(user);
  }

  /** Forgets the user's token (memory and file). */
  function drop(user: string): boolean {
    const had = !!load(user);
    bump(user);
    cache.set(user, null);
    if (shared) {
      shared.save(user, null);
      return had;
    }
    try {
      fs.unlinkSync(file(user));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    return had;
  }

  async function refresh(user: string, t: StoredToken): Promise<string | null> {
    if (!t.refresh_token || !deps.clientId) return null;
    const gen = generation.get(user) ?? 0;
    try {
      const r = await deps.hfApi.refresh({ refreshToken: t.refresh_token, clientId: deps.clientId });
      if ((generation.get(user) ?? 0) !== gen) return null; // logged out (or re-logged in) meanwhile
      const next = toStored(r, t, null, now());
      write(user, next);
      cache.set(user, next);
      bump(user);
      return next.access_token;
    } catch (e) {
      if ((generation.get(user) ?? 0) !== gen) return null;
      if ((e as { status?: number }).status === 400) {
        // invalid_grant: the refresh token is revoked or used up; keeping it would only ask HF again on every poll.
        deps.logger.info({ user }, 'hf refresh token rejected; the user is logged out of HuggingFace');
        try {
          drop(user);
        } catch {
          /* the memory copy is gone already; the file is retried at logout */
        }
        return null;
      }
      failedAt.set(user, now());
      deps.logger.warn({ user, err: (e as Error).message }, 'hf token refresh failed');
      return null;
    }
  }

  return {
    has(user) {
      const t = load(user);
      return !!t && (t.expires_at - now() > EXPIRY_BUFFER_SECS || !!t.refresh_token);
    },
    async valid(user) {
      const t = load(user);
      if (!t) return null;
      if (t.expires_at - now() > EXPIRY_BUFFER_SECS) return t.access_token;
      const failed = failedAt.get(user);
      if (failed !== undefined && now() - failed < REFRESH_RETRY_SECS) return null;
      let p = refreshing.get(user);
      if (!p) {
        p = refresh(user, t).finally(() => refreshing.delete(user));
        refreshing.set(user, p);
      }
      return p;
    },
    hfUsername(user) {
      return load(user)?.hf_username ?? null;
    },
    save(user, t, hfUsername) {
      const next = toStored(t, null, hfUsername, now());
      write(user, next);
      cache.set(user, next);
      bump(user);
    },
    setHfUsername(user, name) {
      const t = load(user);
      if (!t || t.hf_username === name) return;
      const next = { ...t, hf_username: name };
      write(user, next);
      cache.set(user, next);
    },
    remove: drop,
  };
}

/**
 * The token store addressed by username but kept per account key (users/types.ts AccountKeys): a later account
 * of a deleted account's name never finds the earlier one's HuggingFace token.
 */
export function keyedTokenStore(inner: TokenStore, keyOf: (user: string) => string): TokenStore {
  return {
    has: (u) => inner.has(keyOf(u)),
    valid: (u) => inner.valid(keyOf(u)),
    hfUsername: (u) => inner.hfUsername(keyOf(u)),
    save: (u, t, name) => inner.save(keyOf(u), t, name),
    setHfUsername: (u, name) => inner.setHfUsername(keyOf(u), name),
    remove: (u) => inner.remove(keyOf(u)),
  };
}
