import { Transform, type TransformCallback } from 'node:stream';
import { AppError } from '../../errors';

/** What the rewriter does to a multipart/form-data body as it streams. */
export interface MultipartRules {
  boundary: string;
  /** fields whose value is replaced (buffered, small): name → new value (may throw an AppError) */
  rewrite: Record<string, (value: string) => string>;
  /** fields added at the end when the body had none: name → value */
  ensure: Record<string, () => string>;
  /** checks the filename of every file part (may throw an AppError) */
  checkFilename(name: string): void;
}

const MAX_HEADERS = 16 * 1024;
const MAX_FIELD = 64 * 1024;
const CRLF = Buffer.from('\r\n');
const HEADER_END = Buffer.from('\r\n\r\n');
const TOKEN_LINE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\u0000-\u0008\u000a-\u001f\u007f]*$/;

const bad = (why: string) => new AppError(400, 'INVALID_BODY', `Malformed multipart body: ${why}`);

/** The boundary of a multipart/form-data Content-Type, or null when it is not one we accept. */
export function formDataBoundary(contentType: string | undefined): string | null {
  if (!contentType) return null;
  const m = /^\s*multipart\/form-data\s*;(.*)$/i.exec(contentType);
  if (!m) return null;
  const found: string[] = [];
  for (const part of m[1].split(';')) {
    const kv = /^\s*([A-Za-z0-9_-]+)\s*=\s*(?:"([^"\\]*)"|([^\s";]+))\s*$/.exec(part);
    if (!kv) {
      if (part.trim()) return null;
      continue;
    }
    if (kv[1].toLowerCase() === 'boundary') found.push(kv[2] ?? kv[3]);
  }
  if (found.length !== 1) return null;
  // RFC 2046 bchars, 1..70, not ending in a space.
  return /^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$/.test(found[0]) ? found[0] : null;
}

/**
 * Parses a Content-Disposition of a form-data part, refusing everything a browser never sends but a server might
 * read differently: RFC 2231/5987 `name*`/`filename*` parameters, backslash escapes, duplicate parameters, and
 * quoted values starting with `/` (aiohttp strips leading slashes: `name="/subfolder"` is ComfyUI's `subfolder`).
 */
