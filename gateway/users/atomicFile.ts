import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/** Suffix of the temporary siblings writeFileAtomic creates (swept by sweepStaleTemps). */
const TMP_SUFFIX = '.tmp';

/**
 * Replaces `file` with `data` so that a crash at any instant leaves either the old or the new content, never a
 * mix: write a sibling temp file, fsync it, rename it over the target, fsync the directory.
 */
export async function writeFileAtomic(file: string, data: string | Buffer, mode = 0o600): Promise<void> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${crypto.randomBytes(6).toString('hex')}${TMP_SUFFIX}`);
  let fh: fs.promises.FileHandle | null = null;
  try {
    // 'wx': never follow or reuse something already at the temp name.
    fh = await fs.promises.open(tmp, 'wx', mode);
    await fh.writeFile(data);
    await fh.sync();
    await fh.close();
    fh = null;
    await fs.promises.rename(tmp, file);
  } catch (e) {
    await fh?.close().catch(() => undefined);
    await fs.promises.unlink(tmp).catch(() => undefined);
    throw e;
  }
  // The rename is durable only once the directory entry is on disk.
  try {
    const dh = await fs.promises.open(dir, 'r');
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  } catch {
    // Some filesystems refuse fsync on a directory; the rename itself is still atomic.
  }
}

/** Removes temp files a killed writer left next to `file` (only ones older than `olderThanMs`, so live writers are safe). */
export function sweepStaleTemps(file: string, olderThanMs = 60_000): void {
  const dir = path.dirname(file);
  const prefix = `.${path.basename(file)}.`;
  let names: string[] = [];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  const now = Date.now();
  for (const n of names) {
    if (!n.startsWith(prefix) || !n.endsWith(TMP_SUFFIX)) continue;
    try {
      const p = path.join(dir, n);
      if (now - fs.statSync(p).mtimeMs > olderThanMs) fs.unlinkSync(p);
    } catch {
      // raced with another sweeper or writer: nothing to do
    }
  }
}

/** Who holds a lock: our pid and when this process started (a restarted gateway in a container gets the same pid). */
const lockOwner = () => `${process.pid} ${Math.round(performance.timeOrigin)}`;

/** A lock older than this is stale whoever holds it: a write takes milliseconds. */
const LOCK_MAX_AGE_MS = 30_000;

/** True when a lock file's holder is gone: a writer killed with -9 left it behind. */
function lockIsStale(lock: string): boolean {
  try {
    const text = fs.readFileSync(lock, 'utf8').trim();
    const age = Date.now() - fs.statSync(lock).mtimeMs;
    if (age > LOCK_MAX_AGE_MS) return true;
    const [pidText, started] = text.split(' ');
    const pid = Number(pidText);
    // Empty while its holder is still writing it; junk only once it has stayed that way for a while.
    if (!Number.isInteger(pid) || pid <= 0) return age > 2000;
    // Our own pid from an earlier life of this pid (the previous container run), not this process.
    if (pid === process.pid) return started !== lockOwner().split(' ')[1];
    try {
      process.kill(pid, 0);
      return false;
    } catch (e) {
      return (e as NodeJS.ErrnoException).code === 'ESRCH';
    }
  } catch {
    return false; // released meanwhile: just try again
  }
}

/**
 * Runs `fn` holding `<file>.lock` (created exclusively, naming its holder), so that two processes rewriting the same
 * file — the gateway and the users CLI — take turns: each one's check for the other's write and its own rename
 * happen with nobody writing in between. A lock whose holder died is broken. When the lock cannot be had (a
 * filesystem without exclusive create, a holder stuck past `timeoutMs`), `fn` runs anyway: a write is never refused.
 */
export async function withFileLock<T>(file: string, fn: () => Promise<T>, timeoutMs = 10_000): Promise<T> {
  const lock = `${file}.lock`;
  const deadline = Date.now() + timeoutMs;
  let held = false;
  for (let wait = 2; !held; wait = Math.min(wait * 2, 50)) {
    try {
      const fh = await fs.promises.open(lock, 'wx', 0o600);
      try {
        await fh.writeFile(lockOwner());
      } finally {
        await fh.close();
      }
      held = true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || Date.now() > deadline) break;
      if (lockIsStale(lock)) await fs.promises.unlink(lock).catch(() => undefined);
      else await new Promise((r) => setTimeout(r, wait));
    }
  }
  try {
    return await fn();
  } finally {
    if (held) await fs.promises.unlink(lock).catch(() => undefined);
  }
}
