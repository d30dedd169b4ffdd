import type pg from 'pg';
import type { Revocations } from '../auth/revocations';
import { AppError, errors } from '../errors';
import type { Logger } from '../log';
import type { GatewayUserStore } from '../users/store';
import { emailKey, newUserRecord, RESERVED_USERNAMES } from '../users/rules';
import type { UserRecord } from '../users/types';
import type { ChangeFeed } from './feed';
import { pgCredentialParts } from './pgCredentials';
import { toUser, UserCache, type UserRow } from './pgUserCache';
import { q, storeUnavailable, withTx } from './pg';

const copyUser = (u: UserRecord): UserRecord => ({ ...u, permissions: [...u.permissions] });
const USERNAME_MAX = 32;
/** Every change to accounts takes this transaction lock: USER_EXISTS and LAST_ADMIN are decided one at a time. */
const USERS_LOCK = 7_254_131_302;
const enabledAdmins = (users: Iterable<UserRecord>) => [...users].filter((u) => u.role === 'admin' && !u.disabled).length;
const keyOfRecord = (u: UserRecord) => (u.legacy ? u.username : u.id);

/** The 23505 unique violation on the email column (another account holds it). */
const emailTaken = (e: unknown) =>
  (e as { code?: string; constraint?: string }).code === '23505' && /email/.test(String((e as { constraint?: string }).constraint));

/**
 * The user store on PostgreSQL, for several replicas: the same contract as the file store (users/store.ts),
 * checked by the same test-suite. Writes are transactions that decide USER_EXISTS / LAST_ADMIN / EMAIL_EXISTS
 * against the database under one lock; reads come from this replica's cache (pgUserCache.ts), which the change
 * feed keeps fresh and which refuses (503 STORE_UNAVAILABLE) while the feed is down. Changes made elsewhere that
 * void credentials (password, disable, deletion, logout, token revoked) are announced on this replica's bus too.
 */