export function parseDisposition(value: string): { name: string; filename: string | null } {
  const parts: string[] = [];
  let cur = '';
  let quoted = false;
  for (const ch of value) {
    if (ch === '"') quoted = !quoted;
    if (ch === ';' && !quoted) {
      parts.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (quoted) throw bad('unterminated quoted string');
  parts.push(cur);
  if (parts[0].trim().toLowerCase() !== 'form-data') throw bad('part is not form-data');
  const params = new Map<string, string>();
  for (const p of parts.slice(1)) {
    if (!p.trim()) continue;
    const m = /^\s*([^\s=*"]+)\s*=\s*(?:"([^"]*)"|([^\s";]*))\s*$/.exec(p);
    if (!m) throw bad('unsupported Content-Disposition parameter');
    const key = m[1].toLowerCase();
    const v = m[2] ?? m[3];
    if (v.includes('\\')) throw bad('escaped characters in Content-Disposition');
    if (v.startsWith('/')) throw bad('Content-Disposition value starting with a slash');
    if (params.has(key)) throw bad('duplicate Content-Disposition parameter');
    params.set(key, v);
  }
  const name = params.get('name');
  if (name === undefined) throw bad('part without a name');
  return { name, filename: params.has('filename') ? params.get('filename')! : null };
}

type State = 'preamble' | 'after' | 'headers' | 'body' | 'field' | 'done';

/**
 * A streaming multipart/form-data rewriter: file parts flow through untouched (never buffered), the few small
 * fields named in `rules.rewrite` are replaced (their headers too, so no charset or transfer encoding can change
 * how ComfyUI reads the new value), missing `ensure` fields are appended, preamble and epilogue are dropped.
 * Only CRLF-delimited boundaries count; a bare `--boundary` anywhere else is refused, so no parser can see a part
 * this one did not.
 */
export function multipartRewriter(rules: MultipartRules): Transform {
  const needle = Buffer.from(`--${rules.boundary}`, 'latin1');
  const keep = needle.length + 1;
  let buf: Buffer = CRLF; // the first boundary needs no CRLF before it
  let state: State = 'preamble';
  let field: { name: string; chunks: Buffer[]; size: number } | null = null;
  let started = false;
  const seen = new Set<string>();

  const delimiter = () => {
    const d = Buffer.from(`${started ? '\r\n' : ''}--${rules.boundary}\r\n`, 'latin1');
    started = true;
    return d;
  };
  const plainPart = (name: string, value: string) =>
    Buffer.concat([delimiter(), Buffer.from(`Content-Disposition: form-data; name="${name}"\r\n\r\n`, 'utf8'), Buffer.from(value, 'utf8')]);

  function finishField(push: (b: Buffer) => void) {
    const f = field!;
    field = null;
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(Buffer.concat(f.chunks));
    } catch {
      throw bad(`field ${f.name} is not UTF-8`);
    }
    const value = rules.rewrite[f.name](text);
    if (/["\r\n]/.test(f.name)) throw bad('bad field name');
    push(plainPart(f.name, value));
  }

  function startPart(block: Buffer, push: (b: Buffer) => void) {
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(block);
    } catch {
      throw bad('part headers are not UTF-8');
    }
    const lines = text.split('\r\n');
    let disposition: string | null = null;
    for (const line of lines) {
      if (!TOKEN_LINE.test(line)) throw bad('malformed part header');
      const i = line.indexOf(':');
      if (line.slice(0, i).toLowerCase() === 'content-disposition') {
        if (disposition !== null) throw bad('duplicate Content-Disposition');
        disposition = line.slice(i + 1).trim();
      }
    }
    if (disposition === null) throw bad('part without Content-Disposition');
    const d = parseDisposition(disposition);
    seen.add(d.name);
    if (Object.prototype.hasOwnProperty.call(rules.rewrite, d.name)) {
      field = { name: d.name, chunks: [], size: 0 };
      state = 'field';
      return;
    }
    if (d.filename !== null) rules.checkFilename(d.filename);
    push(Buffer.concat([delimiter(), block, HEADER_END]));
    state = 'body';
  }

  function step(push: (b: Buffer) => void) {
    for (;;) {
      if (state === 'done') {
        buf = Buffer.alloc(0);
        return;
      }
      if (state === 'preamble' || state === 'body' || state === 'field') {
        const idx = buf.indexOf(needle);
        if (idx >= 0) {
          if (idx < 2 || buf[idx - 2] !== 0x0d || buf[idx - 1] !== 0x0a) throw bad('boundary not at the start of a line');
          const data = buf.subarray(0, idx - 2);
          if (state === 'body') {
            if (data.length) push(data);
          } else if (state === 'field') {
            field!.chunks.push(data);
            if ((field!.size += data.length) > MAX_FIELD) throw bad(`field ${field!.name} too large`);
            finishField(push);
          }
          buf = buf.subarray(idx + needle.length);
          state = 'after';
          continue;
        }
        if (buf.length > keep) {
          const out = buf.subarray(0, buf.length - keep);
          if (state === 'body') push(out);
          else if (state === 'field') {
            field!.chunks.push(out);
            if ((field!.size += out.length) > MAX_FIELD) throw bad(`field ${field!.name} too large`);
          }
          buf = buf.subarray(buf.length - keep);
        }
        return;
      }
      if (state === 'after') {
        if (buf.length < 2) return;
        if (buf[0] === 0x2d && buf[1] === 0x2d) {
          for (const [name, value] of Object.entries(rules.ensure)) if (!seen.has(name)) push(plainPart(name, value()));
          if (!started) throw bad('no parts');
          push(Buffer.from(`\r\n--${rules.boundary}--\r\n`, 'latin1'));
          state = 'done';
          continue;
        }
        if (buf[0] !== 0x0d || buf[1] !== 0x0a) throw bad('garbage after a boundary');
        buf = buf.subarray(2);
        state = 'headers';
        continue;
      }
      if (state === 'headers') {
        if (buf.length >= 2 && buf[0] === 0x0d && buf[1] === 0x0a) throw bad('part without headers');
        const end = buf.indexOf(HEADER_END);
        if (end < 0) {
          if (buf.length > MAX_HEADERS) throw bad('part headers too large');
          return;
        }
        if (end > MAX_HEADERS) throw bad('part headers too large');
        const block = Buffer.from(buf.subarray(0, end));
        buf = buf.subarray(end + HEADER_END.length);
        startPart(block, push);
        continue;
      }
    }
  }

  return new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      try {
        if (state !== 'done') {
          buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
          step((b) => this.push(b));
        }
        cb();
      } catch (e) {
        cb(e as Error);
      }
    },
    flush(cb: TransformCallback) {
      cb(state === 'done' ? undefined : bad('truncated body'));
    },
  });
}
