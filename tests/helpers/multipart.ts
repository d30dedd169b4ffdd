import crypto from 'node:crypto';
import { Readable } from 'node:stream';

/** A streaming multipart/form-data body with one generated file part of `size` bytes (never held in memory). */
export function multipartUpload(opts: { field?: string; filename: string; size: number; fields?: Record<string, string>; chunk?: number }) {
  const boundary = `----cgw${crypto.randomBytes(8).toString('hex')}`;
  const head =
    Object.entries(opts.fields ?? {})
      .map(([k, v]) => `--${boundary}\r\nContent-Disposition: form-data; name="${k}"\r\n\r\n${v}\r\n`)
      .join('') +
    `--${boundary}\r\nContent-Disposition: form-data; name="${opts.field ?? 'image'}"; filename="${opts.filename}"\r\nContent-Type: image/png\r\n\r\n`;
  const tail = `\r\n--${boundary}--\r\n`;
  const chunkSize = opts.chunk ?? 1024 * 1024;
  const block = Buffer.alloc(chunkSize, 0x5a);
  const hash = crypto.createHash('sha256');
  let sent = 0;
  let phase = 0;
  const stream = new Readable({
    read() {
      if (phase === 0) {
        phase = 1;
        this.push(head);
        return;
      }
      if (phase === 1) {
        const n = Math.min(chunkSize, opts.size - sent);
        if (n > 0) {
          const part = n === chunkSize ? block : block.subarray(0, n);
          hash.update(part);
          sent += n;
          this.push(part);
          return;
        }
        phase = 2;
        this.push(tail);
        return;
      }
      this.push(null);
    },
  });
  return {
    stream,
    contentType: `multipart/form-data; boundary=${boundary}`,
    contentLength: Buffer.byteLength(head) + opts.size + Buffer.byteLength(tail),
    /** sha256 of the file part (complete once the stream has ended) */
    digest: () => hash.digest('hex'),
  };
}
