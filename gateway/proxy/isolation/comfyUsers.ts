import fs from 'node:fs';
import type { Logger } from '../../log';
import type { DocCollection } from '../../store/docs';
import { writeFileAtomic } from '../../users/atomicFile';
import { NAME_KEYS, type AccountKeys } from '../../users/types';
import type { Upstream } from '../upstream';

/** Gateway account → ComfyUI user id (the value the gateway sends as `comfy-user`); asked for by username. */
export interface ComfyUsers {
  /** the id, creating the ComfyUI user (POST /users) on first use; throws when ComfyUI cannot be asked */
  resolve(username: string): Promise<string>;
  /** the id already known, without asking ComfyUI */
  cached(username: string): string | undefined;
  /** false once ComfyUI was seen running without --multi-user (it then ignores comfy-user) */
  readonly multiUser: boolean | null;
  flush(): Promise<void>;
}

/** ComfyUI's user when it runs without --multi-user. */
const SINGLE_USER = 'default';

/**
 * Keeps `<data_dir>/comfy_users.json` and creates ComfyUI users through the upstream's own API. One request per
 * user at a time (single-flight), and each stored id is checked against ComfyUI's list once per process, so a
 * reinstalled ComfyUI gets its users re-created instead of answering "Unknown user".
 */
export function createComfyUsers(deps: {
  file: string;
  upstream: Upstream;
  logger: Logger;
  keys?: AccountKeys;
  /** kept in PostgreSQL for several replicas (store/docs.ts) instead of `file` */
  shared?: { initial: Map<string, string>; docs: DocCollection<string> };
}): ComfyUsers {
  // Kept per account key (users/types.ts), so a later account of a deleted account's name gets a ComfyUI user of its own.
  const keys = deps.keys ?? NAME_KEYS;
  const ids = new Map<string, string>();
  const verified = new Set<string>();
  const inflight = new Map<string, Promise<string>>();
  let multiUser: boolean | null = null;
  let warned = false;
  let writing: Promise<void> = Promise.resolve();

  const shared = deps.shared;
  if (shared) {
    for (const [k, id] of shared.initial) if (typeof id === 'string' && id) ids.set(k, id);
    // An id another replica learned is used here too (both talk to the same ComfyUI).
    shared.docs.onRemote((k, id) => (typeof id === 'string' && id ? ids.set(k, id) : ids.delete(k)));
  } else
    try {
      const j = JSON.parse(fs.readFileSync(deps.file, 'utf8')) as { users?: Record<string, unknown> };
      for (const [u, id] of Object.entries(j.users ?? {})) if (typeof id === 'string' && id) ids.set(u, id);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT')
        deps.logger.warn({ err: (e as Error).message }, 'comfy_users.json unreadable; ComfyUI users will be looked up again');
    }

  function persist(key: string): Promise<void> {
    if (shared) {
      const id = ids.get(key);
      writing = writing
        .then(() => shared.docs.write([[key, id]]))
        .catch((e) => deps.logger.error({ err: (e as Error).message }, 'ComfyUI user id not saved to the shared store'));
      return writing;
    }
    const body = JSON.stringify({ version: 1, users: Object.fromEntries(ids) }, null, 1);
    writing = writing
      .then(() => writeFileAtomic(deps.file, body))
      .catch((e) => deps.logger.error({ err: (e as Error).message }, 'comfy_users.json write failed'));
    return writing;
  }

  async function listUsers(): Promise<Record<string, string> | null> {
    const r = await deps.upstream.request('GET', '/users', { headers: { accept: 'application/json' } });
    if (r.status !== 200) throw new Error(`GET /users answered ${r.status}`);
    const j = JSON.parse(r.body.toString('utf8')) as { users?: unknown };
    if (!j || typeof j !== 'object' || !j.users || typeof j.users !== 'object') return null;
    return j.users as Record<string, string>;
  }

  async function create(name: string): Promise<string | null> {
    const r = await deps.upstream.request('POST', '/users', {
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify({ username: name }),
    });
    if (r.status === 200) {
      const id = JSON.parse(r.body.toString('utf8')) as unknown;
      if (typeof id === 'string' && id) return id;
      throw new Error('POST /users answered without an id');
    }
    return null; // e.g. "Duplicate username." after a race: look it up again
  }

  function singleUser(key: string): string {
    multiUser = false;
    if (!warned) {
      warned = true;
      deps.logger.warn(
        "ComfyUI runs without --multi-user: it ignores comfy-user, so the gateway keeps each user's workflows and settings apart itself (under gateway-users/<user>/ of its one user folder; with separate_users off they are shared)",
      );
    }
    verified.add(key);
    return SINGLE_USER;
  }

  async function remember(key: string, id: string): Promise<string> {
    if (ids.get(key) !== id) {
      ids.set(key, id);
      await persist(key);
    }
    verified.add(key);
    return id;
  }

  async function lookup(username: string, key: string): Promise<string> {
    const known = ids.get(key);
    if (!known) {
      // A new user: one request in the usual case.
      const created = await create(username);
      if (created) return remember(key, created);
    }
    let users: Record<string, string> | null;
    try {
      users = await listUsers();
    } catch (e) {
      if (known) return known; // ComfyUI unreachable: keep using what we had, check again next time
      throw e;
    }
    if (users === null) return singleUser(key);
    multiUser = true;
    if (known && Object.prototype.hasOwnProperty.call(users, known)) return remember(key, known);
    // Our id is gone (ComfyUI reinstalled?) or the name was taken before. Found by name only for a name-keyed account
    // (from before account ids: that ComfyUI user is its own); an id-keyed one may carry a deleted account's name,
    // whose ComfyUI user (workflows, settings) is not its to inherit, so it gets a ComfyUI user of its own.
    let id = key === username ? Object.keys(users).find((k) => users![k] === username) : undefined;
    id ??= (await create(username)) ?? (await create(`${username}-${key.slice(0, 8)}`)) ?? undefined;
    if (!id) throw new Error(`could not create the ComfyUI user for ${username}`);
    return remember(key, id);
  }

  return {
    resolve(username) {
      const key = keys.keyOf(username);
      if (verified.has(key)) return Promise.resolve(multiUser === false ? SINGLE_USER : ids.get(key)!);
      let p = inflight.get(key);
      if (!p) {
        p = lookup(username, key).finally(() => inflight.delete(key));
        inflight.set(key, p);
      }
      return p;
    },
    cached(username) {
      if (multiUser === false) return SINGLE_USER;
      return ids.get(keys.keyOf(username));
    },
    get multiUser() {
      return multiUser;
    },
    flush: () => writing,
  };
}
