import fs from 'node:fs';
import path from 'node:path';
import { Low, type Adapter } from 'lowdb';
import { z } from 'zod';
import { AppError, errors } from '../errors';
import type { Logger } from '../log';
import { sweepStaleTemps, writeFileAtomic } from './atomicFile';
import type { ApiTokenRecord, UserRecord, UserStore } from './types';

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
  username: z.string(),
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
  return r.data as UsersFile;
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
function signature(file: string): string | null {
  try {
    const s = fs.statSync(file);
    return `${s.ino}:${s.size}:${s.mtimeMs}`;
  } catch {
    return null;
  }
}

const copyUser = (u: UserRecord): UserRecord => ({ ...u, permissions: [...u.permissions] });
const enabledAdmins = (users: UserRecord[]) => users.filter((u) => u.role === 'admin' && !u.disabled).length;

/** How often a personal token's last_used_at is written at most (it would otherwise write the file per request). */
const TOUCH_INTERVAL_MS = 60_000;

/** The user store extended with what the gateway's auth parts need beyond types.ts. */
export interface GatewayUserStore extends UserStore {
  /** the file it persists to */
  readonly file: string;
  /** first administrator bookkeeping, if setup has completed */
  setupInfo(): UsersFile['setup'] | undefined;
}

/**
 * Opens (or creates) users_db.json over lowdb. Memory is authoritative inside this process; every mutation is
 * applied synchronously (so checks such as USER_EXISTS and LAST_ADMIN cannot interleave) and then persisted by a
 * single writer that coalesces whatever changed while the previous write was in flight. Writes by another
 * process (the users CLI) are picked up before the next read when nothing of ours is pending.
 */
