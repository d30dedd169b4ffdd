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
  /** name ↔ stable account id */
  accounts: AccountIds;
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
  onRemoved(listener: (username: string, accountId: string) => void): void;
  /** waits for pending writes */
  flush(): Promise<void>;
}

/** Maps usernames to stable account ids and back: what ownership records are keyed by. */
export interface AccountIds {
  /** the id of the account now holding `username` */
  idOf(username: string): string | undefined;
  /** the current name of account `id`; undefined once it is deleted */
  nameOf(id: string): string | undefined;
  /**
   * For records written before account ids existed (keyed by name): the id of the account they belong to — the
   * account of that name only if it too predates ids; a later account of the name is someone else.
   */
  legacyIdOf(username: string): string | undefined;
}
