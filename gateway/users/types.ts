import type { Role } from '../auth/principal';

/** A gateway user as persisted in users_db.json. */
export interface UserRecord {
  /** stable account id: everything the account owns (prompts, files, ComfyUI user, HF token) hangs on it, not the name */
  id: string;
  username: string;
  /** the email an admin set (lower-cased, unique): what a Cloudflare Access identity binds to */
  email?: string | null;
  /** the account predates account ids: records kept under its name were its own and map over to its id */
  legacy?: boolean;
  role: Role;
  /** bcrypt hash; '!' for accounts that cannot sign in with a password (e.g. Cloudflare-provisioned) */
  password_hash: string;
  disabled: boolean;
  /** grants such as `download_models` */
  permissions: string[];
  created_at: string;
  /**
   * tokens (JWT and personal) issued before this time are void: creation, password change, disable.
   * Milliseconds since the epoch (a JWT's `iat` has only seconds; see auth/jwt.ts for the ms issue time).
   */
  tokens_valid_after: number;
}

/** A personal API token; the secret itself is never stored, only its SHA-256. */
export interface ApiTokenRecord {
  id: string;
  username: string;
  name: string;
  /** first characters of the secret, shown in lists so users can tell tokens apart */
  prefix: string;
  sha256: string;
  created_at: string;
  /** ISO time or null for no expiry */
  expires_at: string | null;
  last_used_at: string | null;
}

/** The user store every part of the gateway talks to (implemented over lowdb in store.ts). */
export interface UserStore {
  list(): UserRecord[];
  get(username: string): UserRecord | undefined;
  count(): number;
  hasAdmin(): boolean;
  /** throws AppError 409 USER_EXISTS */
  create(u: { username: string; password_hash: string; role: Role; permissions?: string[]; email?: string | null }): Promise<UserRecord>;
  /** throws AppError 404 NOT_FOUND; 409 LAST_ADMIN when it would leave no enabled admin; 409 EMAIL_EXISTS */
  update(username: string, patch: Partial<Omit<UserRecord, 'id' | 'username' | 'created_at' | 'legacy'>>): Promise<UserRecord>;
  /** the account holding exactly this email (compared lower-cased) */
  byEmail(email: string): UserRecord | undefined;
  /** usernames ↔ the keys ownership records are kept under */
  accounts: AccountKeys;
  /** throws AppError 404 NOT_FOUND; 409 LAST_ADMIN */
  remove(username: string): Promise<void>;
  tokens: {
    list(username: string): ApiTokenRecord[];
    findBySha256(sha256: string): ApiTokenRecord | undefined;
    add(t: ApiTokenRecord): Promise<void>;
    remove(username: string, id: string): Promise<boolean>;
    touch(id: string): void;
  };
  revocations: {
    revoke(jti: string, exp: number): Promise<void>;
    isRevoked(jti: string): boolean;
  };
  /** subscribes to user creation (e.g. to create the matching ComfyUI user at once) */
  onCreated(listener: (u: UserRecord) => void): void;
  /** subscribes to user deletion (e.g. to drop credentials held for them elsewhere) */
  onRemoved(listener: (username: string, accountId: string, key: string) => void): void;
  /** waits for pending writes */
  flush(): Promise<void>;
}

/**
 * The keys ownership records (prompt ledger, ComfyUI user id, HF token, client ids) are kept under: the stable
 * account id — except for accounts from before account ids, whose records were kept under their name and stay so
 * (their name cannot pass to anyone while they exist, and a later account of the name gets an id-keyed start).
 * Ids are longer than any username can be, so the two kinds of key never meet.
 */
export interface AccountKeys {
  /** the key of `username`'s current account; names of non-accounts (the static key's `api-key`) are their own key */
  keyOf(username: string): string;
  /** who owns records kept under `key` now: a username, or undefined when that account is gone */
  nameOf(key: string): string | undefined;
}

/** Keys for a gateway without accounts (unit tests): every name is its own key. */
export const NAME_KEYS: AccountKeys = { keyOf: (u) => u, nameOf: (k) => k };
