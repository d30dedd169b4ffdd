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