export async function createUserStore(opts: { file: string; logger?: Logger; now?: () => number }): Promise<GatewayUserStore> {
  const { file, logger } = opts;
  const now = opts.now ?? Date.now;
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  sweepStaleTemps(file);
  const db = new Low<UsersFile>(new AtomicJsonFile(file, (t) => parseUsersFile(file, t)), emptyUsersFile());
  await db.read();
  try {
    // A file created by hand or an older tool may be readable by others; it holds hashes.
    if ((fs.statSync(file).mode & 0o077) !== 0) fs.chmodSync(file, 0o600);
  } catch {
    // not created yet: the first write creates it 0600
  }

  let known = signature(file);
  let revoked = new Map<string, number>();
  let bySha = new Map<string, ApiTokenRecord>();
  const reindex = () => {
    revoked = new Map(db.data.revoked.map((r) => [r.jti, r.exp]));
    bySha = new Map(db.data.tokens.map((t) => [t.sha256, t]));
  };
  reindex();

  // --- the single writer -------------------------------------------------------------------------------
  let queued: Promise<void> | null = null;
  let tail: Promise<void> = Promise.resolve();
  let unsaved = 0;
  function persist(): Promise<void> {
    if (queued) return queued;
    unsaved++;
    const p = tail.then(async () => {
      queued = null; // from here on, new mutations need a write of their own
      try {
        await db.write();
        known = signature(file);
      } catch (e) {
        logger?.error({ err: e, file }, 'users file write failed');
        throw new AppError(500, 'STORE_WRITE_FAILED', 'Could not save the user database');
      } finally {
        unsaved--;
      }
    });
    queued = p;
    tail = p.catch(() => undefined);
    return p;
  }

  /** Picks up another process's write, unless we have changes of our own not yet on disk. */
  function refresh(): void {
    if (unsaved > 0) return;
    const sig = signature(file);
    if (sig === known) return;
    known = sig;
    if (sig === null) return;
    try {
      db.data = parseUsersFile(file, fs.readFileSync(file, 'utf8'));
      reindex();
      logger?.info({ file }, 'users file changed on disk; reloaded');
    } catch (e) {
      logger?.error({ err: e, file }, 'users file changed on disk but cannot be read; keeping the version in memory');
    }
  }

  const find = (username: string) => db.data.users.find((u) => u.username === username);
  const pruneRevoked = () => {
    const t = Math.floor(now() / 1000);
    db.data.revoked = db.data.revoked.filter((r) => r.exp > t);
  };
  // Void every credential issued up to now; `+ 1` so that one issued later in this same millisecond is still
  // valid (issuers use max(now, tokens_valid_after), see auth/jwt.ts) while one issued earlier is not.
  const voidBefore = () => now() + 1;
  const dropTokensOf = (username: string) => {
    db.data.tokens = db.data.tokens.filter((t) => t.username !== username);
  };

  const createdListeners: ((u: UserRecord) => void)[] = [];
  const removedListeners: ((username: string) => void)[] = [];
  const store: GatewayUserStore = {
    file,
    setupInfo() {
      refresh();
      return db.data.setup ? { ...db.data.setup } : undefined;
    },
    list() {
      refresh();
      return db.data.users.map(copyUser);
    },
    get(username) {
      refresh();
      const u = find(username);
      return u && copyUser(u);
    },
    count() {
      refresh();
      return db.data.users.length;
    },
    hasAdmin() {
      refresh();
      return db.data.users.some((u) => u.role === 'admin');
    },
    onCreated(listener) {
      createdListeners.push(listener);
    },
    onRemoved(listener) {
      removedListeners.push(listener);
    },
    async create(u) {
      refresh();
      if (find(u.username)) throw new AppError(409, 'USER_EXISTS', `User ${u.username} already exists`);
      const t = now();
      const rec: UserRecord = {
        username: u.username,
        role: u.role,
        password_hash: u.password_hash,
        disabled: false,
        permissions: [...(u.permissions ?? [])],
        created_at: new Date(t).toISOString(),
        // tokens minted for an earlier user of the same name must not come back to life
        tokens_valid_after: voidBefore(),
      };
      if (rec.role === 'admin' && !db.data.users.some((x) => x.role === 'admin'))
        db.data.setup ??= { completed_at: rec.created_at, first_admin: rec.username };
      db.data.users.push(rec);
      await persist();
      for (const l of createdListeners) l(copyUser(rec));
      return copyUser(rec);
    },
    async update(username, patch) {
      refresh();
      const cur = find(username);
      if (!cur) throw errors.notFound(`No user ${username}`);
      const next: UserRecord = { ...cur, ...patch, username: cur.username, created_at: cur.created_at };
      if (patch.permissions) next.permissions = [...patch.permissions];
      const others = db.data.users.filter((u) => u !== cur);
      if (enabledAdmins([...others, cur]) > 0 && enabledAdmins([...others, next]) === 0)
        throw new AppError(409, 'LAST_ADMIN', 'That would leave no enabled administrator');
      const passwordChanged = patch.password_hash !== undefined && patch.password_hash !== cur.password_hash;
      const disabledNow = next.disabled && !cur.disabled;
      if ((passwordChanged || disabledNow) && patch.tokens_valid_after === undefined) {
        next.tokens_valid_after = Math.max(voidBefore(), cur.tokens_valid_after);
        dropTokensOf(username);
      }
      Object.assign(cur, next);
      reindex();
      await persist();
      return copyUser(cur);
    },
    async remove(username) {
      refresh();
      const cur = find(username);
      if (!cur) throw errors.notFound(`No user ${username}`);
      const rest = db.data.users.filter((u) => u !== cur);
      if (enabledAdmins(db.data.users) > 0 && enabledAdmins(rest) === 0)
        throw new AppError(409, 'LAST_ADMIN', 'That would leave no enabled administrator');
      db.data.users = rest;
      dropTokensOf(username);
      reindex();
      await persist();
      for (const l of removedListeners) l(username);
    },
    tokens: {
      list(username) {
        refresh();
        return db.data.tokens.filter((t) => t.username === username).map((t) => ({ ...t }));
      },
      findBySha256(sha256) {
        refresh();
        const t = bySha.get(sha256);
        return t && { ...t };
      },
      async add(t) {
        refresh();
        if (!find(t.username)) throw errors.notFound(`No user ${t.username}`);
        db.data.tokens.push({ ...t });
        reindex();
        await persist();
      },
      async remove(username, id) {
        refresh();
        const i = db.data.tokens.findIndex((t) => t.id === id && t.username === username);
        if (i < 0) return false;
        db.data.tokens.splice(i, 1);
        reindex();
        await persist();
        return true;
      },
      touch(id) {
        const t = db.data.tokens.find((x) => x.id === id);
        if (!t) return;
        const at = now();
        if (t.last_used_at && at - Date.parse(t.last_used_at) < TOUCH_INTERVAL_MS) return;
        t.last_used_at = new Date(at).toISOString();
        persist().catch(() => undefined); // logged by persist; a lost timestamp is harmless
      },
    },
    revocations: {
      async revoke(jti, exp) {
        refresh();
        pruneRevoked();
        if (!db.data.revoked.some((r) => r.jti === jti)) db.data.revoked.push({ jti, exp });
        reindex();
        await persist();
      },
      isRevoked(jti) {
        refresh();
        return revoked.has(jti);
      },
    },
    async flush() {
      while (queued || unsaved > 0) await tail;
    },
  };
  return store;
}
