/** users_db.json: its schema, parsing (with the account-id migration) and the atomic lowdb adapter. */
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { Adapter } from 'lowdb';
import { z } from 'zod';
import { writeFileAtomic } from './atomicFile';
import type { ApiTokenRecord, UserRecord } from './types';

/** The schema version this code reads and writes. */
export const USERS_FILE_VERSION = 1;

/** users_db.json as persisted. */
export interface UsersFile {
  version: 1;
  users: UserRecord[];
  tokens: ApiTokenRecord[];
  /** logged-out JWT ids, kept until their own expiry (unix seconds) */
  revoked: { jti: string; exp: number }[];
  /** when and how the first administrator was created */
  setup?: { completed_at: string; first_admin: string };
}

const userSchema = z.looseObject({
  id: z.string().min(1).optional(),
  username: z.string(),
  email: z.string().nullable().optional(),
  role: z.enum(['admin', 'user']),
  password_hash: z.string(),
  disabled: z.boolean(),
  permissions: z.array(z.string()),
  created_at: z.string(),
  tokens_valid_after: z.number(),
});
const tokenSchema = z.looseObject({
  id: z.string(),
  username: z.string(),
  name: z.string(),
  prefix: z.string(),
  sha256: z.string(),
  created_at: z.string(),
  expires_at: z.string().nullable(),
  last_used_at: z.string().nullable(),
});
const fileSchema = z.looseObject({
  version: z.literal(USERS_FILE_VERSION),
  users: z.array(userSchema),
  tokens: z.array(tokenSchema),
  revoked: z.array(z.looseObject({ jti: z.string(), exp: z.number() })),
  setup: z.looseObject({ completed_at: z.string(), first_admin: z.string() }).optional(),
});

/** The users file cannot be used (unparsable, wrong shape, newer version); the gateway refuses to start. */
export class UserStoreError extends Error {
  constructor(file: string, why: string) {
    super(`${file}: ${why}`);
    this.name = 'UserStoreError';
  }
}

/** An empty, current-version users file. */
export function emptyUsersFile(): UsersFile {
  return { version: USERS_FILE_VERSION, users: [], tokens: [], revoked: [] };
}

/** Parses and checks users_db.json text; whitespace-only counts as empty. Throws UserStoreError. */
export function parseUsersFile(file: string, text: string): UsersFile {
  if (!text.trim()) return emptyUsersFile();
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new UserStoreError(file, `not valid JSON (${(e as Error).message}); fix or move it away — it is never overwritten`);
  }
  const v = (raw as { version?: unknown } | null)?.version;
  if (typeof v === 'number' && v > USERS_FILE_VERSION)
    throw new UserStoreError(file, `schema version ${v} is newer than this gateway understands (${USERS_FILE_VERSION})`);
  const r = fileSchema.safeParse(raw);
  if (!r.success) {
    const first = r.error.issues[0];
    throw new UserStoreError(file, `not a comfyui-gateway users file (${first.path.join('.') || '(root)'}: ${first.message})`);
  }
  const data = r.data as UsersFile;
  for (const u of data.users) {
    if (u.id) continue;
    // An account from before account ids: derived, not random, so every reader (the gateway, the users CLI, a
    // restart before the next write) gives it the same id, and records kept under its name map onto it.
    u.id = legacyAccountId(u.username, u.created_at);
    u.legacy = true;
  }
  return data;
}

/** The id given to an account that predates account ids (stable: its name and creation time). */
export function legacyAccountId(username: string, createdAt: string): string {
  return `acct-${crypto.createHash('sha256').update(`${username}\u0000${createdAt}`).digest('hex').slice(0, 32)}`;
}

/** lowdb adapter writing through writeFileAtomic (temp + fsync + rename, mode 0600); reads refuse corrupt files. */
export class AtomicJsonFile<T> implements Adapter<T> {
  constructor(
    private readonly file: string,
    private readonly parse: (text: string) => T,
    private readonly mode = 0o600,
  ) {}

  async read(): Promise<T | null> {
    let text: string;
    try {
      text = await fs.promises.readFile(this.file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
    return this.parse(text);
  }

  write(data: T): Promise<void> {
    // Serialised now, synchronously: later mutations belong to the next write.
    const text = JSON.stringify(data, null, 2) + '\n';
    return writeFileAtomic(this.file, text, this.mode);
  }
}

/** What identifies one version of the file on disk, to notice another process's writes (the users CLI). */
export function signature(file: string): string | null {
  try {
    const s = fs.statSync(file);
    return `${s.ino}:${s.size}:${s.mtimeMs}`;
  } catch {
    return null;
  }
}
