import fs from 'node:fs';
import type { Logger } from '../log';
import type { UserStore } from '../users/types';

/**
 * Carries the email → username bindings of earlier versions (data_dir/cf_access_bindings.json) onto the accounts,
 * where emails now live, then renames the file aside. Only bindings to accounts Cloudflare Access itself created
 * (no password) carry over: the others were made by matching the email's local part to an existing name, which is
 * exactly what may no longer bind; an admin sets those accounts' emails instead.
 */
export async function migrateLegacyBindings(deps: { file: string; users: UserStore; logger: Logger }): Promise<void> {
  let emails: Record<string, unknown>;
  try {
    emails = ((JSON.parse(fs.readFileSync(deps.file, 'utf8')) as { emails?: Record<string, unknown> }).emails ?? {}) as Record<
      string,
      unknown
    >;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT')
      deps.logger.error({ file: deps.file, err: (e as Error).message }, 'old Cloudflare Access bindings unreadable; not carried over');
    return;
  }
  for (const [email, name] of Object.entries(emails)) {
    if (typeof name !== 'string') continue;
    const u = deps.users.get(name);
    if (!u || u.email || u.password_hash !== '!' || deps.users.byEmail(email)) {
      deps.logger.warn({ email, user: name }, 'Cloudflare Access binding not carried over; an admin can set this email on the account');
      continue;
    }
    try {
      await deps.users.update(name, { email });
    } catch (e) {
      deps.logger.warn({ email, user: name, err: (e as Error).message }, 'Cloudflare Access binding not carried over');
    }
  }
  try {
    fs.renameSync(deps.file, `${deps.file}.migrated`);
  } catch (e) {
    deps.logger.warn({ file: deps.file, err: (e as Error).message }, 'could not rename the old Cloudflare Access bindings file');
  }
}
