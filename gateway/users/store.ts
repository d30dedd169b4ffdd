import fs from 'node:fs';
import path from 'node:path';
import { Low } from 'lowdb';
import type { Revocations } from '../auth/revocations';
import { AppError, errors } from '../errors';
import type { Logger } from '../log';
import { sweepStaleTemps, withFileLock } from './atomicFile';
import { emailKey, newUserRecord, RESERVED_USERNAMES } from './rules';
import type { ApiTokenRecord, UserRecord, UserStore } from './types';
import { credentialParts } from './storeCredentials';
import { AtomicJsonFile, emptyUsersFile, parseUsersFile, signature, type UsersFile } from './usersFile';

export { AtomicJsonFile, emptyUsersFile, parseUsersFile, USERS_FILE_VERSION, UserStoreError, type UsersFile } from './usersFile';

const copyUser = (u: UserRecord): UserRecord => ({ ...u, permissions: [...u.permissions] });
/** One mutation of the users file, re-playable on a newer version of it (see createUserStore). */
type Edit = (d: UsersFile) => void;
const enabledAdmins = (users: UserRecord[]) => users.filter((u) => u.role === 'admin' && !u.disabled).length;

/** Longest username (rules.ts): account ids are longer, so a key tells which kind it is. */
const USERNAME_MAX = 32;

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
export async function createUserStore(opts: {
  file: string;
  logger?: Logger;
  now?: () => number;
  revocations?: Revocations;
}): Promise<GatewayUserStore> {
  const { file, logger, revocations: bus } = opts;
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
  let byAccount = new Map<string, UserRecord>();
  const reindex = () => {
    byAccount = new Map(db.data.users.map((u) => [u.id, u]));
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
    // removal here; a password changed or an account disabled there voids credentials here too.
    for (const old of before) {
      const current = find(old.username);
      if (current && current.id === old.id) {
        if (current.disabled && !old.disabled) announce(current, 'disabled');
        else if (current.tokens_valid_after > old.tokens_valid_after) announce(current, 'password');
        continue;
      }
      announce(old, 'deleted');
      for (const l of removedListeners) {
        try {
          l(old.username, old.id, keyOfRecord(old));
        } catch (err) {
          logger?.warn({ err, user: old.username }, 'clean-up after an external removal failed');
        }
      }
    }
  }

  const find = (username: string) => db.data.users.find((u) => u.username === username);
  const findEmail = (email: string) => db.data.users.find((u) => emailKey(u.email) === email);
  /** 409 when another account already holds `email` */
  const emailFree = (email: string | null, self?: UserRecord) => {
    const holder = email === null ? undefined : findEmail(email);
    if (holder && holder !== self) throw new AppError(409, 'EMAIL_EXISTS', `Another account (${holder.username}) already has that email`);
  };
  const announce = (u: UserRecord, reason: 'password' | 'disabled' | 'deleted') =>
    bus?.emit({ kind: 'user', username: u.username, accountId: u.id, reason });
  // Void every credential issued up to now; `+ 1` so that one issued later in this same millisecond is still
  // valid (issuers use max(now, tokens_valid_after), see auth/jwt.ts) while one issued earlier is not.
  const voidBefore = () => now() + 1;
  const same = (a: UserRecord, b: UserRecord) => a.id === b.id; // the same account, not a later one of the name

  const createdListeners: ((u: UserRecord) => void)[] = [];
  const removedListeners: ((username: string, accountId: string, key: string) => void)[] = [];
  /** the key an account's records are kept under (see AccountKeys) */
  const keyOfRecord = (u: UserRecord) => (u.legacy ? u.username : u.id);
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
    byEmail(email) {
      refresh();
      const key = emailKey(email);
      const u = key ? findEmail(key) : undefined;
      return u && copyUser(u);
    },
    // No refresh here: these run per history entry; the request's principal was resolved (and the file re-read) first.
    accounts: {
      keyOf(username) {
        const u = find(username);
        return u ? keyOfRecord(u) : username;
      },
      nameOf(key) {
        if (key.length > USERNAME_MAX) return byAccount.get(key)?.username;
        const u = find(key);
        // A name-keyed record is a legacy account's, or a non-account's (`api-key`); never a later account's.
        if (u) return u.legacy ? u.username : undefined;
        return RESERVED_USERNAMES.has(key) ? key : undefined;
      },
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
      const email = emailKey(u.email);
      emailFree(email);
      const t = now();
      const rec = newUserRecord(u, email, t, voidBefore());
      change((d) => {
        if (rec.role === 'admin' && !d.users.some((x) => x.role === 'admin'))
          d.setup ??= { completed_at: rec.created_at, first_admin: rec.username };
        d.users = d.users.filter((x) => x.username !== rec.username);
        d.users.push(copyUser(rec));
      });
      reindex();
      await persist();
      for (const l of createdListeners) l(copyUser(rec));
      return copyUser(rec);
    },
    async update(username, patch) {
      refresh(true);
      const cur = find(username);
      if (!cur) throw errors.notFound(`No user ${username}`);
      const next: UserRecord = { ...cur, ...patch, id: cur.id, username: cur.username, created_at: cur.created_at };
      if (patch.email !== undefined) emailFree((next.email = emailKey(patch.email)), cur);
      if (patch.permissions) next.permissions = [...patch.permissions];
      const others = db.data.users.filter((u) => u !== cur);
      if (enabledAdmins([...others, cur]) > 0 && enabledAdmins([...others, next]) === 0)
        throw new AppError(409, 'LAST_ADMIN', 'That would leave no enabled administrator');
      const passwordChanged = patch.password_hash !== undefined && patch.password_hash !== cur.password_hash;
      const disabledNow = next.disabled && !cur.disabled;
      const changed: Partial<UserRecord> = { ...patch, ...(patch.permissions && { permissions: [...patch.permissions] }) };
      if (patch.email !== undefined) changed.email = next.email;
      delete changed.id;
      delete changed.username;
      delete changed.created_at;
      delete changed.legacy;
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
      if (voids) announce(cur, disabledNow ? 'disabled' : 'password');
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
      announce(target, 'deleted');
      for (const l of removedListeners) l(username, target.id, keyOfRecord(target));
    },
    ...credentialParts({
      data: () => db.data,
      change,
      refresh,
      reindex,
      persist,
      exists: (u) => !!find(u),
      bySha: () => bySha,
      revoked: () => revoked,
      now,
      bus,
    }),
    async flush() {
      while (queued || unsaved > 0) await tail;
    },
  };
  return store;
}
