import type pg from 'pg';
import type { Revocations } from '../auth/revocations';
import { errors } from '../errors';
import type { UserStore } from '../users/types';
import { q, withTx } from './pg';
import type { UserCache } from './pgUserCache';

/** How often a personal token's last_used_at is written at most (as in the file store). */
const TOUCH_INTERVAL_MS = 60_000;

/** The PostgreSQL store's personal tokens and logged-out session ids (the file store's storeCredentials.ts). */
export function pgCredentialParts(ctx: {
  pool: pg.Pool;
  cache: UserCache;
  fresh(): UserCache;
  now(): number;
  bus?: Revocations;
  notify(c: pg.PoolClient, k: 'token' | 'jti', id: string): Promise<unknown>;
  exists(username: string): boolean;
}): Pick<UserStore, 'tokens' | 'revocations'> {
  const { pool, cache } = ctx;
  return {
    tokens: {
      list(username) {
        return [...ctx.fresh().tokens.values()].filter((t) => t.username === username).map((t) => ({ ...t }));
      },
      findBySha256(sha256) {
        const t = ctx.fresh().bySha.get(sha256);
        return t && { ...t };
      },
      async add(t) {
        await withTx(pool, async (c) => {
          const r = await c.query(
            `INSERT INTO gw_tokens (id, username, name, prefix, sha256, created_at, expires_at, last_used_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM gw_users WHERE username = $2)
             ON CONFLICT (id) DO NOTHING`,
            [t.id, t.username, t.name, t.prefix, t.sha256, t.created_at, t.expires_at, t.last_used_at],
          );
          if (!r.rowCount && !(await c.query('SELECT 1 FROM gw_users WHERE username = $1', [t.username])).rowCount)
            throw errors.notFound(`No user ${t.username}`);
          await ctx.notify(c, 'token', t.id);
        });
        cache.putToken({ ...t });
      },
      async remove(username, id) {
        const gone = await withTx(pool, async (c) => {
          const r = await c.query('DELETE FROM gw_tokens WHERE id = $1 AND username = $2', [id, username]);
          if (r.rowCount) await ctx.notify(c, 'token', id);
          return (r.rowCount ?? 0) > 0;
        });
        if (!gone) return false;
        cache.dropToken(id);
        ctx.bus?.emit({ kind: 'token', tokenId: id });
        return true;
      },
      touch(id) {
        const t = cache.tokens.get(id);
        if (!t) return;
        const at = ctx.now();
        if (t.last_used_at && at - Date.parse(t.last_used_at) < TOUCH_INTERVAL_MS) return;
        t.last_used_at = new Date(at).toISOString();
        // A lost timestamp is harmless; no notification (other replicas' copies may lag by up to a minute).
        q(pool, 'UPDATE gw_tokens SET last_used_at = $2 WHERE id = $1', [id, t.last_used_at]).catch(() => undefined);
      },
    },
    revocations: {
      async revoke(jti, exp) {
        const t = Math.floor(ctx.now() / 1000);
        await withTx(pool, async (c) => {
          await c.query('DELETE FROM gw_revoked WHERE exp <= $1', [t]);
          await c.query('INSERT INTO gw_revoked (jti, exp) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING', [jti, exp]);
          await ctx.notify(c, 'jti', jti);
        });
        cache.prune(t);
        cache.revoked.set(jti, exp);
        cache.gen++;
        ctx.bus?.emit({ kind: 'jti', jti });
      },
      isRevoked(jti) {
        return ctx.fresh().revoked.has(jti);
      },
    },
  };
}
