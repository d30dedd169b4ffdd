import fs from 'node:fs';
import path from 'node:path';
import { Low, type Adapter } from 'lowdb';
import { z } from 'zod';
import { AppError, errors } from '../errors';
import type { Logger } from '../log';
import { sweepStaleTemps, withFileLock, writeFileAtomic } from './atomicFile';
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
/** One mutation of the users file, re-playable on a newer version of it (see createUserStore). */
type Edit = (d: UsersFile) => void;
const enabledAdmins = (users: UserRecord[]) => users.filter((u) => u.role === 'admin' && !u.disabled).length;

/** How often a personal token's last_used_at is written at most (it would otherwise write the file per request). */
const TOUCH_INTERVAL_MS = 60_000;

/** The user store extended with what the gateway's auth parts need beyond types.ts. */
export interface GatewayUserStore extends UserStore {
  /** the file it persists to */
  readonly file: string;
  /** first administrator bookkeeping, if setup has completed */
  setupInfo(): UsersFile['setup'] | undefined;
  /**
   * A number that changes whenever anything in the store changes (here or, once seen, in another process): a
   * verified credential cached under one generation must be checked again under the next.
   */
  generation(): number;
}

/**
 * Opens (or creates) users_db.json over lowdb. Memory is authoritative inside this process; every mutation is
 * applied synchronously (so checks such as USER_EXISTS and LAST_ADMIN cannot interleave) and then persisted by a
 * single writer that coalesces whatever changed while the previous write was in flight. Writes by another
 * process (the users CLI) are picked up before the next read when nothing of ours is pending, and otherwise by the
 * next write, which starts from that version and re-applies our own edits instead of overwriting it.
 */
