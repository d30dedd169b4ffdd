import fs from 'node:fs';
import type { Logger } from '../log';
import { writeFileAtomic } from '../users/atomicFile';

/** Which gateway user each Cloudflare Access email is bound to (data_dir/cf_access_bindings.json). */
export interface EmailBindings {
  get(email: string): string | undefined;
  /** the email a username is bound to, if any */
  emailOf(username: string): string | undefined;
  set(email: string, username: string): Promise<void>;
  remove(email: string): Promise<void>;
}

/**
 * Email → username bindings, persisted so that once an email owns a username no other email (say, the same local
 * part at another domain) can be mapped onto it. Written atomically (temp + rename), mode 0600.
 */
export function createEmailBindings(deps: { file: string; logger: Logger }): EmailBindings {
  let map: Record<string, string> = {};
  try {
    const parsed = JSON.parse(fs.readFileSync(deps.file, 'utf8')) as { emails?: unknown };
    if (parsed && typeof parsed.emails === 'object' && parsed.emails) {
      for (const [k, v] of Object.entries(parsed.emails)) if (typeof v === 'string') map[k] = v;
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') deps.logger.error({ file: deps.file, err: (e as Error).message }, 'Cloudflare Access bindings unreadable; starting empty');
  }
  let writes: Promise<void> = Promise.resolve();
  const save = () => {
    const text = JSON.stringify({ emails: map }, null, 2) + '\n';
    writes = writes.then(() => writeFileAtomic(deps.file, text, 0o600)).catch((err) => deps.logger.error({ err: (err as Error).message }, 'could not save Cloudflare Access bindings'));
    return writes;
  };
  return {
    get: (email) => (Object.prototype.hasOwnProperty.call(map, email) ? map[email] : undefined),
    emailOf: (username) => Object.keys(map).find((e) => map[e] === username),
    set(email, username) {
      map = { ...map, [email]: username };
      return save();
    },
    remove(email) {
      const { [email]: _gone, ...rest } = map;
      map = rest;
      return save();
    },
  };
}
