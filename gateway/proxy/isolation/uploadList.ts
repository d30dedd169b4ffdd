import fs from 'node:fs';
import type { Logger } from '../../log';
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

const PER_USER = 2000;

/** Loads (or starts) the list kept in `file`; writes are debounced and atomic. */
export function createUploadList(deps: { file: string; logger: Logger }): UploadList {
  const byUser = new Map<string, string[]>();
  let timer: NodeJS.Timeout | null = null;
  let writing: Promise<void> = Promise.resolve();
  try {
    const j = JSON.parse(fs.readFileSync(deps.file, 'utf8')) as { users?: Record<string, unknown> };
    for (const [u, names] of Object.entries(j.users ?? {}))
      if (Array.isArray(names)) byUser.set(u, names.filter((n): n is string => typeof n === 'string').slice(-PER_USER));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT')
      deps.logger.warn({ err: (e as Error).message }, 'upload list unreadable; starting empty');
  }
  const write = () => {
    writing = writing
      .then(() => writeFileAtomic(deps.file, JSON.stringify({ version: 1, users: Object.fromEntries(byUser) })))
      .catch((e) => deps.logger.error({ err: (e as Error).message }, 'upload list write failed'));
    return writing;
  };
  return {
    add(user, name) {
      const list = byUser.get(user) ?? [];
      if (list.includes(name)) return;
      list.push(name);
      if (list.length > PER_USER) list.shift();
      byUser.set(user, list);
      if (!timer) {
        timer = setTimeout(() => {
          timer = null;
          void write();
        }, 200);
        timer.unref();
      }
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