export async function createUserStore(opts: { file: string; logger?: Logger; now?: () => number }): Promise<GatewayUserStore> {
  const { file, logger } = opts;
  const now = opts.now ?? Date.now;
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  sweepStaleTemps(file);
  const db = new Low<UsersFile>(new AtomicJsonFile(file, (t) => parseUsersFile(file, t)), emptyUsersFile());
  // Taken before reading: a write by another process in between must look like a change still to pick up.
  const readSig = signature(file);
  await db.read();
  try {
    // A file created by hand or an older tool may be readable by others; it holds hashes.
    if ((fs.statSync(file).mode & 0o077) !== 0) fs.chmodSync(file, 0o600);
  } catch {
    // not created yet: the first write creates it 0600
  }

  let known = readSig;
  let revoked = new Map<string, number>();
  let bySha = new Map<string, ApiTokenRecord>();
  const reindex = () => {
    revoked = new Map(db.data.revoked.map((r) => [r.jti, r.exp]));
    bySha = new Map(db.data.tokens.map((t) => [t.sha256, t]));
  };
  reindex();

  // Every mutation is an edit applied to memory now and kept until it is written: another process may write the
  // file meanwhile (the users CLI next to a busy gateway), and our write must then add to its version, not undo it.
  let edits: Edit[] = [];
  let gen = 0;
  const change = (edit: Edit) => {
    gen++;
    edit(db.data);
    edits.push(edit);
  };

  // --- the single writer -------------------------------------------------------------------------------
  let queued: Promise<void> | null = null;
  let tail: Promise<void> = Promise.resolve();
  let unsaved = 0;
  function persist(): Promise<void> {
    if (queued) return queued;
    unsaved++;
    const p = tail.then(async () => {
      queued = null; // from here on, new mutations need a write of their own
      let mine: Edit[] = [];
      try {
        await withFileLock(file, async () => {
          // Nothing awaits from here to db.write()'s serialisation: exactly these edits go into this write.
          mine = edits;
          edits = [];
          const sig = signature(file);
          if (sig !== known && sig !== null) reload(sig, mine);
          await db.write();
          known = signature(file);
        });
      } catch (e) {
        edits = [...mine, ...edits];
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

  // One look at the file per event-loop turn: every request handled in the same turn sees the same version, and a
  // write by another process is still seen by the first request of the next turn (no time-based staleness).
  let lookedThisTurn = false;
  const nextTurn = () => {
    lookedThisTurn = false;
  };
  /** Picks up another process's write, unless we have changes of our own not yet on disk. */
  function refresh(force = false): void {
    if (unsaved > 0 || (lookedThisTurn && !force)) return;
    lookedThisTurn = true;
    setImmediate(nextTurn);
    const sig = signature(file);
    if (sig === known) return;
    known = sig;
    if (sig !== null) reload(sig, []);
  }

  /** Adopts the version on disk (signature `sig`) with our unwritten edits `mine` re-applied on top. */
  function reload(sig: string, mine: Edit[]): void {
    const before = db.data.users;
    try {
      const data = parseUsersFile(file, fs.readFileSync(file, 'utf8'));
      for (const edit of mine) edit(data);
      db.data = data;
      gen++;
      known = sig;
      reindex();
      logger?.info({ file, reapplied: mine.length }, 'users file changed on disk; reloaded');
    } catch (e) {
      logger?.error({ err: e, file }, 'users file changed on disk but cannot be read; keeping the version in memory');
      return;
    }
    // Accounts another process removed (or removed and made again: another person) get the same clean-up as a
    // removal here — their HuggingFace token and Access binding must not pass to a later user of the name.
    for (const old of before) {
      const current = find(old.username);
      if (current && current.created_at === old.created_at) continue;
      for (const l of removedListeners) {
        try {
          l(old.username);
        } catch (err) {
          logger?.warn({ err, user: old.username }, 'clean-up after an external removal failed');
        }
      }
    }
  }

  const find = (username: string) => db.data.users.find((u) => u.username === username);
  // Void every credential issued up to now; `+ 1` so that one issued later in this same millisecond is still
  // valid (issuers use max(now, tokens_valid_after), see auth/jwt.ts) while one issued earlier is not.
  const voidBefore = () => now() + 1;
  /** the same account, not a later one of the same name */
  const same = (a: UserRecord, b: UserRecord) => a.username === b.username && a.created_at === b.created_at;

  const createdListeners: ((u: UserRecord) => void)[] = [];
  const removedListeners: ((username: string) => void)[] = [];
  const store: GatewayUserStore = {
    file,
    generation() {
      refresh();
      return gen;
    },
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
      refresh(true);
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
      change((d) => {
        if (rec.role === 'admin' && !d.users.some((x) => x.role === 'admin')) d.setup ??= { completed_at: rec.created_at, first_admin: rec.username };
        d.users = d.users.filter((x) => x.username !== rec.username);
        d.users.push(copyUser(rec));
      });
      await persist();
      for (const l of createdListeners) l(copyUser(rec));
      return copyUser(rec);
    },
    async update(username, patch) {
      refresh(true);
      const cur = find(username);
      if (!cur) throw errors.notFound(`No user ${username}`);
      const next: UserRecord = { ...cur, ...patch, username: cur.username, created_at: cur.created_at };
      if (patch.permissions) next.permissions = [...patch.permissions];
      const others = db.data.users.filter((u) => u !== cur);
      if (enabledAdmins([...others, cur]) > 0 && enabledAdmins([...others, next]) === 0)
        throw new AppError(409, 'LAST_ADMIN', 'That would leave no enabled administrator');
      const passwordChanged = patch.password_hash !== undefined && patch.password_hash !== cur.password_hash;
      const disabledNow = next.disabled && !cur.disabled;
      const changed: Partial<UserRecord> = { ...patch, ...(patch.permissions && { permissions: [...patch.permissions] }) };
      delete changed.username;
      delete changed.created_at;
      const voids = (passwordChanged || disabledNow) && patch.tokens_valid_after === undefined;
      if (voids) changed.tokens_valid_after = Math.max(voidBefore(), cur.tokens_valid_after);
      const target = copyUser(cur);
      change((d) => {
        const u = d.users.find((x) => same(x, target));
        if (!u) return; // removed meanwhile by another process: the removal stands
        Object.assign(u, changed, changed.permissions && { permissions: [...changed.permissions] });
        if (voids) d.tokens = d.tokens.filter((t) => t.username !== username);
      });
      reindex();
      await persist();
      return copyUser(find(username) ?? cur);
    },
    async remove(username) {
      refresh(true);
      const cur = find(username);
      if (!cur) throw errors.notFound(`No user ${username}`);
      const rest = db.data.users.filter((u) => u !== cur);
      if (enabledAdmins(db.data.users) > 0 && enabledAdmins(rest) === 0)
        throw new AppError(409, 'LAST_ADMIN', 'That would leave no enabled administrator');
      const target = copyUser(cur);
      change((d) => {
        d.users = d.users.filter((u) => !same(u, target));
        d.tokens = d.tokens.filter((t) => t.username !== username);
      });
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
        refresh(true);
        if (!find(t.username)) throw errors.notFound(`No user ${t.username}`);
        change((d) => {
          if (d.users.some((u) => u.username === t.username) && !d.tokens.some((x) => x.id === t.id)) d.tokens.push({ ...t });
        });
        reindex();
        await persist();
      },
      async remove(username, id) {
        refresh(true);
        if (!db.data.tokens.some((t) => t.id === id && t.username === username)) return false;
        change((d) => {
          d.tokens = d.tokens.filter((t) => !(t.id === id && t.username === username));
        });
        reindex();
        await persist();
        return true;
      },
      touch(id) {
        const t = db.data.tokens.find((x) => x.id === id);
        if (!t) return;
        const at = now();
        if (t.last_used_at && at - Date.parse(t.last_used_at) < TOUCH_INTERVAL_MS) return;
        const when = new Date(at).toISOString();
        change((d) => {
          const x = d.tokens.find((y) => y.id === id);
          if (x) x.last_used_at = when;
        });
        persist().catch(() => undefined); // logged by persist; a lost timestamp is harmless
      },
    },
    revocations: {
      async revoke(jti, exp) {
        refresh(true);
        const t = Math.floor(now() / 1000);
        change((d) => {
          d.revoked = d.revoked.filter((r) => r.exp > t);
          if (!d.revoked.some((r) => r.jti === jti)) d.revoked.push({ jti, exp });
        });
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
