import crypto from 'node:crypto';
import fs from 'node:fs';
import type { IncomingMessage } from 'node:http';
import path from 'node:path';
import { DownloadFailure } from './errors';
import { parseLength, sha256FromEtag } from './probe';
import type { SafeHttp } from './safeHttp';

/** What one worker needs to know and report. */
export interface WorkerJob {
  url: string;
  /** final path; the worker writes `<dest>.<epoch>.tmp` beside it */
  dest: string;
  epoch: number;
  /** expected sha256 from the request body, if any (else HF's X-Linked-Etag is used) */
  sha256: string | null;
  hfToken: string | null;
  signal: AbortSignal;
  /** progress callback: bytes on disk so far and the expected total */
  progress(bytes: number, total: number | null): void;
  /** free bytes on the destination's filesystem */
  freeSpace(dir: string): Promise<number>;
  /** still the live session for this model (cancellation by epoch) */
  isActive(): boolean;
}

/** How many times a transient network failure is resumed with a Range request. */
export const MAX_RESUMES = 3;

/** The temp file a session writes: unique per epoch, so a cancelled worker never touches a newer session's file. */
export function tmpPathFor(dest: string, epoch: number): string {
  return `${dest}.${epoch}.tmp`;
}

/** Names the orphan sweep may remove: our temp files only (`<model file>.<epoch>.tmp`, epoch captured), never other `.tmp` files. */
export const TMP_PATTERN = /\.(?:safetensors|sft|ckpt|pth|pt)\.(\d+)\.tmp$/;

const TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EAI_AGAIN',
  'ERR_STREAM_PREMATURE_CLOSE',
  'EHOSTUNREACH',
  'ENETUNREACH',
]);

function isAbort(e: unknown, signal: AbortSignal): boolean {
  return signal.aborted || (e as Error)?.name === 'AbortError';
}

async function rmQuiet(p: string): Promise<void> {
  await fs.promises.rm(p, { force: true }).catch(() => undefined);
}

/** Streams a response body into an open write stream; resolves once every received byte is on disk. `onChunk` may
 * refuse a chunk by returning an error: the chunk is not written and the transfer stops with that error. */
function pump(res: IncomingMessage, out: fs.WriteStream, onChunk: (c: Buffer) => Error | void, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = false;
    let outError: Error | null = null;
    const finish = (err: Error | null) => {
      if (done) return;
      done = true;
      res.off('data', onData);
      out.off('drain', onDrain);
      signal.removeEventListener('abort', onAbort);
      if (!res.destroyed && err) res.destroy();
      // End (not destroy) the file so every byte counted is written before a resume decides its offset.
      if (outError) return reject(outError);
      out.end(() => (outError ? reject(outError) : err ? reject(err) : resolve()));
    };
    const onData = (c: Buffer) => {
      const refused = onChunk(c);
      if (refused) return finish(refused);
      if (!out.write(c)) res.pause();
    };
    const onDrain = () => res.resume();
    const onAbort = () => finish(Object.assign(new Error('cancelled'), { name: 'AbortError' }));
    res.on('data', onData);
    out.on('drain', onDrain);
    out.on('error', (e) => {
      outError = Object.assign(e, { fatalWrite: true });
      finish(e);
    });
    res.on('end', () => finish(null));
    res.on('error', (e) => finish(e));
    res.on('close', () => {
      if (!res.complete)
        finish(Object.assign(new Error('connection closed before the body was complete'), { code: 'ERR_STREAM_PREMATURE_CLOSE' }));
    });
    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) onAbort();
    else if (res.readableEnded) finish(null);
    else if (res.destroyed)
      finish(Object.assign(new Error('connection closed before the body was complete'), { code: 'ERR_STREAM_PREMATURE_CLOSE' }));
  });
}

/**
 * Downloads one model: stream to `<dest>.<epoch>.tmp`, resume transient failures with Range (up to 3 times), check
 * the size and sha256, then rename atomically. The temp file is removed on every failure and on cancellation.
 * Returns the number of bytes written.
 */
