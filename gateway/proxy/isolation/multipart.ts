import { Transform, type TransformCallback } from 'node:stream';
import { badMultipart, parsePartHeaders } from './formHeaders';

/** What the rewriter does to a multipart/form-data body as it streams. */
export interface MultipartRules {
  boundary: string;
  /**
   * the plain fields the route knows: name → the value forwarded, from the checked UTF-8 value (may throw an
   * AppError). Each is buffered (small) and re-sent with a bare Content-Disposition, so ComfyUI decodes it as UTF-8.
   */
  fields: Record<string, (value: string) => string>;
  /** the file parts the route knows: name → a check of the part's filename (may throw an AppError) */
  files: Record<string, (filename: string) => void>;
  /** fields added at the end when the body had none: name → value */
  ensure: Record<string, () => string>;
}

const MAX_HEADERS = 16 * 1024;
const MAX_FIELD = 64 * 1024;
const CRLF = Buffer.from('\r\n');
const HEADER_END = Buffer.from('\r\n\r\n');
const own = (o: object, k: string) => Object.prototype.hasOwnProperty.call(o, k);
const bad = (why: string) => badMultipart(why);

export { formDataBoundary, parseDisposition } from './formHeaders';

type State = 'preamble' | 'after' | 'headers' | 'body' | 'field' | 'done';

/**
 * A streaming multipart/form-data rewriter: file parts flow through untouched (never buffered), every plain field
 * is replaced by the value `rules.fields` makes of it (headers too, so no charset or transfer encoding can change
 * how ComfyUI reads it), missing `ensure` fields are appended, preamble and epilogue are dropped. A part the route
 * does not know (`_charset_` included), a field sent twice, a file where a field is expected (or the reverse), and
 * any header outside formHeaders.ts's grammar are refused. Only CRLF-delimited boundaries count; a bare
 * `--boundary` anywhere else is refused, so no parser can see a part this one did not.
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
    push(plainPart(f.name, rules.fields[f.name](text)));
  }

  function startPart(block: Buffer, push: (b: Buffer) => void) {
    const d = parsePartHeaders(block);
    if (seen.has(d.name)) throw bad(`field ${d.name} sent twice`);
    seen.add(d.name);
    if (d.filename === null && own(rules.fields, d.name)) {
      field = { name: d.name, chunks: [], size: 0 };
      state = 'field';
      return;
    }
    if (d.filename !== null && own(rules.files, d.name)) {
      if (!d.filename) throw bad(`file part ${d.name} without a file name`);
      rules.files[d.name](d.filename);
      push(Buffer.concat([delimiter(), block, HEADER_END]));
      state = 'body';
      return;
    }
    if (own(rules.fields, d.name) || own(rules.files, d.name))
      throw bad(`${d.name} must be ${own(rules.files, d.name) ? 'a file' : 'a plain field'}`);
    throw badMultipart(`unknown field ${JSON.stringify(d.name)}`, { field: d.name });
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
