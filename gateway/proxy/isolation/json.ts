import { isSafeNumber, LosslessNumber, parse, stringify } from 'lossless-json';
import { AppError } from '../../errors';

/**
 * The one JSON reader for bodies the gateway decides on and forwards (prompts, queue/history edits, mask refs).
 * ComfyUI reads them with Python's json, so the gateway must see the value Python will use, and forward exactly
 * what it checked:
 *  - numbers keep their exact text (a 64-bit seed, `1.0`, `1e400`): a number whose text a JS double would change
 *    stays a LosslessNumber and is written back as it came;
 *  - a key given twice with different values is refused (Python keeps the last, JS parsers differ; either way the
 *    sender meant two things);
 *  - NaN / Infinity (Python accepts them, JSON does not), a byte-order mark (Python refuses it), bytes that are not
 *    UTF-8, and nesting deeper than MAX_JSON_DEPTH (Python's recursion limit would 500) are refused.
 * Every refusal is 400 INVALID_BODY.
 */

/** The deepest nesting of arrays/objects accepted (workflows need a few dozen; Python fails near 1000). */
export const MAX_JSON_DEPTH = 128;

const invalid = (why: string) => new AppError(400, 'INVALID_BODY', `The body must be valid JSON: ${why}`);

/** Keeps a number as a JS number only when writing it back gives the same text. */
function number(text: string): number | LosslessNumber {
  if (isSafeNumber(text)) {
    const n = Number(text);
    if (String(n) === text) return n;
  }
  return new LosslessNumber(text);
}

/** The deepest nesting in a JSON text (strings skipped); stops counting once past the limit. */
function depth(text: string): number {
  let d = 0;
  let max = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      // skip the string, honouring backslash escapes
      for (i++; i < text.length && text.charCodeAt(i) !== 0x22; i++) if (text.charCodeAt(i) === 0x5c) i++;
    } else if (c === 0x5b || c === 0x7b) {
      if (++d > max && (max = d) > MAX_JSON_DEPTH) return max;
    } else if (c === 0x5d || c === 0x7d) d--;
  }
  return max;
}

/** Parses JSON text or UTF-8 bytes the way described above; throws 400 INVALID_BODY. */
export function parseJson(input: Buffer | string): unknown {
  let text: string;
  if (typeof input === 'string') text = input;
  else {
    try {
      text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(input);
    } catch {
      throw invalid('the body is not UTF-8');
    }
  }
  if (text.charCodeAt(0) === 0xfeff) throw invalid('it starts with a byte-order mark');
  if (depth(text) > MAX_JSON_DEPTH) throw invalid(`nested deeper than ${MAX_JSON_DEPTH} levels`);
  try {
    return parse(text, null, number);
  } catch (e) {
    const msg = (e as Error).message ?? '';
    if (/duplicate key/i.test(msg)) throw invalid(msg.replace(/ encountered.*$/, ' given twice with different values'));
    if (/\b(NaN|Infinity)\b/.test(text) && /got '[NI-]'/.test(msg)) throw invalid('NaN and Infinity are not JSON');
    throw invalid(msg.slice(0, 200) || 'syntax error');
  }
}

/** Writes a value read by parseJson back out, numbers exactly as they came. */
export function stringifyJson(value: unknown): string {
  return stringify(value) ?? 'null';
}

/** True for a number parseJson kept as text (too big, too precise, or spelled unlike a JS number). */
export const isLosslessNumber = (v: unknown): v is LosslessNumber => v instanceof LosslessNumber;