export async function runDownload(http: SafeHttp, job: WorkerJob): Promise<number> {
  const tmp = tmpPathFor(job.dest, job.epoch);
  await fs.promises.mkdir(path.dirname(job.dest), { recursive: true });
  let written = 0;
  let hash: crypto.Hash | null = null;
  let expectedSha = job.sha256;
  let total: number | null = null;
  let etag: string | null = null;
  let resumes = 0;

  try {
    for (;;) {
      if (!job.isActive()) throw Object.assign(new Error('cancelled'), { name: 'AbortError' });
      try {
        // Measured before the request: between a response and pump() there must be no await, or its end is missed.
        const free = await job.freeSpace(path.dirname(job.dest));
        const onDisk = written;
        const headers: Record<string, string> = written > 0 ? { range: `bytes=${written}-`, ...(etag ? { 'if-range': etag } : {}) } : {};
        const { res, first } = await http.request(job.url, {
          method: 'GET',
          hfToken: job.hfToken,
          follow: true,
          headers,
          signal: job.signal,
        });
        const status = res.statusCode ?? 0;
        let append = false;
        if (status === 206 && written > 0) {
          const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? ''));
          if (!m || Number(m[1]) !== written) {
            res.destroy();
            throw new DownloadFailure('DOWNLOAD_FAILED', 'the server answered a resume with the wrong range');
          }
          if (m[3] !== '*') {
            // A resume belongs to the same file: a different total is a different (or lying) file, never a bigger one.
            if (total !== null && Number(m[3]) !== total) {
              res.destroy();
              throw new DownloadFailure('SIZE_MISMATCH', `the server announced ${total} bytes, then ${m[3]} on resume`);
            }
            total = Number(m[3]);
          }
          append = true;
        } else if (status === 200) {
          const len = parseLength(res.headers['content-length']);
          total = len;
        } else {
          res.resume();
          const transient = status >= 500 || status === 429 || status === 408;
          throw new DownloadFailure(transient ? 'DOWNLOAD_FAILED' : `HTTP_${status}`, `the server answered HTTP ${status}`, transient);
        }
        if (!append) {
          // A fresh body (first attempt, or the server ignored our Range): start the file and the hash over.
          written = 0;
          hash = null;
          const linked = parseLength(first['x-linked-size']);
          if (linked !== null && total !== null && linked !== total) {
            res.destroy();
            throw new DownloadFailure('SIZE_MISMATCH', `the server announced ${linked} bytes but sent a ${total}-byte body`);
          }
          total ??= linked;
          expectedSha ??= sha256FromEtag(first['x-linked-etag']);
          etag = typeof res.headers.etag === 'string' && !res.headers.etag.startsWith('W/') ? res.headers.etag : null;
        }
        if (expectedSha && !hash) hash = crypto.createHash('sha256');
        // Starting over truncates what is on disk, so that space counts as free too.
        const room = append ? free : onDisk + free;
        if (total !== null && total - written > room) {
          res.destroy();
          throw new DownloadFailure('INSUFFICIENT_STORAGE', `not enough free disk space (${total - written} bytes needed, ${room} free)`);
        }
        // The body is cut the moment it outgrows its announced size, or, with no size announced, the free disk space:
        // a server that streams forever must not fill the disk.
        const limit = total ?? written + room;
        job.progress(written, total);
        const out = openTmp(tmp, append, written);
        await pump(
          res,
          out,
          (c) => {
            if (written + c.length > limit)
              return total !== null
                ? new DownloadFailure('SIZE_MISMATCH', `the server sent more than the ${total} bytes it announced`)
                : new DownloadFailure(
                    'INSUFFICIENT_STORAGE',
                    `the server announced no size and sent more than the ${room} bytes free on disk`,
                  );
            hash?.update(c);
            written += c.length;
            job.progress(written, total);
          },
          job.signal,
        );
        job.progress(written, total);
        if (total !== null && written < total) throw Object.assign(new Error('short body'), { code: 'ERR_STREAM_PREMATURE_CLOSE' });
        if (total !== null && written > total) throw new DownloadFailure('SIZE_MISMATCH', `received ${written} bytes, expected ${total}`);
        break;
      } catch (e) {
        if (isAbort(e, job.signal)) throw e;
        if (e instanceof DownloadFailure && !e.transient) throw e;
        if ((e as { fatalWrite?: boolean }).fatalWrite) {
          const code = (e as NodeJS.ErrnoException).code === 'ENOSPC' ? 'INSUFFICIENT_STORAGE' : 'WRITE_FAILED';
          throw new DownloadFailure(code, `could not write the file (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
        }
        const code = (e as NodeJS.ErrnoException).code ?? '';
        const transient = e instanceof DownloadFailure || TRANSIENT_CODES.has(code) || /aborted|socket hang up/i.test((e as Error).message);
        if (!transient || resumes >= MAX_RESUMES) {
          if (e instanceof DownloadFailure) throw e;
          throw new DownloadFailure('DOWNLOAD_FAILED', `network error: ${code || (e as Error).message}`);
        }
        resumes++;
        // Resume from what is really on disk; the hash must then cover exactly those bytes.
        written = await fs.promises.stat(tmp).then(
          (s) => s.size,
          () => 0,
        );
        if (hash) hash = await hashPrefix(tmp, written);
        await new Promise((r) => setTimeout(r, 250 * resumes));
      }
    }
    if (!job.isActive()) throw Object.assign(new Error('cancelled'), { name: 'AbortError' });
    if (hash && expectedSha) {
      const got = hash.digest('hex');
      if (got !== expectedSha.toLowerCase())
        throw new DownloadFailure('HASH_MISMATCH', `sha256 mismatch: expected ${expectedSha}, got ${got}`);
    }
    await place(tmp, job.dest);
    return written;
  } catch (e) {
    await rmQuiet(tmp);
    throw e;
  }
}

const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;

/**
 * Opens the temp file without ever following a link planted at its (predictable) name: a fresh file replaces whatever
 * is there and is created exclusively; a resume reopens our own file, refusing a symlink swapped in meanwhile.
 */
function openTmp(tmp: string, append: boolean, offset: number): fs.WriteStream {
  // Synchronous on purpose: there must be no await between the response and pump().
  let fd: number;
  try {
    if (append) fd = fs.openSync(tmp, O_WRONLY | O_NOFOLLOW);
    else {
      fs.rmSync(tmp, { force: true });
      fd = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o644);
    }
  } catch (e) {
    throw Object.assign(e as Error, { fatalWrite: true });
  }
  return fs.createWriteStream(tmp, { fd, start: append ? offset : 0, highWaterMark: 1 << 20 });
}

/** Filesystems that cannot hard-link answer with one of these. */
const NO_HARD_LINKS = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'EXDEV']);

/**
 * Puts the finished file under its final name without ever replacing a file already there (another model id naming
 * the same directory, or a file placed by hand while this one downloaded): link() refuses an existing name atomically.
 */
async function place(tmp: string, dest: string): Promise<void> {
  const taken = () => new DownloadFailure('ALREADY_AVAILABLE', 'a file with this name appeared while downloading; it was left in place');
  try {
    await fs.promises.link(tmp, dest);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? '';
    if (code === 'EEXIST') throw taken();
    if (!NO_HARD_LINKS.has(code)) throw e;
    // Without hard links only a last check before rename() is possible (a small window, not an atomic guarantee).
    if (
      await fs.promises.lstat(dest).then(
        () => true,
        () => false,
      )
    )
      throw taken();
    await fs.promises.rename(tmp, dest);
    return;
  }
  await rmQuiet(tmp);
}

/** sha256 state over the first `n` bytes of a file (after a resume). */
async function hashPrefix(file: string, n: number): Promise<crypto.Hash> {
  const h = crypto.createHash('sha256');
  if (n === 0) return h;
  await new Promise<void>((resolve, reject) => {
    fs.createReadStream(file, { start: 0, end: n - 1 })
      .on('data', (c) => h.update(c))
      .on('end', resolve)
      .on('error', reject);
  });
  return h;
}
