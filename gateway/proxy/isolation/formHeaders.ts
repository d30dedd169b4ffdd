import { AppError } from '../../errors';

/**
 * The header grammar of multipart/form-data bodies, kept to the subset on which the gateway and ComfyUI's parser
 * (aiohttp's multipart.py and `BaseRequest.post()`) provably agree. Everything outside it is refused, never
 * "cleaned": aiohttp honours a first part named `_charset_` (RFC 7578 §4.6), a part-level `charset=`,
 * Content-Transfer-Encoding (base64, quoted-printable), RFC 2231/5987 `name*`/`filename*` (with any charset),
 * continuations (`name*0`), backslash escapes, and strips leading `/` and `\` from quoted values; any one of them
 * would let ComfyUI read a field differently from the value the gateway checked.
 */

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** the charsets under which ComfyUI decodes the bytes exactly as the gateway's UTF-8 decoder does */
const SAFE_CHARSETS = new Set(['utf-8', 'us-ascii']);

/** The refusal for anything in a multipart body outside the agreed grammar. */
export const badMultipart = (why: string, details: Record<string, unknown> = {}) =>
  new AppError(400, 'INVALID_BODY', `Malformed multipart body: ${why}`, details);

/**
 * The `charset` parameters of a Content-Type, found the way aiohttp's parse_mimetype finds them (split on `;`,
 * key lower-cased and trimmed, value trimmed of spaces and quotes), so no spelling hides one from this check.
 */
function charsets(contentType: string): string[] {
  const out: string[] = [];
  for (const item of contentType.split(';').slice(1)) {
    const eq = item.indexOf('=');
    const key = (eq < 0 ? item : item.slice(0, eq)).trim().toLowerCase();
    if (key === 'charset') out.push((eq < 0 ? '' : item.slice(eq + 1)).replace(/^[ "]+|[ "]+$/g, '').toLowerCase());
  }
  return out;
}

/** Refuses a Content-Type naming a charset other than UTF-8/US-ASCII (those decode like the gateway does). */
export function checkCharset(contentType: string): void {
  for (const c of charsets(contentType))
    if (!SAFE_CHARSETS.has(c)) throw badMultipart(`charset "${c}" is not allowed (only utf-8)`, { charset: c });
}

/** The boundary of a multipart/form-data Content-Type, or null when it is not one we accept. */
export function formDataBoundary(contentType: string | undefined): string | null {
  if (!contentType) return null;
  const m = /^\s*multipart\/form-data\s*;(.*)$/i.exec(contentType);
  if (!m) return null;
  if (charsets(contentType).some((c) => !SAFE_CHARSETS.has(c))) return null;
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
 * Parses a Content-Disposition of a form-data part. Parameter names must be plain ASCII tokens without `*`
 * (no RFC 2231/5987 forms); unquoted values must be tokens; quoted values may hold no backslash, no leading `/`
 * and at most one `;` (aiohttp re-joins only one); no parameter may appear twice.
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
  if (quoted) throw badMultipart('unterminated quoted string');
  parts.push(cur);
  if (parts[0].trim().toLowerCase() !== 'form-data') throw badMultipart('part is not form-data');
  const params = new Map<string, string>();
  for (const p of parts.slice(1)) {
    if (!p.trim()) continue; // a trailing `;`: aiohttp skips it too
    const m = /^\s*([^\s=]+)\s*=\s*(?:"([^"]*)"|([^\s";]*))\s*$/.exec(p);
    if (!m || !TOKEN.test(m[1]) || m[1].includes('*')) throw badMultipart('unsupported Content-Disposition parameter');
    const key = m[1].toLowerCase();
    const v = m[2] ?? m[3];
    if (m[2] === undefined && !TOKEN.test(v)) throw badMultipart('unquoted Content-Disposition value that is not a token');
    if (v.includes('\\')) throw badMultipart('escaped characters in Content-Disposition');
    if (v.startsWith('/')) throw badMultipart('Content-Disposition value starting with a slash');
    if (v.split(';').length > 2) throw badMultipart('Content-Disposition value with several semicolons');
    if (params.has(key)) throw badMultipart('duplicate Content-Disposition parameter');
    params.set(key, v);
  }
  const name = params.get('name');
  if (name === undefined) throw badMultipart('part without a name');
  return { name, filename: params.has('filename') ? params.get('filename')! : null };
}

const HEADER_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):([^\u0000-\u0008\u000a-\u001f\u007f]*)$/;

/**
 * Checks one part's header block: only Content-Disposition (exactly once) and Content-Type (at most once, no
 * charset but UTF-8) — what browsers send. Content-Transfer-Encoding and every other header are refused.
 */
export function parsePartHeaders(block: Buffer): { name: string; filename: string | null } {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(block);
  } catch {
    throw badMultipart('part headers are not UTF-8');
  }
  let disposition: string | null = null;
  let contentType: string | null = null;
  for (const line of text.split('\r\n')) {
    const m = HEADER_LINE.exec(line);
    if (!m) throw badMultipart('malformed part header');
    const key = m[1].toLowerCase();
    if (key === 'content-disposition') {
      if (disposition !== null) throw badMultipart('duplicate Content-Disposition');
      disposition = m[2].trim();
    } else if (key === 'content-type') {
      if (contentType !== null) throw badMultipart('duplicate Content-Type');
      contentType = m[2].trim();
      checkCharset(contentType);
    } else if (key === 'content-transfer-encoding') {
      throw badMultipart('Content-Transfer-Encoding is not allowed');
    } else throw badMultipart(`part header ${m[1]} is not allowed`);
  }
  if (disposition === null) throw badMultipart('part without Content-Disposition');
  return parseDisposition(disposition);
}