export async function createPgUserStore(opts: {
  pool: pg.Pool;
  feed: ChangeFeed;
  logger?: Logger;
  now?: () => number;
  revocations?: Revocations;
}): Promise<GatewayUserStore> {
  const { pool, feed, logger, revocations: bus } = opts;
  const now = opts.now ?? Date.now;
  const cache = new UserCache(pool, now);
  const createdListeners: ((u: UserRecord) => void)[] = [];
  const removedListeners: ((username: string, accountId: string, key: string) => void)[] = [];
  const announce = (u: UserRecord, reason: 'password' | 'disabled' | 'deleted') =>
    bus?.emit({ kind: 'user', username: u.username, accountId: u.id, reason });
  const removed = (u: UserRecord) => {
    announce(u, 'deleted');
    for (const l of removedListeners) {
      try {
        l(u.username, u.id, keyOfRecord(u));
      } catch (err) {
        logger?.warn({ err, user: u.username }, 'clean-up after a removal failed');
      }
    }
  };
  /** What a change of `old` into `cur` (made anywhere) voids, announced like the file store's reload does. */
  const compare = (old: UserRecord | undefined, cur: UserRecord | undefined) => {
    if (!old) return;
    if (!cur || cur.id !== old.id) return removed(old);
    if (cur.disabled && !old.disabled) announce(cur, 'disabled');
    else if (cur.tokens_valid_after > old.tokens_valid_after) announce(cur, 'password');
  };

  await cache.loadAll();
  feed.onResync(async () => {
    // Whatever was voided elsewhere while the feed was down is announced now (open sockets close).
    const revokedBefore = new Set(cache.revoked.keys());
    const tokensBefore = [...cache.tokens.keys()];
    const before = await cache.loadAll();
    for (const old of before.values()) compare(old, cache.users.get(old.username));
    for (const jti of cache.revoked.keys()) if (!revokedBefore.has(jti)) bus?.emit({ kind: 'jti', jti });
    for (const id of tokensBefore) if (!cache.tokens.has(id)) bus?.emit({ kind: 'token', tokenId: id });
  });
  // Changes are applied in the order they arrive, one at a time: two notifications for one user never interleave.
  let applying: Promise<void> = Promise.resolve();
  feed.on((c) => {
    applying = applying.then(async () => {
      try {
        if (c.k === 'user') compare(await cache.loadUser(c.id), cache.users.get(c.id));
        else if (c.k === 'token') {
          if (await cache.loadToken(c.id)) bus?.emit({ kind: 'token', tokenId: c.id });
        } else if (c.k === 'jti') {
          await cache.loadRevocation(c.id);
          bus?.emit({ kind: 'jti', jti: c.id });
        } else if (c.k === 'meta' && c.id === 'setup') await cache.loadSetup();
      } catch (err) {
        logger?.error({ err, change: c }, 'could not apply a change from another replica');
      }
    });
  });

  /** Every synchronous read: refused while the cache cannot be known to be fresh. */
  const fresh = () => {
    if (!feed.fresh()) throw storeUnavailable();
    return cache;
  };
  const notify = (c: pg.PoolClient, k: 'user' | 'token' | 'jti' | 'meta', id: string) =>
    c.query('SELECT pg_notify($1, $2)', ['gw_change', feed.payload(k, id)]);
  const lock = (c: pg.PoolClient) => c.query('SELECT pg_advisory_xact_lock($1)', [USERS_LOCK]);
  const voidBefore = () => now() + 1;
  const rowOf = async (c: pg.PoolClient, username: string) => {
    const r = (await c.query<UserRow>('SELECT * FROM gw_users WHERE username = $1', [username])).rows[0];
    return r && toUser(r);
  };
  const admins = async (c: pg.PoolClient) =>
    (await c.query<UserRecord>("SELECT * FROM gw_users WHERE role = 'admin'")).rows.map((r) => ({ ...r }));

  const store: GatewayUserStore = {
    file: 'postgres',
    generation: () => fresh().gen,
    setupInfo: () => (fresh().setup ? { ...cache.setup! } : undefined),
    list: () => [...fresh().users.values()].map(copyUser),
    get(username) {
      const u = fresh().users.get(username);
      return u && copyUser(u);
    },
    count: () => fresh().users.size,
    hasAdmin: () => [...fresh().users.values()].some((u) => u.role === 'admin'),
    byEmail(email) {
      const key = emailKey(email);
      const u = key ? [...fresh().users.values()].find((x) => emailKey(x.email) === key) : undefined;
      return u && copyUser(u);
    },
    accounts: {
      keyOf(username) {
        const u = cache.users.get(username);
        return u ? keyOfRecord(u) : username;
      },
      nameOf(key) {
        if (key.length > USERNAME_MAX) return cache.byAccount.get(key)?.username;
        const u = cache.users.get(key);
        if (u) return u.legacy ? u.username : undefined;
        return RESERVED_USERNAMES.has(key) ? key : undefined;
      },
    },
    onCreated: (l) => void createdListeners.push(l),
    onRemoved: (l) => void removedListeners.push(l),
    async create(u) {
      const email = emailKey(u.email);
      const t = now();
      const rec = newUserRecord(u, email, t, voidBefore());
      await withTx(pool, async (c) => {
        await lock(c);
        if (await rowOf(c, u.username)) throw new AppError(409, 'USER_EXISTS', `User ${u.username} already exists`);
        if (email) {
          const holder = (await c.query<{ username: string }>('SELECT username FROM gw_users WHERE email = $1', [email])).rows[0];
          if (holder) throw new AppError(409, 'EMAIL_EXISTS', `Another account (${holder.username}) already has that email`);
        }
        await c.query(
          `INSERT INTO gw_users (id, username, email, role, password_hash, disabled, permissions, created_at, tokens_valid_after)
           VALUES ($1, $2, $3, $4, $5, false, $6, $7, $8)`,
          [
            rec.id,
            rec.username,
            email,
            rec.role,
            rec.password_hash,
            JSON.stringify(rec.permissions),
            rec.created_at,
            rec.tokens_valid_after,
          ],
        );
        if (rec.role === 'admin') {
          const setup = { completed_at: rec.created_at, first_admin: rec.username };
          const r = await c.query("INSERT INTO gw_meta (key, value) VALUES ('setup', $1) ON CONFLICT DO NOTHING", [JSON.stringify(setup)]);
          if (r.rowCount) {
            await notify(c, 'meta', 'setup');
            cache.setup = setup;
          }
        }
        await notify(c, 'user', rec.username);
      }).catch(rethrow);
      cache.putUser(copyUser(rec), rec.username);
      for (const l of createdListeners) l(copyUser(rec));
      return copyUser(rec);
    },
    async update(username, patch) {
      const cur = await withTx(pool, async (c) => {
        await lock(c);
        const row = await rowOf(c, username);
        if (!row) throw errors.notFound(`No user ${username}`);
        const was = row;
        const next: UserRecord = { ...was, ...patch, id: was.id, username: was.username, created_at: was.created_at };
        if (was.legacy) next.legacy = true;
        if (patch.email !== undefined) next.email = emailKey(patch.email);
        const others = (await admins(c)).filter((a) => a.username !== username);
        if (enabledAdmins([...others, was]) > 0 && enabledAdmins([...others, next]) === 0)
          throw new AppError(409, 'LAST_ADMIN', 'That would leave no enabled administrator');
        const passwordChanged = patch.password_hash !== undefined && patch.password_hash !== was.password_hash;
        const disabledNow = next.disabled && !was.disabled;
        const voids = (passwordChanged || disabledNow) && patch.tokens_valid_after === undefined;
        if (voids) next.tokens_valid_after = Math.max(voidBefore(), was.tokens_valid_after);
        await c.query(
          `UPDATE gw_users SET email = $2, role = $3, password_hash = $4, disabled = $5, permissions = $6, tokens_valid_after = $7
           WHERE username = $1`,
          [
            username,
            next.email ?? null,
            next.role,
            next.password_hash,
            next.disabled,
            JSON.stringify(next.permissions),
            next.tokens_valid_after,
          ],
        );
        if (voids) await c.query('DELETE FROM gw_tokens WHERE username = $1', [username]);
        await notify(c, 'user', username);
        return { was, next, voids, disabledNow };
      }).catch(rethrow);
      cache.putUser(copyUser(cur.next), username);
      if (cur.voids) {
        cache.dropTokensOf(username);
        announce(cur.next, cur.disabledNow ? 'disabled' : 'password');
      }
      return copyUser(cur.next);
    },
    async remove(username) {
      const target = await withTx(pool, async (c) => {
        await lock(c);
        const row = await rowOf(c, username);
        if (!row) throw errors.notFound(`No user ${username}`);
        const all = await admins(c);
        if (enabledAdmins(all) > 0 && enabledAdmins(all.filter((a) => a.username !== username)) === 0)
          throw new AppError(409, 'LAST_ADMIN', 'That would leave no enabled administrator');
        await c.query('DELETE FROM gw_users WHERE username = $1', [username]);
        await notify(c, 'user', username);
        return row;
      }).catch(rethrow);
      cache.putUser(undefined, username);
      removed(target);
    },
    ...pgCredentialParts({ pool, cache, fresh, now, bus, notify, exists: (u) => cache.users.has(u) }),
    async flush() {
      await applying;
    },
  };
  return store;
}

/** Maps what the database refused onto the store's own codes. */
function rethrow(e: unknown): never {
  if (emailTaken(e)) throw new AppError(409, 'EMAIL_EXISTS', 'Another account already has that email');
  if ((e as { code?: string }).code === '23505') throw new AppError(409, 'USER_EXISTS', 'That user already exists');
  throw e;
}

/** Whether the users tables hold anything (migrate-store refuses a non-empty target). */
export async function pgHasRecords(pool: pg.Pool): Promise<boolean> {
  const r = await q<{ n: string }>(
    pool,
    "SELECT (SELECT count(*) FROM gw_users) + (SELECT count(*) FROM gw_revoked) + (SELECT count(*) FROM gw_docs WHERE coll = 'ledger') AS n",
  );
  return Number(r.rows[0].n) > 0;
}
