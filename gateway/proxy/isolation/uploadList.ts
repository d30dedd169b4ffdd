import fs from 'node:fs';
import type { Logger } from '../../log';
import type { DocCollection } from '../../store/docs';
import { writeFileAtomic } from '../../users/atomicFile';

/**
 * The input files each user uploaded through the gateway, as ComfyUI names them (`<user>/sub/x.png`). Used to list a
 * user's own uploads in loader dropdowns when the gateway cannot read ComfyUI's input folder (a server that reports
 * neither its command line nor /internal/folder_paths, like mid-2024 ComfyUI): ComfyUI itself lists only the top
 * level of input/, never the per-user folders uploads go to.
 */
export interface UploadList {
  add(user: string, name: string): void;
  of(user: string): string[];
  flush(): Promise<void>;
}

/** One upload as the shared store keeps it: a document per entry, so two replicas adding at once both keep theirs. */
export interface UploadEntry {
  user: string;
  name: string;
}

/** The shared store's upload documents (store/parts.ts), with what they held at start. */
export interface SharedUploads {
  initial: Map<string, UploadEntry>;
  docs: DocCollection<UploadEntry>;
}

/** The document key of one entry (unique per user and name). */
export const uploadKey = (user: string, name: string) => JSON.stringify([user, name]);

const PER_USER = 2000;

/** Reads `uploads.json` (also for migrate-store): user → names, oldest first. */
export function readUploadsFile(file: string, logger?: Logger): Map<string, string[]> {
  const byUser = new Map<string, string[]>();
  try {
    const j = JSON.parse(fs.readFileSync(file, 'utf8')) as { users?: Record<string, unknown> };
    for (const [u, names] of Object.entries(j.users ?? {}))
      if (Array.isArray(names)) byUser.set(u, names.filter((n): n is string => typeof n === 'string').slice(-PER_USER));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT')
      logger?.warn({ err: (e as Error).message }, 'upload list unreadable; starting empty');
  }
  return byUser;
}

/** Adds `name` to a user's list in `byUser`; returns the name pushed out by the cap, '' if none, or null when known. */
function push(byUser: Map<string, string[]>, user: string, name: string): string | null {
  const list = byUser.get(user) ?? [];
  if (list.includes(name)) return null;
  list.push(name);
  byUser.set(user, list);
  return list.length > PER_USER ? list.shift()! : '';
}

/**
 * Loads (or starts) the list kept in `file`, writes debounced and atomic; or, with `shared` (several replicas), one
 * document per upload in PostgreSQL whose change feed brings other replicas' uploads into this one's lists.
 */
export function createUploadList(deps: { file: string; logger: Logger; shared?: SharedUploads }): UploadList {
  return deps.shared ? sharedUploadList(deps.shared, deps.logger) : fileUploadList(deps.file, deps.logger);
}

function fileUploadList(file: string, logger: Logger): UploadList {
  const byUser = readUploadsFile(file, logger);
  let timer: NodeJS.Timeout | null = null;
  let writing: Promise<void> = Promise.resolve();
  const write = () => {
    writing = writing
      .then(() => writeFileAtomic(file, JSON.stringify({ version: 1, users: Object.fromEntries(byUser) })))
      .catch((e) => logger.error({ err: (e as Error).message }, 'upload list write failed'));
    return writing;
  };
  return {
    add(user, name) {
      if (push(byUser, user, name) === null || timer) return;
      timer = setTimeout(() => {
        timer = null;
        void write();
      }, 200);
      timer.unref();
    },
    of: (user) => [...(byUser.get(user) ?? [])],
    async flush() {
      if (timer) {
        clearTimeout(timer);
        timer = null;
        await write();
      }
      await writing;
    },
  };
}

function sharedUploadList(shared: SharedUploads, logger: Logger): UploadList {
  let byUser = new Map<string, string[]>();
  const fill = (all: Map<string, UploadEntry>) => {
    const next = new Map<string, string[]>();
    // all() is in insertion order (gw_docs.seq): the cap keeps the newest, as the file list does.
    for (const v of all.values()) if (v && typeof v.user === 'string' && typeof v.name === 'string') push(next, v.user, v.name);
    byUser = next;
  };
  fill(shared.initial);
  shared.docs.onRemote((key, v) => {
    if (v) return void push(byUser, v.user, v.name);
    let parsed: unknown;
    try {
      parsed = JSON.parse(key);
    } catch {
      return;
    }
    if (!Array.isArray(parsed) || parsed.length !== 2) return;
    const [user, name] = parsed as [string, string];
    const list = byUser.get(user);
    const at = list?.indexOf(name) ?? -1;
    if (list && at >= 0) list.splice(at, 1);
  });
  shared.docs.onReset(fill);
  let writing: Promise<void> = Promise.resolve();
  return {
    add(user, name) {
      const dropped = push(byUser, user, name);
      if (dropped === null) return;
      const entries: [string, UploadEntry | undefined][] = [[uploadKey(user, name), { user, name }]];
      if (dropped) entries.push([uploadKey(user, dropped), undefined]);
      writing = writing
        .then(() => shared.docs.write(entries))
        .catch((e) => logger.error({ err: (e as Error).message, user }, 'upload not recorded in the shared store'));
    },
    of: (user) => [...(byUser.get(user) ?? [])],
    flush: () => writing,
  };
}
