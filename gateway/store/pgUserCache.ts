import type pg from 'pg';
import type { ApiTokenRecord, UserRecord } from '../users/types';
import { q } from './pg';

/** A gw_users row as read back. */
export type UserRow = Omit<UserRecord, 'tokens_valid_after' | 'legacy'> & { tokens_valid_after: string; legacy: boolean };

/** A row as the store's record (legacy only when set, numbers as numbers). */
export const toUser = (r: UserRow): UserRecord => ({
  id: r.id,
  username: r.username,
  email: r.email ?? null,
  ...(r.legacy ? { legacy: true } : {}),
  role: r.role,
  password_hash: r.password_hash,
  disabled: r.disabled,
  permissions: [...r.permissions],
  created_at: r.created_at,
  tokens_valid_after: Number(r.tokens_valid_after),
});

const USER_COLS = 'id, username, email, legacy, role, password_hash, disabled, permissions, created_at, tokens_valid_after';
const TOKEN_COLS = 'id, username, name, prefix, sha256, created_at, expires_at, last_used_at';

/**
 * This replica's copy of the user tables, the answer to every synchronous read (UserStore.get, token lookups,
 * revocation checks). Kept fresh by the change feed: a change committed anywhere reloads exactly its record.
 */
export class UserCache {
  users = new Map<string, UserRecord>();
  byAccount = new Map<string, UserRecord>();
  tokens = new Map<string, ApiTokenRecord>();
  bySha = new Map<string, ApiTokenRecord>();
  revoked = new Map<string, number>();
  setup: { completed_at: string; first_admin: string } | undefined;
  gen = 0;

  constructor(
    private readonly pool: pg.Pool,
    private readonly now: () => number = Date.now,
  ) {}

  /** Reads everything (start-up and every reconnection of the feed); returns the users as they were before. */
  async loadAll(): Promise<Map<string, UserRecord>> {
    const before = this.users;
    const [users, tokens, revoked, setup] = await Promise.all([
      q<UserRow>(this.pool, `SELECT ${USER_COLS} FROM gw_users ORDER BY seq`),
      q<ApiTokenRecord>(this.pool, `SELECT ${TOKEN_COLS} FROM gw_tokens`),
      q<{ jti: string; exp: string }>(this.pool, 'SELECT jti, exp FROM gw_revoked WHERE exp > $1', [Math.floor(this.now() / 1000)]),
      q<{ value: UserCache['setup'] }>(this.pool, "SELECT value FROM gw_meta WHERE key = 'setup'"),
    ]);
    this.users = new Map(users.rows.map((r) => [r.username, toUser(r)]));
    this.byAccount = new Map([...this.users.values()].map((u) => [u.id, u]));
    this.tokens = new Map(tokens.rows.map((t) => [t.id, { ...t }]));
    this.bySha = new Map(tokens.rows.map((t) => [t.sha256, this.tokens.get(t.id)!]));
    this.revoked = new Map(revoked.rows.map((r) => [r.jti, Number(r.exp)]));
    this.setup = setup.rows[0]?.value ?? undefined;
    this.gen++;
    return before;
  }

  /** Reloads one user and their tokens; returns the record as it was before (undefined when it was not known). */
  async loadUser(username: string): Promise<UserRecord | undefined> {
    const [u, t] = await Promise.all([
      q<UserRow>(this.pool, `SELECT ${USER_COLS} FROM gw_users WHERE username = $1`, [username]),
      q<ApiTokenRecord>(this.pool, `SELECT ${TOKEN_COLS} FROM gw_tokens WHERE username = $1`, [username]),
    ]);
    const before = this.users.get(username);
    this.putUser(u.rows[0] ? toUser(u.rows[0]) : undefined, username);
    this.dropTokensOf(username);
    for (const tok of t.rows) this.putToken({ ...tok });
    return before;
  }

  /** Reloads one token; returns whether it existed before and is gone now. */
  async loadToken(id: string): Promise<boolean> {
    const r = await q<ApiTokenRecord>(this.pool, `SELECT ${TOKEN_COLS} FROM gw_tokens WHERE id = $1`, [id]);
    const had = this.tokens.has(id);
    this.dropToken(id);
    if (r.rows[0]) this.putToken({ ...r.rows[0] });
    return had && !r.rows[0];
  }

  async loadRevocation(jti: string): Promise<void> {
    const r = await q<{ exp: string }>(this.pool, 'SELECT exp FROM gw_revoked WHERE jti = $1', [jti]);
    if (r.rows[0]) this.revoked.set(jti, Number(r.rows[0].exp));
    this.gen++;
  }

  async loadSetup(): Promise<void> {
    const r = await q<{ value: UserCache['setup'] }>(this.pool, "SELECT value FROM gw_meta WHERE key = 'setup'");
    this.setup = r.rows[0]?.value ?? undefined;
  }

  putUser(u: UserRecord | undefined, username: string): void {
    const old = this.users.get(username);
    if (old && this.byAccount.get(old.id) === old) this.byAccount.delete(old.id);
    if (u) {
      this.users.set(username, u);
      this.byAccount.set(u.id, u);
    } else {
      this.users.delete(username);
      this.dropTokensOf(username);
    }
    this.gen++;
  }

  putToken(t: ApiTokenRecord): void {
    this.tokens.set(t.id, t);
    this.bySha.set(t.sha256, t);
    this.gen++;
  }

  dropToken(id: string): void {
    const t = this.tokens.get(id);
    if (!t) return;
    this.tokens.delete(id);
    if (this.bySha.get(t.sha256) === t) this.bySha.delete(t.sha256);
    this.gen++;
  }

  dropTokensOf(username: string): void {
    for (const t of [...this.tokens.values()]) if (t.username === username) this.dropToken(t.id);
  }

  /** Forgets revocations past their token's expiry (the token is refused as expired anyway). */
  prune(nowSecs: number): void {
    for (const [jti, exp] of this.revoked) if (exp <= nowSecs) this.revoked.delete(jti);
  }
}
