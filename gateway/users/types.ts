import type { Role } from '../auth/principal';

/** A gateway user as persisted in users_db.json. */
export interface UserRecord {
  username: string;
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
  create(u: { username: string; password_hash: string; role: Role; permissions?: string[] }): Promise<UserRecord>;
  /** throws AppError 404 NOT_FOUND; 409 LAST_ADMIN when it would leave no enabled admin */
  update(username: string, patch: Partial<Omit<UserRecord, 'username' | 'created_at'>>): Promise<UserRecord>;
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
  onRemoved(listener: (username: string) => void): void;
  /** waits for pending writes */
  flush(): Promise<void>;
}
