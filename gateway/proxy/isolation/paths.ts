import { AppError } from '../../errors';

/**
 * The ONE normaliser for user-supplied file paths (prompt inputs, upload subfolders, /view queries, mask refs).
 *
 * What is refused (400 PATH_NOT_ALLOWED) rather than "cleaned":
 *  - `..` segments anywhere (even when they would resolve inside the user's folder), absolute paths (`/x`, `C:x`),
 *    backslashes, NUL and every other control character;
 *  - percent-encoded dots, slashes, backslashes and NUL (`%2e`, `%2f`, `%5c`, `%00`): ComfyUI does not decode them,
 *    but custom nodes that `unquote()` paths exist, so they never get a chance;
 *  - characters whose Unicode compatibility form is a dot, slash, backslash, colon or percent (fullwidth `．／＼`,
 *    the one-dot leader, small full stop, …) and the common slash look-alikes (`∕ ⁄ ⧸ ⧹`): Linux would store them
 *    literally, but normalising filesystems and Windows "best fit" conversions would not.
 * Empty and `.` segments are dropped (that is what os.path.normpath does too).
 */

/** The file areas ComfyUI serves and writes. */
export type FileType = 'input' | 'output' | 'temp';

/** A file as ComfyUI names it in /view queries, upload answers and node outputs. */
export interface FileRef {
  type: FileType;
  /** `/`-joined normalised subfolder ('' for the area's root) */
  subfolder: string;
  filename: string;
}

const MAX_PATH = 4096;
const LOOKALIKES = new Set([
  '\u2215',
  '\u2044',
  '\u29f8',
  '\u29f9',
  '\u2216',
  '\uff0f',
  '\uff3c',
  '\uff0e',
  '\u2024',
  '\ufe52',
  '\ufe68',
  '\u3002',
  '\uff61',
]);
const PATH_PUNCT = /[./\\:%]/;

/** The refusal every path check throws. */
export function pathNotAllowed(why: string, details: Record<string, unknown> = {}): AppError {
  return new AppError(400, 'PATH_NOT_ALLOWED', `Path not allowed: ${why}`, details);
}

/** True for the area names ComfyUI knows. */
export function isFileType(t: unknown): t is FileType {
  return t === 'input' || t === 'output' || t === 'temp';
}

/** Checks one relative path and returns its segments (no empty, `.` or `..` segment). Throws PATH_NOT_ALLOWED. */
export function splitUserPath(value: string, details: Record<string, unknown> = {}): string[] {
  if (typeof value !== 'string') throw pathNotAllowed('not a string', details);
  if (value.length > MAX_PATH) throw pathNotAllowed('too long', details);
  if (/[\u0000-\u001f\u007f-\u009f]/.test(value)) throw pathNotAllowed('control character', details);
  if (value.includes('\\')) throw pathNotAllowed('backslash', details);
  if (value.startsWith('/') || /^[A-Za-z]:/.test(value)) throw pathNotAllowed('absolute path', details);
  if (/%(2e|2f|5c|00)/i.test(value)) throw pathNotAllowed('percent-encoded path character', details);
  for (const ch of value) {
    if (ch.charCodeAt(0) < 0x80) continue;
    if (LOOKALIKES.has(ch) || PATH_PUNCT.test(ch.normalize('NFKC'))) throw pathNotAllowed('look-alike path character', details);
  }
  const segs: string[] = [];
  for (const s of value.split('/')) {
    if (s === '' || s === '.') continue;
    if (s === '..') throw pathNotAllowed('parent directory', details);
    segs.push(s);
  }
  return segs;
}

/**
 * The segments under the user's own folder: `<user>/…` unless they already start there. For a file (or a save
 * prefix, whose last segment names files) a lone `<user>` is a name in the area's root, so it goes inside too.
 */
export function underUser(user: string, segs: string[], kind: 'dir' | 'file' = 'dir'): string[] {
  return segs[0] === user && (kind === 'dir' || segs.length > 1) ? segs : [user, ...segs];
}

/** Whether a checked file path lies inside the user's folder of an area. */
export function isUnderUser(user: string, segs: string[]): boolean {
  return segs.length >= 2 && segs[0] === user;
}

/**
 * Splits ComfyUI's annotated names (`x.png [output]`) the way folder_paths.annotated_filepath does: it cuts a fixed
 * number of characters, so the rebuilt value must keep the exact suffix it had.
 */
export function parseAnnotated(value: string): { name: string; type: FileType | null; suffix: string } {
  for (const [t, cut] of [
    ['output', 9],
    ['input', 8],
    ['temp', 7],
  ] as const) {
    if (value.endsWith(`[${t}]`))
      return { name: value.slice(0, Math.max(0, value.length - cut)), type: t, suffix: value.slice(Math.max(0, value.length - cut)) };
  }
  return { name: value, type: null, suffix: '' };
}

/** The key a file is indexed under (ledger, permission checks). */
export function fileKey(f: FileRef): string {
  return `${f.type}\u0000${f.subfolder}\u0000${f.filename}`;
}

/**
 * Normalises a file reference the way ComfyUI resolves it (subfolder joined with the file's basename, like /view),
 * refusing tricks. `filename` may carry subdirectories when `keepDirs` (mask refs and loader inputs keep them).
 */
export function normaliseRef(
  type: FileType,
  subfolder: string,
  filename: string,
  opts: { keepDirs?: boolean } = {},
): { ref: FileRef; segs: string[] } {
  const sub = splitUserPath(subfolder);
  const nameSegs = splitUserPath(filename);
  if (!nameSegs.length) throw pathNotAllowed('empty file name');
  const fileSegs = opts.keepDirs ? nameSegs : nameSegs.slice(-1);
  const segs = [...sub, ...fileSegs];
  return { ref: { type, subfolder: segs.slice(0, -1).join('/'), filename: segs[segs.length - 1] }, segs };
}
