/**
 * A faithful fake of ComfyUI's aiohttp server (server.py + app/user_manager.py + internal routes +
 * the ComfyUI-Manager extension's routes) for tests. Plain node:http + ws, no framework, so that it has
 * no behaviour of its own beyond what is written here.
 *
 * Fidelity notes (real ComfyUI behaviour that is reproduced on purpose):
 *  - every route answers at `/x` and `/api/x`, except static files (/index.html, /extensions/**, /scripts/**)
 *    and `/internal/*` (a sub-app in server.py, never prefixed);
 *  - the path is percent-decoded before routing (except %2F / %25), like aiohttp's `path_safe`, so
 *    `/%61pi/prompt` reaches `/api/prompt`; `{param}` values are fully decoded;
 *  - OPTIONS answers 200 with an empty body on ANY path (origin middleware), known path + wrong method is 405;
 *  - JSON is serialised like Python's json.dumps (", " / ": " separators, ensure_ascii);
 *  - WebSocket: a reused clientId takes over the socket map entry; the superseded socket stays open but gets
 *    nothing (neither targeted nor broadcast events); when ANY socket of a sid closes, the sid is popped from the
 *    map (so closing the superseded socket also detaches the newer one - a real ComfyUI quirk);
 *  - prompt events: per-node events (`executing`, `progress`, previews, `executed`) go to the prompt's client_id,
 *    or to every socket when the prompt has no client_id; the lifecycle messages `execution_start`,
 *    `execution_cached`, `execution_success`, `execution_error` and the final `executing {node:null}` are only
 *    sent when the prompt has a client_id (PromptExecutor.add_message(broadcast=False) + main.py);
 *    `execution_interrupted` is broadcast when there is no client_id; `status` is always broadcast;
 *  - SaveImage counter / subfolder logic follows folder_paths.get_save_image_path; PNGs carry tEXt `prompt`
 *    and extra_pnginfo (`workflow`) metadata like the real SaveImage.
 *  - `legacy: true` is mid-2024 ComfyUI (7914c47) as the conformance suite saw it: its own prompt ids, no
 *    /internal/*, no version/argv in /system_stats, execution_start before the POST /prompt answer, and a
 *    userdata save/move without `?overwrite` is a 500; without --multi-user every request uses the `default` user;
 * Deliberately STRICTER than real ComfyUI:
 *  - any node validation error rejects the whole prompt (real only rejects when no output is valid);
 *  - SaveImage prefixes escaping the output dir are rejected at POST /prompt (real fails at execution);
 *  - LoadImage rejects `..`, absolute paths and anything resolving outside its dir (real only checks existence);
 *  - uploads: a subfolder or file name (directories allowed, as real) that leaves the type's folder is 400; bad
 *    `type` is 400 (real: 500). Form fields are decoded as aiohttp does (`_charset_`, part charset, base64 /
 *    quoted-printable transfer encodings, RFC 5987 `name*`/`filename*`), so the fake is as exploitable as real;
 *  - malformed JSON bodies are 400 (real: 500); unknown `comfy-user` is 401 (real: 500 / 403);
 *  - /view and uploads also reject paths whose realpath escapes the type dir (symlinks);
 *  - the body-size limit (413) applies to every route, not only those reading the body.
 * Deliberately the WORST CASE for the gateway (older ComfyUI releases): `/view` and `GET /userdata/{file}` serve
 * HTML / SVG / JS inline with their real content type, without `nosniff` or `Content-Disposition: attachment`.
 */
import * as http from 'node:http';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';
import * as os from 'node:os';
import * as crypto from 'node:crypto';
import { Readable } from 'node:stream';
import type { Duplex } from 'node:stream';
import { WebSocketServer, WebSocket } from 'ws';
import iconv from 'iconv-lite';
import { makePng } from './png';

// ───────────────────────────────────────────── public API ─────────────────────────────────────────────

export interface RecordedRequest {
  method: string;
  /** exactly req.url as received */
  rawPath: string;
  headers: Record<string, string | string[] | undefined>;
  /** sha256 hex of the request body; '' until the body has been fully received */
  bodySha256: string;
  bodyLength: number;
  at: number;
  ws?: boolean;
  rawHeaders?: string[];
  remoteAddress?: string;
  /** true once the body has been fully read (and bodySha256 is final) */
  complete?: boolean;
  /** the body as UTF-8 text, for complete bodies up to 64 kB (what the gateway really sent) */
  bodyText?: string;
  /** true when the request was refused with 413 (body not read further) */
  tooLarge?: boolean;
  /** true when the client went away before the body was complete */
  aborted?: boolean;
}

export interface FakeComfyOptions {
  port?: number; // 0 default
  /** default: fresh mkdtemp; contains input/ output/ temp/ models/{checkpoints,loras,vae,...}/ user/ custom_nodes/ */
  baseDir?: string;
  multiUser?: boolean; // default true
  host?: string; // '127.0.0.1'
  /** max request body size in bytes (ComfyUI's --max-upload-size); default 1 GiB */
  maxUploadSize?: number;
  /** how long a prompt "runs" (default 50 ms) */
  promptDelayMs?: number;
  /** initial users for --multi-user mode: { user_id: username } (merged with users.json if present) */
  users?: Record<string, string>;
  /** write dummy model files (fake_model.safetensors, ...) if missing; default true */
  seedModels?: boolean;
  /**
   * Behave like mid-2024 ComfyUI (commit 7914c47), as seen against the real server: a client-chosen prompt_id is
   * ignored (the server makes its own), there are no /internal/* routes (404), /system_stats has no
   * comfyui_version, argv or RAM, a prompt's execution_start reaches its socket before POST /prompt is answered, and
   * LoadImage/LoadAudio list only the top level of input/ (os.listdir).
   */
  legacy?: boolean;
  /** the argv /system_stats reports (newer servers only); default ['main.py', '--listen'(, '--multi-user')] */
  argv?: string[];
}

export interface WsClientInfo {
  clientId: string;
  sid: string;
  /** whether this socket is the one registered for its sid (receives events) */
  active: boolean;
  rawPath: string;
}

export interface FakeComfy {
  url: string; // http://127.0.0.1:PORT
  port: number;
  baseDir: string;
  inputDir: string;
  outputDir: string;
  tempDir: string;
  modelsDir: string;
  userDir: string;
  requests: RecordedRequest[]; // every HTTP request and WS upgrade received, in order of arrival
  clearRequests(): void;
  /**
   * Slows answers down, for timeout tests: requests to `path` (decoded, either `/api` twin; any method unless given)
   * wait `beforeHeadersMs` before being handled — `null` holds them unanswered until `clearStalls()` — and a
   * `/view` body stops for `midBodyMs` after its first half.
   */
  stall(rule: StallRule): void;
  clearStalls(): void;
  wsClients(): WsClientInfo[]; // currently connected sockets
  prompts: Map<string, any>; // prompt_id -> stored prompt entry (queue/history)
  /** users of --multi-user mode: { user_id: username } */
  users: Record<string, string>;
  sendWs(clientId: string | null, msg: object): void; // null = broadcast
  sendWsBinary(clientId: string | null, buf: Buffer): void;
  stop(): Promise<void>; // close server + all sockets; queue/history are lost like a real restart
  start(): Promise<void>; // listen again on the SAME port
  close(): Promise<void>; // final teardown; removes the temp baseDir if it created it
  promptDelayMs: number;
  maxUploadSize: number;
  /** resolves when the prompt reached history (success, error or interrupted) */
  waitForPrompt(promptId: string, timeoutMs?: number): Promise<any>;
  /** resolves with the stored prompt once it arrived (the gateway's queue may hold it a moment first) */
  arrival(promptId: string, timeoutMs?: number): Promise<any>;
}

/** One rule of FakeComfy.stall. */
export interface StallRule {
  path: string;
  method?: string;
  beforeHeadersMs?: number | null;
  midBodyMs?: number;
  /** with `beforeHeadersMs: null`: clearStalls() lets the held requests be handled (in arrival order), not dropped */
  thenHandle?: boolean;
}

export interface FakeRoute {
  method: string;
  path: string;
  /** false when the route has no `/api` twin (static files, /internal/*) */
  apiTwin: boolean;
  static?: boolean;
}

// ───────────────────────────────────────────── helpers ─────────────────────────────────────────────

const SPOOL_MEM_LIMIT = 1024 * 1024;
const MAX_FIELD_SIZE = 1024 * 1024;
const WS_MAX_PAYLOAD = 4 * 1024 * 1024;
const SERVER_HEADER = 'Python/3.11 aiohttp/3.9.5';
const SENSITIVE_EXTRA_DATA_KEYS = ['auth_token_comfy_org', 'api_key_comfy_org'];
const EMPTY_SHA256 = crypto.createHash('sha256').digest('hex');

class HttpError extends Error {
  constructor(
    public status: number,
    public body: string | object | null = null,
  ) {
    super(`HTTP ${status}`);
  }
}

class UnknownUserError extends Error {}
class InterruptedError extends Error {}
class StoppedError extends Error {}

function isObj(v: unknown): v is Record<string, any> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Python json.dumps(...) with default separators and ensure_ascii=True. */
export function pyJson(v: unknown): string {
  if (v === null || v === undefined) return 'null';
  switch (typeof v) {
    case 'string':
      return pyStr(v);
    case 'number':
      if (Number.isNaN(v)) return 'NaN';
      if (!Number.isFinite(v)) return v > 0 ? 'Infinity' : '-Infinity';
      return String(v);
    case 'boolean':
      return v ? 'true' : 'false';
    case 'bigint':
      return v.toString();
    case 'object': {
      if (Array.isArray(v)) return '[' + v.map((x) => pyJson(x)).join(', ') + ']';
      const parts: string[] = [];
      for (const [k, x] of Object.entries(v as object)) {
        if (x === undefined || typeof x === 'function') continue;
        parts.push(pyStr(k) + ': ' + pyJson(x));
      }
      return '{' + parts.join(', ') + '}';
    }
    default:
      return 'null';
  }
}

function pyStr(s: string): string {
  return JSON.stringify(s).replace(/[^\x20-\x7e]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
}

function uuid4(): string {
  return crypto.randomUUID();
}

function uuidHex(): string {
  return crypto.randomUUID().replace(/-/g, '');
}

/** Decode %XX escapes into UTF-8 text; `keep` lists byte values whose escapes stay encoded. */
function percentDecode(s: string, keep: number[] = []): string {
  if (!s.includes('%')) return s;
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === '%' && i + 2 < s.length && /^[0-9a-fA-F]{2}$/.test(s.slice(i + 1, i + 3))) {
      const b = parseInt(s.slice(i + 1, i + 3), 16);
      if (keep.includes(b)) {
        for (const ch of '%' + s.slice(i + 1, i + 3).toUpperCase()) bytes.push(ch.charCodeAt(0));
      } else bytes.push(b);
      i += 2;
    } else {
      for (const b of Buffer.from(c, 'utf8')) bytes.push(b);
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

// --- python os.path (posix) ---
function pyNormpath(p: string): string {
  if (p === '') return '.';
  const initial = p.startsWith('/') ? (p.startsWith('//') && !p.startsWith('///') ? 2 : 1) : 0;
  const out: string[] = [];
  for (const c of p.split('/')) {
    if (c === '' || c === '.') continue;
    if (c !== '..' || (!initial && out.length === 0) || (out.length > 0 && out[out.length - 1] === '..')) out.push(c);
    else if (out.length > 0) out.pop();
  }
  let r = out.join('/');
  if (initial) r = '/'.repeat(initial) + r;
  return r || '.';
}
function pyJoin(a: string, ...rest: string[]): string {
  let p = a;
  for (const b of rest) {
    if (b.startsWith('/')) p = b;
    else if (p === '' || p.endsWith('/')) p += b;
    else p += '/' + b;
  }
  return p;
}
function pyDirname(p: string): string {
  const i = p.lastIndexOf('/') + 1;
  let head = p.slice(0, i);
  if (head && head !== '/'.repeat(head.length)) head = head.replace(/\/+$/, '');
  return head;
}
function pyBasename(p: string): string {
  return p.slice(p.lastIndexOf('/') + 1);
}
function pySplitext(p: string): [string, string] {
  const base = pyBasename(p);
  const dot = base.lastIndexOf('.');
  let lead = 0;
  while (lead < base.length && base[lead] === '.') lead++;
  if (dot <= lead - 1 || dot === -1 || dot < lead) return [p, ''];
  const cut = p.length - (base.length - dot);
  return [p.slice(0, cut), p.slice(cut)];
}
function isInside(dir: string, p: string): boolean {
  const d = path.resolve(dir);
  const q = path.resolve(p);
  return q === d || q.startsWith(d.endsWith('/') ? d : d + '/');
}
/** Stricter check: also the realpath of the deepest existing ancestor must stay inside dir. */
function realInside(dir: string, p: string): boolean {
  if (!isInside(dir, p)) return false;
  let cur = path.resolve(p);
  let realDir: string;
  try {
    realDir = fs.realpathSync(dir);
  } catch {
    return false;
  }
  for (;;) {
    try {
      const r = fs.realpathSync(cur);
      return isInside(realDir, r);
    } catch {
      const parent = path.dirname(cur);
      if (parent === cur) return false;
      cur = parent;
    }
  }
}

function pyInt(s: string): number | null {
  return /^\s*[+-]?\d+\s*$/.test(s) ? parseInt(s, 10) : null;
}

async function sha256File(file: string): Promise<string> {
  const h = crypto.createHash('sha256');
  for await (const chunk of fs.createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

async function moveFile(src: string, dst: string): Promise<void> {
  try {
    await fsp.rename(src, dst);
  } catch (e: any) {
    if (e?.code !== 'EXDEV') throw e;
    await fsp.copyFile(src, dst);
    await fsp.unlink(src);
  }
}

function walkFiles(root: string, opts: { includeHidden?: boolean } = {}): string[] {
  const out: string[] = [];
  const rec = (dir: string, rel: string) => {
    let ents: fs.Dirent[];
    try {
      ents = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of ents) {
      if (!opts.includeHidden && e.name.startsWith('.')) continue;
      const abs = path.join(dir, e.name);
      const r = rel ? rel + '/' + e.name : e.name;
      let isDir = e.isDirectory();
      let isFile = e.isFile();
      if (e.isSymbolicLink()) {
        try {
          const st = fs.statSync(abs);
          isDir = st.isDirectory();
          isFile = st.isFile();
        } catch {
          continue;
        }
      }
      if (isDir) rec(abs, r);
      else if (isFile) out.push(r);
    }
  };
  rec(root, '');
  return out.sort();
}

const IMAGE_EXT = new Set(['.png', '.jpg', '.jpeg', '.webp', '.gif', '.bmp', '.tif', '.tiff', '.avif', '.svg']);
const AUDIO_VIDEO_EXT = new Set(['.wav', '.mp3', '.ogg', '.flac', '.m4a', '.aac', '.opus', '.mp4', '.webm', '.mov', '.mkv']);
const PT_EXT = ['.ckpt', '.pt', '.pt2', '.bin', '.pth', '.safetensors', '.pkl', '.sft'];

const MIME: Record<string, string> = {
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.webp': 'image/webp',
  '.gif': 'image/gif',
  '.svg': 'image/svg+xml',
  '.html': 'text/html',
  '.htm': 'text/html',
  '.json': 'application/json',
  '.js': 'application/javascript',
  '.css': 'text/css',
  '.txt': 'text/plain',
  '.mp4': 'video/mp4',
  '.webm': 'video/webm',
  '.wav': 'audio/x-wav',
  '.mp3': 'audio/mpeg',
  '.flac': 'audio/flac',
};
function mimeOf(file: string): string {
  return MIME[path.extname(file).toLowerCase()] ?? 'application/octet-stream';
}
/** header values must be latin1 for node; aiohttp sends UTF-8 bytes, so do the same */
function latin1Header(v: string): string {
  return Buffer.from(v, 'utf8').toString('latin1');
}

// ───────────────────────────────────────────── body spooling ─────────────────────────────────────────────

interface Body {
  length: number;
  sha256: string;
  buf?: Buffer;
  file?: string;
}

function bodyStream(b: Body): Readable {
  if (b.file) return fs.createReadStream(b.file, { highWaterMark: 1024 * 1024 });
  return Readable.from(b.buf && b.buf.length ? [b.buf] : []);
}

async function bodyBuffer(b: Body): Promise<Buffer> {
  if (b.file) return fsp.readFile(b.file);
  return b.buf ?? Buffer.alloc(0);
}

async function bodyJson(b: Body): Promise<any> {
  const text = (await bodyBuffer(b)).toString('utf8');
  try {
    return JSON.parse(text);
  } catch (e: any) {
    throw new HttpError(400, {
      error: { type: 'invalid_json', message: 'Invalid JSON body', details: String(e?.message ?? e), extra_info: {} },
    });
  }
}

// ───────────────────────────────────────────── multipart ─────────────────────────────────────────────

interface MultipartFile {
  filename: string;
  file: string;
  size: number;
  sha256: string;
  contentType: string;
}
interface Multipart {
  fields: Map<string, string>;
  files: Map<string, MultipartFile>;
  tmpFiles: string[];
}

/** Decodes bytes the way Python's bytes.decode(charset) would (UTF-7, UTF-16, Latin-1, …); unknown charsets throw. */
function decodeCharset(data: Buffer, charset: string): string {
  const c = charset.trim().toLowerCase();
  if (c === 'utf-8' || c === 'utf8') return new TextDecoder('utf-8', { fatal: true }).decode(data);
  if (!iconv.encodingExists(c)) throw new HttpError(500, `unknown charset ${charset}`);
  return iconv.decode(data, c);
}

/** Undoes a Content-Transfer-Encoding the way aiohttp's BodyPartReader does (base64, quoted-printable). */
function decodeTransfer(data: Buffer, cte: string | undefined): Buffer {
  const e = (cte ?? '').trim().toLowerCase();
  if (!e || e === 'binary' || e === '8bit' || e === '7bit') return data;
  if (e === 'base64') return Buffer.from(data.toString('latin1').replace(/\s+/g, ''), 'base64');
  if (e === 'quoted-printable') {
    return Buffer.from(
      data
        .toString('latin1')
        .replace(/=\r?\n/g, '')
        .replace(/=([0-9A-Fa-f]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16))),
      'latin1',
    );
  }
  throw new HttpError(500, `unknown content transfer encoding ${cte}`);
}

function parseHeaderParams(v: string): { value: string; params: Record<string, string> } {
  const semi = v.indexOf(';');
  const value = (semi === -1 ? v : v.slice(0, semi)).trim().toLowerCase();
  const params: Record<string, string> = {};
  if (semi !== -1) {
    const re = /([^\s=;]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))/g;
    const rest = v.slice(semi + 1);
    let m: RegExpExecArray | null;
    while ((m = re.exec(rest))) {
      const key = m[1].toLowerCase();
      // like aiohttp: quoted values lose leading slashes and backslashes, then backslash escapes
      const val = m[2] !== undefined ? m[2].replace(/^[\\/]+/, '').replace(/\\(.)/g, '$1') : (m[3] ?? '').trim();
      if (!(key in params)) params[key] = val;
    }
  }
  // like aiohttp's content_disposition_filename: an RFC 5987 `name*` / `filename*` (any charset) wins
  for (const k of ['name', 'filename']) {
    const m = params[`${k}*`] !== undefined ? /^([^']*)'[^']*'(.*)$/.exec(params[`${k}*`]) : null;
    if (m) {
      try {
        params[k] = decodeCharset(Buffer.from(unescape(m[2]), 'latin1'), m[1] || 'utf-8');
      } catch {
        /* keep the plain parameter */
      }
    }
  }
  return { value, params };
}

async function parseMultipart(src: Readable, boundary: string, stagingDir: string): Promise<Multipart> {
  const result: Multipart = { fields: new Map(), files: new Map(), tmpFiles: [] };
  const delim = Buffer.from('\r\n--' + boundary, 'latin1');
  let buf: Buffer = Buffer.from('\r\n'); // so the very first boundary also matches `\r\n--boundary`
  type State = 'preamble' | 'after' | 'headers' | 'body' | 'done';
  let state = 'preamble' as State;
  let cur: {
    name: string;
    filename?: string;
    contentType: string;
    cte?: string;
    explicitType: boolean;
    chunks?: Buffer[];
    size: number;
    ws?: fs.WriteStream;
    file?: string;
    hash?: crypto.Hash;
  } | null = null;
  // aiohttp (RFC 7578 §4.6): a first part named `_charset_` sets the charset of every later text field
  let partIndex = 0;
  let defaultCharset: string | null = null;

  const write = (ws: fs.WriteStream, data: Buffer) =>
    new Promise<void>((resolve, reject) => {
      ws.write(data, (err) => (err ? reject(err) : resolve()));
    });
  const emit = async (data: Buffer) => {
    if (!cur || data.length === 0) return;
    cur.size += data.length;
    if (cur.ws) {
      cur.hash!.update(data);
      await write(cur.ws, data);
    } else {
      if (cur.size > MAX_FIELD_SIZE) throw new HttpError(400, 'multipart field too large');
      cur.chunks!.push(Buffer.from(data));
    }
  };
  const finishPart = async () => {
    if (!cur) return;
    const c = cur;
    cur = null;
    if (c.ws) {
      await new Promise<void>((resolve, reject) => c.ws!.end((err?: Error | null) => (err ? reject(err) : resolve())));
      if (!result.files.has(c.name) && !result.fields.has(c.name)) {
        result.files.set(c.name, {
          filename: c.filename!,
          file: c.file!,
          size: c.size,
          sha256: c.hash!.digest('hex'),
          contentType: c.contentType,
        });
      }
    } else {
      const data = decodeTransfer(Buffer.concat(c.chunks!), c.cte);
      if (partIndex === 1 && c.name === '_charset_') {
        defaultCharset = data.toString('latin1').trim();
        return;
      }
      if (result.fields.has(c.name) || result.files.has(c.name)) return;
      const charsetParam = /;\s*charset\s*=\s*"?([^";\s]+)"?/i.exec(c.contentType)?.[1];
      const text = !c.explicitType || c.contentType.startsWith('text/');
      result.fields.set(c.name, text ? decodeCharset(data, charsetParam ?? defaultCharset ?? 'utf-8') : data.toString('latin1'));
    }
  };
  const startPart = async (headerText: string) => {
    const headers: Record<string, string> = {};
    for (const line of headerText.split('\r\n')) {
      if (!line) continue;
      const i = line.indexOf(':');
      if (i <= 0) throw new HttpError(400, 'malformed multipart header');
      const key = line.slice(0, i).trim().toLowerCase();
      if (!(key in headers)) headers[key] = line.slice(i + 1).trim(); // aiohttp's CIMultiDict.get: the first wins
    }
    const cd = headers['content-disposition'];
    if (!cd) throw new HttpError(400, 'multipart part without Content-Disposition');
    const { value, params } = parseHeaderParams(cd);
    if (value !== 'form-data' || params.name === undefined) throw new HttpError(400, 'bad Content-Disposition');
    const contentType = headers['content-type'] ?? 'text/plain';
    const cte = headers['content-transfer-encoding'];
    const explicitType = headers['content-type'] !== undefined;
    partIndex++;
    if (params.filename) {
      const file = path.join(stagingDir, 'part-' + crypto.randomBytes(8).toString('hex'));
      result.tmpFiles.push(file);
      const ws = fs.createWriteStream(file);
      ws.on('error', () => {});
      cur = {
        name: params.name,
        filename: params.filename,
        contentType,
        cte,
        explicitType,
        size: 0,
        ws,
        file,
        hash: crypto.createHash('sha256'),
      };
    } else {
      cur = { name: params.name, contentType, cte, explicitType, size: 0, chunks: [] };
    }
  };

  const step = async () => {
    for (;;) {
      if (state === 'preamble' || state === 'body') {
        const idx = buf.indexOf(delim);
        if (idx >= 0) {
          if (state === 'body') {
            await emit(buf.subarray(0, idx));
            await finishPart();
          }
          buf = buf.subarray(idx + delim.length);
          state = 'after';
          continue;
        }
        const keep = Math.min(buf.length, delim.length - 1);
        if (state === 'body') await emit(buf.subarray(0, buf.length - keep));
        buf = buf.subarray(buf.length - keep);
        return;
      }
      if (state === 'after') {
        if (buf.length < 2) return;
        const two = buf.toString('latin1', 0, 2);
        if (two === '--') {
          state = 'done';
          return;
        }
        if (two !== '\r\n') throw new HttpError(400, 'malformed multipart boundary');
        buf = buf.subarray(2);
        state = 'headers';
        continue;
      }
      if (state === 'headers') {
        if (buf.length >= 2 && buf[0] === 0x0d && buf[1] === 0x0a) {
          await startPart('');
          buf = buf.subarray(2);
          state = 'body';
          continue;
        }
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) {
          if (buf.length > 16 * 1024) throw new HttpError(400, 'multipart headers too large');
          return;
        }
        await startPart(buf.toString('utf8', 0, end));
        buf = buf.subarray(end + 4);
        state = 'body';
        continue;
      }
      return; // done
    }
  };

  try {
    for await (const chunk of src) {
      if (state === 'done') continue;
      buf = buf.length ? Buffer.concat([buf, chunk as Buffer]) : (chunk as Buffer);
      await step();
    }
    await step();
    if (state !== 'done') throw new HttpError(400, 'truncated multipart body');
  } catch (e) {
    const c = cur as { ws?: fs.WriteStream } | null;
    if (c?.ws) c.ws.destroy();
    await cleanupMultipart(result);
    throw e;
  }
  return result;
}

async function cleanupMultipart(m: Multipart): Promise<void> {
  for (const f of m.tmpFiles) await fsp.rm(f, { force: true }).catch(() => {});
}

// ───────────────────────────────────────────── node definitions ─────────────────────────────────────────────

const SAMPLERS = ['euler', 'euler_ancestral', 'heun', 'dpm_2', 'dpmpp_2m', 'dpmpp_sde', 'lcm', 'ddim', 'uni_pc'];
const SCHEDULERS = ['normal', 'karras', 'exponential', 'sgm_uniform', 'simple', 'ddim_uniform', 'beta'];

interface NodeDef {
  input: { required: Record<string, any>; optional?: Record<string, any>; hidden?: Record<string, any> };
  output: string[];
  output_name?: string[];
  category: string;
  output_node?: boolean;
  display_name?: string;
  description?: string;
}

interface ModelFolder {
  name: string;
  paths: string[];
  exts: string[];
}

// ───────────────────────────────────────────── prompt store ─────────────────────────────────────────────

export interface StoredPrompt {
  prompt_id: string;
  number: number;
  prompt: Record<string, any>;
  extra_data: Record<string, any>;
  outputs_to_execute: string[];
  client_id: unknown; // extra_data.client_id (any JSON value, like real) or null
  state: 'pending' | 'running' | 'success' | 'error' | 'interrupted';
  seq: number;
  create_time: number;
  start_time?: number;
  end_time?: number;
  outputs: Record<string, any>;
  messages: [string, any][];
  meta: Record<string, any>;
  interrupt?: boolean;
  /** the history entry, once finished */
  history?: any;
  /** queue tuple [number, prompt_id, prompt, extra_data, outputs_to_execute] */
  queueItem(): any[];
}

// ───────────────────────────────────────────── routes ─────────────────────────────────────────────

interface Ctx {
  req: http.IncomingMessage;
  res: http.ServerResponse;
  method: string;
  path: string; // safe-decoded
  query: URLSearchParams;
  params: Record<string, string>;
  body: Body;
  head: boolean;
}
type Handler = (s: FakeComfyServer, c: Ctx) => Promise<void> | void;
interface RouteDef extends FakeRoute {
  handler: Handler;
  segs: string[];
}

const MANAGER_ROUTES: [string, string][] = [
  ['GET', '/manager/version'],
  ['GET', '/manager/reboot'],
  ['POST', '/manager/reboot'],
  ['GET', '/manager/db_mode'],
  ['POST', '/manager/db_mode'],
  ['GET', '/manager/preview_method'],
  ['POST', '/manager/preview_method'],
  ['GET', '/manager/channel_url_list'],
  ['POST', '/manager/channel_url_list'],
  ['GET', '/manager/share_option'],
  ['POST', '/manager/share_option'],
  ['GET', '/manager/notice'],
  ['GET', '/manager/policy/update'],
  ['POST', '/manager/policy/update'],
  ['GET', '/manager/is_legacy_manager_ui'],
  ['GET', '/manager/queue/status'],
  ['GET', '/manager/queue/start'],
  ['POST', '/manager/queue/start'],
  ['GET', '/manager/queue/reset'],
  ['POST', '/manager/queue/reset'],
  ['GET', '/manager/queue/update_all'],
  ['POST', '/manager/queue/update_all'],
  ['GET', '/manager/queue/update_comfyui'],
  ['POST', '/manager/queue/update_comfyui'],
  ['POST', '/manager/queue/install'],
  ['POST', '/manager/queue/uninstall'],
  ['POST', '/manager/queue/update'],
  ['POST', '/manager/queue/fix'],
  ['POST', '/manager/queue/disable'],
  ['POST', '/manager/queue/reinstall'],
  ['POST', '/manager/queue/install_model'],
  ['POST', '/manager/queue/batch'],
  ['POST', '/manager/component/save'],
  ['POST', '/manager/component/loads'],
  ['GET', '/customnode/getlist'],
  ['GET', '/customnode/getmappings'],
  ['GET', '/customnode/fetch_updates'],
  ['GET', '/customnode/alternatives'],
  ['GET', '/customnode/installed'],
  ['POST', '/customnode/install'],
  ['POST', '/customnode/uninstall'],
  ['POST', '/customnode/update'],
  ['POST', '/customnode/fix'],
  ['POST', '/customnode/toggle_active'],
  ['POST', '/customnode/disable'],
  ['POST', '/customnode/install/git_url'],
  ['POST', '/customnode/install/pip'],
  ['POST', '/customnode/import_fail_info'],
  ['GET', '/snapshot/getlist'],
  ['GET', '/snapshot/get_current'],
  ['GET', '/snapshot/save'],
  ['POST', '/snapshot/save'],
  ['GET', '/snapshot/remove'],
  ['GET', '/snapshot/restore'],
  ['POST', '/snapshot/restore'],
  ['GET', '/externalmodel/getlist'],
  ['POST', '/model/install'],
  ['GET', '/comfyui_manager/comfyui_versions'],
  ['GET', '/comfyui_manager/comfyui_switch_version'],
  ['POST', '/comfyui_manager/comfyui_switch_version'],
];

function managerHandler(p: string): Handler {
  return (s, c) => {
    const base = p.replace(/^\/v2/, '');
    if (base === '/manager/version') return s.json(c, 'V3.30-fake');
    if (base === '/manager/reboot') return s.json(c, { rebooting: true, fake: true });
    if (base.endsWith('/getlist')) return s.json(c, { channel: 'default', node_packs: {}, items: [], fake: true });
    return s.json(c, { ok: true, fake: 'comfyui-manager', route: p });
  };
}

function defineRoutes(): RouteDef[] {
  const defs: RouteDef[] = [];
  const add = (method: string, p: string, handler: Handler, apiTwin = true, isStatic = false) => {
    defs.push({ method, path: p, handler, apiTwin, static: isStatic || undefined, segs: p.split('/').slice(1) });
  };
  // server.py
  add('GET', '/ws', (s, c) => s.sendText(c, 400, 'No WebSocket UPGRADE hdr: None\n Can "Upgrade" only to "WebSocket".'));
  add('GET', '/', (s, c) => s.index(c));
  add('GET', '/embeddings', (s, c) =>
    s.json(
      c,
      s.listModels('embeddings').map((f) => pySplitext(f)[0]),
    ),
  );
  add('GET', '/models', (s, c) =>
    s.json(
      c,
      s.modelFolders().map((f) => f.name),
    ),
  );
  add('GET', '/models/{folder}', (s, c) => {
    const f = s.modelFolders().find((x) => x.name === c.params.folder);
    if (!f) return s.sendEmpty(c, 404);
    return s.json(c, s.listModels(f.name));
  });
  add('GET', '/extensions', (s, c) => s.json(c, ['/extensions/core/fakeExtension.js', '/extensions/fake-node-pack/main.js']));
  add('POST', '/upload/image', (s, c) => s.upload(c, false));
  add('POST', '/upload/mask', (s, c) => s.upload(c, true));
  add('GET', '/view', (s, c) => s.view(c));
  add('GET', '/view_metadata/{folder_name}', (s, c) => s.viewMetadata(c));
  add('GET', '/system_stats', (s, c) => s.json(c, s.systemStats()));
  add('GET', '/features', (s, c) => s.json(c, s.featureFlags()));
  add('GET', '/prompt', (s, c) => s.json(c, s.queueInfo()));
  add('POST', '/prompt', (s, c) => s.postPrompt(c));
  add('GET', '/object_info', (s, c) => s.json(c, s.objectInfo()));
  add('GET', '/object_info/{node_class}', (s, c) => {
    const all = s.objectInfo();
    const k = c.params.node_class;
    return s.json(c, Object.prototype.hasOwnProperty.call(all, k) ? { [k]: all[k] } : {});
  });
  add('GET', '/history', (s, c) => s.getHistory(c));
  add('GET', '/history/{prompt_id}', (s, c) => {
    const e = s.history.get(c.params.prompt_id);
    return s.json(c, e ? { [c.params.prompt_id]: e.history } : {});
  });
  add('POST', '/history', (s, c) => s.postHistory(c));
  add('GET', '/queue', (s, c) => s.json(c, s.queueState()));
  add('POST', '/queue', (s, c) => s.postQueue(c));
  add('POST', '/interrupt', (s, c) => s.postInterrupt(c));
  add('POST', '/free', async (s, c) => {
    const j = await bodyJson(c.body);
    if (!isObj(j)) throw new HttpError(400, 'expected a JSON object');
    s.freeRequests.push(j);
    return s.sendEmpty(c, 200);
  });
  // newer ComfyUI registers these as "/api/jobs" on PromptServer.routes, so the twin is "/api/api/jobs"
  add('GET', '/api/jobs', (s, c) => s.listJobs(c));
  add('GET', '/api/jobs/{job_id}', (s, c) => s.getJob(c));
  add('GET', '/i18n', (s, c) => s.json(c, {}));
  add('GET', '/workflow_templates', (s, c) => s.json(c, {}));
  add('GET', '/experiment/models', (s, c) =>
    s.json(
      c,
      s.modelFolders().map((f) => ({ name: f.name, folders: f.paths })),
    ),
  );
  add('GET', '/experiment/models/{folder}', (s, c) => {
    const f = s.modelFolders().find((x) => x.name === c.params.folder);
    if (!f) return s.sendEmpty(c, 404);
    return s.json(
      c,
      s.listModels(f.name).map((name) => ({ name, pathIndex: 0 })),
    );
  });
  // app/user_manager.py + app/app_settings.py
  add('GET', '/users', (s, c) => s.getUsers(c));
  add('POST', '/users', (s, c) => s.postUsers(c));
  add('GET', '/userdata', (s, c) => s.listUserdata(c));
  add('GET', '/v2/userdata', (s, c) => s.listUserdataV2(c));
  add('GET', '/userdata/{file}', (s, c) => s.getUserdata(c));
  add('POST', '/userdata/{file}', (s, c) => s.postUserdata(c));
  add('DELETE', '/userdata/{file}', (s, c) => s.deleteUserdata(c));
  add('POST', '/userdata/{file}/move/{dest}', (s, c) => s.moveUserdata(c));
  add('GET', '/settings', (s, c) => s.getSettings(c, null));
  add('GET', '/settings/{id}', (s, c) => s.getSettings(c, c.params.id));
  add('POST', '/settings', (s, c) => s.postSettings(c, null));
  add('POST', '/settings/{id}', (s, c) => s.postSettings(c, c.params.id));
  // ComfyUI-Manager (registered on PromptServer.routes, so they get /api twins too)
  for (const [m, p] of MANAGER_ROUTES) {
    add(m, p, managerHandler(p));
    add(m, '/v2' + p, managerHandler('/v2' + p));
  }
  // /internal sub-app: no /api twin
  add('GET', '/internal/logs', (s, c) => s.json(c, s.logText()), false);
  add('GET', '/internal/logs/raw', (s, c) => s.json(c, { entries: s.logEntries(), size: { cols: 80, rows: 24 } }), false);
  add(
    'PATCH',
    '/internal/logs/subscribe',
    async (s, c) => {
      const j = await bodyJson(c.body);
      if (!isObj(j)) throw new HttpError(400, 'expected a JSON object');
      return s.sendEmpty(c, 200);
    },
    false,
  );
  add(
    'GET',
    '/internal/folder_paths',
    (s, c) => {
      const out: Record<string, string[]> = {};
      for (const f of s.modelFolders()) out[f.name] = f.paths;
      return s.json(c, out);
    },
    false,
  );
  add(
    'GET',
    '/internal/files/{directory_type}',
    (s, c) => {
      const dir = s.dirByType(c.params.directory_type);
      if (!dir) return s.json(c, { error: 'Invalid directory type' }, 400);
      return s.json(c, walkFiles(dir));
    },
    false,
  );
  // static frontend (web.static: no /api twin)
  add('GET', '/index.html', (s, c) => s.index(c), false, true);
  add('GET', '/extensions/{path}', (s, c) => s.staticJs(c), false, true);
  add('GET', '/scripts/{path}', (s, c) => s.staticJs(c), false, true);
  add('GET', '/assets/{path}', (s, c) => s.staticJs(c), false, true);
  add('GET', '/templates/{path}', (s, c) => s.sendText(c, 404, '404: Not Found'), false, true);
  return defs;
}

const ROUTES = defineRoutes();

/** The full route table of the fake (paths with `{param}` placeholders, without the /api twin). */
export const FAKE_COMFY_ROUTES: FakeRoute[] = ROUTES.map((r) => ({
  method: r.method,
  path: r.path,
  apiTwin: r.apiTwin,
  ...(r.static ? { static: true } : {}),
}));

/** static routes match any tail (`/extensions/a/b.js`); others match segment by segment */
function matchRoute(r: RouteDef, p: string): Record<string, string> | null {
  const segs = p.split('/').slice(1);
  if (r.static && r.segs.length === 2 && r.segs[1] === '{path}') {
    if (segs[0] !== r.segs[0] || segs.length < 2 || segs.slice(1).some((x) => x === '' || x === '.' || x === '..')) return null;
    return { path: segs.slice(1).join('/') };
  }
  if (segs.length !== r.segs.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < segs.length; i++) {
    const pat = r.segs[i];
    if (pat.startsWith('{') && pat.endsWith('}')) {
      if (!segs[i]) return null;
      params[pat.slice(1, -1)] = percentDecode(segs[i]);
    } else if (pat !== segs[i]) return null;
  }
  return params;
}

// ───────────────────────────────────────────── the server ─────────────────────────────────────────────

interface SockInfo {
  ws: WebSocket;
  sid: string;
  rawPath: string;
  firstMessage: boolean;
  featureFlags?: unknown;
}

class FakeComfyServer implements FakeComfy {
  url = '';
  port: number;
  host: string;
  baseDir: string;
  inputDir: string;
  outputDir: string;
  tempDir: string;
  modelsDir: string;
  userDir: string;
  customNodesDir: string;
  requests: RecordedRequest[] = [];
  private stalls: StallRule[] = [];
  private releaseStalls: (() => void)[] = [];
  prompts = new Map<string, StoredPrompt>();
  history = new Map<string, StoredPrompt>();
  users: Record<string, string> = {};
  promptDelayMs: number;
  maxUploadSize: number;
  multiUser: boolean;
  legacy: boolean;
  argv: string[] | null;
  freeRequests: any[] = [];

  private createdBaseDir: boolean;
  private spoolDir: string;
  private server: http.Server | null = null;
  private wss: WebSocketServer;
  private sockets = new Map<string, WebSocket>(); // sid -> active socket (PromptServer.sockets)
  private allSockets = new Set<SockInfo>();
  private pending: StoredPrompt[] = [];
  private running: StoredPrompt | null = null;
  private number = 0;
  private seq = 0;
  private generation = 0;
  private currentClientId: unknown = null;
  private lastNodeId: string | null = null;
  private logs: { t: string; m: string }[] = [];
  /** called with the finished entry, or null when the server stopped first */
  private waiters = new Map<string, ((e: StoredPrompt | null) => void)[]>();
  private arrivals = new Map<string, (() => void)[]>();

  constructor(opts: FakeComfyOptions, baseDir: string, created: boolean, spoolDir: string) {
    this.port = opts.port ?? 0;
    this.host = opts.host ?? '127.0.0.1';
    this.baseDir = baseDir;
    this.createdBaseDir = created;
    this.spoolDir = spoolDir;
    this.inputDir = path.join(baseDir, 'input');
    this.outputDir = path.join(baseDir, 'output');
    this.tempDir = path.join(baseDir, 'temp');
    this.modelsDir = path.join(baseDir, 'models');
    this.userDir = path.join(baseDir, 'user');
    this.customNodesDir = path.join(baseDir, 'custom_nodes');
    this.promptDelayMs = opts.promptDelayMs ?? 50;
    this.maxUploadSize = opts.maxUploadSize ?? 1024 * 1024 * 1024;
    this.multiUser = opts.multiUser ?? true;
    this.legacy = opts.legacy ?? false;
    this.argv = opts.argv ?? null;
    this.wss = new WebSocketServer({ noServer: true, maxPayload: WS_MAX_PAYLOAD, perMessageDeflate: true, clientTracking: false });
    this.log('Starting fake ComfyUI server');
  }

  // ───── lifecycle ─────

  async init(opts: FakeComfyOptions): Promise<void> {
    for (const d of [this.inputDir, this.outputDir, this.tempDir, this.userDir, this.customNodesDir])
      await fsp.mkdir(d, { recursive: true });
    for (const f of this.modelFolders()) if (f.name !== 'custom_nodes') await fsp.mkdir(f.paths[0], { recursive: true });
    if (opts.seedModels ?? true) {
      const header = Buffer.from(pyJson({ __metadata__: { 'modelspec.title': 'fake model', format: 'pt' } }), 'utf8');
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(header.length));
      const st = Buffer.concat([len, header]);
      for (const [dir, name] of [
        ['checkpoints', 'fake_model.safetensors'],
        ['loras', 'fake_lora.safetensors'],
        ['vae', 'fake_vae.safetensors'],
        ['upscale_models', 'fake_upscale.pth'],
        ['embeddings', 'fake_embedding.pt'],
      ]) {
        const p = path.join(this.modelsDir, dir, name);
        if (!fs.existsSync(p)) await fsp.writeFile(p, st);
      }
    }
    if (this.multiUser) {
      try {
        const j = JSON.parse(await fsp.readFile(this.usersFile(), 'utf8'));
        if (isObj(j)) Object.assign(this.users, j);
      } catch {
        /* no users.json */
      }
      if (opts.users) {
        Object.assign(this.users, opts.users);
        await this.saveUsers();
      }
    } else {
      this.users = { default: 'default' };
    }
  }

  async start(): Promise<void> {
    if (this.server) return;
    const server = http.createServer({ requireHostHeader: false }, (req, res) => this.onRequest(req, res));
    server.keepAliveTimeout = 75_000;
    server.on('upgrade', (req, socket, head) => this.onUpgrade(req, socket, head));
    server.on('clientError', (_err, socket) => {
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      else socket.destroy();
    });
    await new Promise<void>((resolve, reject) => {
      const onErr = (e: Error) => reject(e);
      server.once('error', onErr);
      server.listen(this.port, this.host, () => {
        server.off('error', onErr);
        resolve();
      });
    });
    server.on('error', () => {});
    this.server = server;
    const addr = server.address();
    if (addr && typeof addr === 'object') this.port = addr.port;
    const h = this.host.includes(':') ? `[${this.host}]` : this.host;
    this.url = `http://${h}:${this.port}`;
    this.log(`To see the GUI go to: ${this.url}`);
    setImmediate(() => this.kick());
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = null;
    // the process "dies": queue and history are in-memory only, so they are lost like on a real restart
    this.generation++;
    if (this.running) this.running.interrupt = true;
    this.running = null;
    this.pending = [];
    this.history.clear();
    this.prompts.clear();
    this.currentClientId = null;
    this.lastNodeId = null;
    const waiters = [...this.waiters.values()].flat();
    this.waiters.clear();
    for (const w of waiters) w(null);
    for (const info of this.allSockets) {
      try {
        info.ws.terminate();
      } catch {
        /* ignore */
      }
    }
    this.allSockets.clear();
    this.sockets.clear();
    if (server) {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    }
  }

  async close(): Promise<void> {
    await this.stop();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
    await fsp.rm(this.spoolDir, { recursive: true, force: true }).catch(() => {});
    LIVE_TEMP_DIRS.delete(this.spoolDir);
    if (this.createdBaseDir) {
      await fsp.rm(this.baseDir, { recursive: true, force: true }).catch(() => {});
      LIVE_TEMP_DIRS.delete(this.baseDir);
    }
  }

  stall(rule: StallRule): void {
    this.stalls.push(rule);
  }

  clearStalls(): void {
    this.stalls = [];
    for (const r of this.releaseStalls.splice(0)) r();
  }

  private stallFor(p: string, method: string): StallRule | undefined {
    return this.stalls.find((r) => (r.method === undefined || r.method === method) && (p === r.path || p === `/api${r.path}`));
  }

  clearRequests(): void {
    this.requests.length = 0;
  }

  wsClients(): WsClientInfo[] {
    return [...this.allSockets]
      .filter((i) => i.ws.readyState === WebSocket.OPEN)
      .map((i) => ({ clientId: i.sid, sid: i.sid, active: this.sockets.get(i.sid) === i.ws, rawPath: i.rawPath }));
  }

  sendWs(clientId: string | null, msg: object): void {
    this.sendRaw(clientId, pyJson(msg), false);
  }

  sendWsBinary(clientId: string | null, buf: Buffer): void {
    this.sendRaw(clientId, buf, true);
  }

  waitForPrompt(promptId: string, timeoutMs = 10_000): Promise<any> {
    const done = this.history.get(promptId);
    if (done) return Promise.resolve(done.history);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`prompt ${promptId} did not finish within ${timeoutMs} ms`)), timeoutMs);
      const list = this.waiters.get(promptId) ?? [];
      list.push((e) => {
        clearTimeout(t);
        if (e) resolve(e.history);
        else reject(new Error(`prompt ${promptId} was lost: the fake ComfyUI was stopped`));
      });
      this.waiters.set(promptId, list);
    });
  }

  arrival(promptId: string, timeoutMs = 10_000): Promise<any> {
    const have = this.prompts.get(promptId);
    if (have) return Promise.resolve(have);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`prompt ${promptId} did not arrive within ${timeoutMs} ms`)), timeoutMs);
      const list = this.arrivals.get(promptId) ?? [];
      list.push(() => {
        clearTimeout(t);
        resolve(this.prompts.get(promptId));
      });
      this.arrivals.set(promptId, list);
    });
  }

  // ───── logging ─────

  private log(m: string): void {
    this.logs.push({ t: new Date().toISOString(), m: m + '\n' });
    if (this.logs.length > 1000) this.logs.shift();
  }
  logText(): string {
    return this.logs.map((l) => l.m).join('');
  }
  logEntries(): { t: string; m: string }[] {
    return this.logs.slice();
  }

  // ───── HTTP plumbing ─────

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const rec: RecordedRequest = {
      method: req.method ?? '',
      rawPath: req.url ?? '',
      headers: { ...req.headers },
      rawHeaders: [...req.rawHeaders],
      bodySha256: '',
      bodyLength: 0,
      at: Date.now(),
      remoteAddress: req.socket.remoteAddress,
      complete: false,
    };
    this.requests.push(rec);
    res.on('error', () => {});
    req.on('error', () => {});
    res.setHeader('Server', SERVER_HEADER);

    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > this.maxUploadSize) {
      rec.tooLarge = true;
      this.refuseTooLarge(req, res, Number(declared));
      return;
    }
    let body: Body | null = null;
    this.spool(req, res, rec)
      .then(async (b) => {
        body = b;
        if (!b) return; // aborted or 413 already answered
        rec.bodySha256 = b.sha256;
        rec.bodyLength = b.length;
        if (b.buf && b.length <= 64 * 1024) rec.bodyText = b.buf.toString('utf8');
        rec.complete = true;
        await this.dispatch(req, res, b);
      })
      .catch((e) => this.sendError(res, e))
      .finally(() => {
        const b = body as Body | null;
        if (b?.file) {
          const f = b.file;
          const rm = () => fsp.rm(f, { force: true }).catch(() => {});
          if (res.writableFinished || res.destroyed) void rm();
          else {
            res.once('close', rm);
          }
        }
      });
  }

  private refuseTooLarge(req: http.IncomingMessage, res: http.ServerResponse, actual: number): void {
    const text = `Maximum request body size ${this.maxUploadSize} exceeded, actual body size ${actual}`;
    if (!res.headersSent) {
      res.writeHead(413, { 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': Buffer.byteLength(text), Connection: 'close' });
      res.end(text);
    }
    req.resume(); // drain the rest so the client can read the answer
  }

  private spool(req: http.IncomingMessage, res: http.ServerResponse, rec: RecordedRequest): Promise<Body | null> {
    return new Promise<Body | null>((resolve, reject) => {
      const hash = crypto.createHash('sha256');
      let length = 0;
      let mem: Buffer[] | null = [];
      let file: string | null = null;
      let ws: fs.WriteStream | null = null;
      let finished = false;
      const fail = (e: unknown) => {
        if (finished) return;
        finished = true;
        if (ws) ws.destroy();
        if (file) void fsp.rm(file, { force: true }).catch(() => {});
        reject(e);
      };
      req.on('data', (chunk: Buffer) => {
        if (finished) return;
        length += chunk.length;
        if (length > this.maxUploadSize) {
          finished = true;
          rec.tooLarge = true;
          rec.bodyLength = length;
          if (ws) ws.destroy();
          if (file) void fsp.rm(file, { force: true }).catch(() => {});
          // the answer must still reach the client: drain, don't destroy
          this.refuseTooLarge(req, res, length);
          resolve(null);
          return;
        }
        hash.update(chunk);
        if (mem) {
          mem.push(chunk);
          if (length > SPOOL_MEM_LIMIT) {
            file = path.join(this.spoolDir, 'body-' + crypto.randomBytes(8).toString('hex'));
            ws = fs.createWriteStream(file);
            ws.on('error', fail);
            for (const c of mem) ws.write(c);
            mem = null;
          }
        } else if (ws) {
          if (!ws.write(chunk)) {
            req.pause();
            ws.once('drain', () => req.resume());
          }
        }
      });
      req.on('aborted', () => {
        rec.aborted = true;
        rec.bodyLength = length;
        fail(new StoppedError('client aborted'));
      });
      req.on('error', (e) => {
        rec.aborted = true;
        fail(e);
      });
      req.on('end', () => {
        if (finished) return;
        finished = true;
        const sha256 = hash.digest('hex');
        if (ws) {
          const w = ws;
          w.end(() => resolve({ length, sha256, file: file! }));
        } else resolve({ length, sha256, buf: Buffer.concat(mem ?? []) });
      });
    });
  }

  private async dispatch(req: http.IncomingMessage, res: http.ServerResponse, body: Body): Promise<void> {
    let raw = req.url ?? '/';
    if (/^https?:\/\//i.test(raw)) {
      try {
        const u = new URL(raw);
        raw = u.pathname + u.search;
      } catch {
        throw new HttpError(400, 'Bad Request');
      }
    }
    const qi = raw.indexOf('?');
    const rawPath = qi === -1 ? raw : raw.slice(0, qi);
    const query = new URLSearchParams(qi === -1 ? '' : raw.slice(qi + 1));
    const method = (req.method ?? 'GET').toUpperCase();
    const ctx: Ctx = { req, res, method, path: percentDecode(rawPath, [0x2f, 0x25]), query, params: {}, body, head: method === 'HEAD' };

    // create_origin_only_middleware
    if (!this.originAllowed(req)) {
      return this.sendText(ctx, 403, 'Forbidden');
    }
    if (method === 'OPTIONS') return this.sendEmpty(ctx, 200);
    if (!rawPath.startsWith('/')) return this.sendText(ctx, 404, '404: Not Found');

    const stall = this.stallFor(ctx.path, method);
    if (stall?.beforeHeadersMs === null) {
      // Never answered: held until clearStalls() or until the client gives up (`thenHandle`: handled on release).
      const released = await new Promise<boolean>((resolve) => {
        this.releaseStalls.push(() => resolve(true));
        res.once('close', () => resolve(false));
      });
      if (!stall.thenHandle || !released || res.destroyed) {
        if (!res.destroyed) res.destroy();
        return;
      }
    } else if (stall?.beforeHeadersMs) await new Promise((r) => setTimeout(r, stall.beforeHeadersMs!));
    const found = this.findRoute(ctx.path, method);
    if (!found) return this.sendText(ctx, 404, '404: Not Found');
    if (!found.route) {
      ctx.res.setHeader('Allow', found.allow.join(','));
      return this.sendText(ctx, 405, '405: Method Not Allowed');
    }
    ctx.params = found.params;
    // cache_control middleware
    if (ctx.path.endsWith('.js') || ctx.path.endsWith('.css')) res.setHeader('Cache-Control', 'no-cache');
    await found.route.handler(this, ctx);
  }

  private findRoute(p: string, method: string): { route: RouteDef | null; params: Record<string, string>; allow: string[] } | null {
    const m = method === 'HEAD' ? 'GET' : method;
    const allow = new Set<string>();
    let hit: { route: RouteDef; params: Record<string, string> } | null = null;
    const candidates: [string, boolean][] = [[p, false]];
    if (p.startsWith('/api/')) candidates.unshift([p.slice(4), true]);
    for (const [cand, viaApi] of candidates) {
      for (const r of ROUTES) {
        if (viaApi && !r.apiTwin) continue;
        if (this.legacy && r.path.startsWith('/internal/')) continue;
        const params = matchRoute(r, cand);
        if (!params) continue;
        allow.add(r.method);
        if (r.method === 'GET') allow.add('HEAD');
        if (!hit && r.method === m) hit = { route: r, params };
      }
      if (hit) return { ...hit, allow: [...allow] };
    }
    if (allow.size) return { route: null, params: {}, allow: [...allow] };
    return null;
  }

  originAllowed(req: http.IncomingMessage): boolean {
    const host = req.headers.host;
    const origin = req.headers.origin;
    if (host === undefined || origin === undefined) return true;
    const h = parseHostPort(host.toLowerCase());
    const o = parseOrigin(origin);
    const loopback = isLoopbackHost(h.hostname);
    let hostDomain: string | null = host.toLowerCase();
    let originDomain: string | null = o.netloc.toLowerCase();
    if (o.port === null) hostDomain = h.hostname;
    if (h.port === null) originDomain = o.hostname;
    if (loopback && hostDomain && originDomain && hostDomain !== originDomain) {
      this.log(`WARNING: request with non matching host and origin ${hostDomain} != ${originDomain}, returning 403`);
      return false;
    }
    return true;
  }

  // ───── response helpers ─────

  json(c: Ctx, obj: unknown, status = 200): void {
    const buf = Buffer.from(pyJson(obj), 'utf8');
    if (c.res.headersSent) return;
    c.res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Content-Length': buf.length });
    c.res.end(c.head ? undefined : buf);
  }
  sendText(c: Ctx, status: number, text: string, type = 'text/plain; charset=utf-8'): void {
    const buf = Buffer.from(text, 'utf8');
    if (c.res.headersSent) return;
    c.res.writeHead(status, { 'Content-Type': type, 'Content-Length': buf.length });
    c.res.end(c.head ? undefined : buf);
  }
  sendEmpty(c: Ctx, status: number): void {
    if (c.res.headersSent) return;
    c.res.writeHead(status, { 'Content-Type': 'application/octet-stream', 'Content-Length': 0 });
    c.res.end();
  }
  private sendError(res: http.ServerResponse, e: unknown): void {
    if (e instanceof StoppedError) return;
    if (res.headersSent || res.destroyed) {
      if (!res.writableEnded) res.destroy();
      return;
    }
    let status = 500;
    let body: string | object = '500 Internal Server Error\n\nServer got itself in trouble';
    if (e instanceof HttpError) {
      status = e.status;
      body = e.body ?? '';
    } else if (e instanceof UnknownUserError) {
      status = 401;
      body = e.message;
    } else {
      this.log(`Error handling request: ${(e as Error)?.stack ?? e}`);
    }
    try {
      const isJson = typeof body !== 'string';
      const buf = Buffer.from(isJson ? pyJson(body) : (body as string), 'utf8');
      res.writeHead(status, {
        'Content-Type': isJson ? 'application/json; charset=utf-8' : 'text/plain; charset=utf-8',
        'Content-Length': buf.length,
      });
      res.end(buf);
    } catch {
      res.destroy();
    }
  }

  // ───── static ─────

  index(c: Ctx): void {
    c.res.setHeader('Cache-Control', 'no-cache');
    c.res.setHeader('Pragma', 'no-cache');
    c.res.setHeader('Expires', '0');
    this.sendText(
      c,
      200,
      '<!DOCTYPE html><html><head><title>ComfyUI</title></head><body><div id="app">ComfyUI fake</div></body></html>',
      'text/html; charset=utf-8',
    );
  }
  staticJs(c: Ctx): void {
    if (!c.params.path.endsWith('.js')) return this.sendText(c, 404, '404: Not Found');
    this.sendText(c, 200, `// fake ComfyUI static file ${c.path}\nexport const fake = true;\n`, 'application/javascript; charset=utf-8');
  }

  // ───── folders / models ─────

  dirByType(t: string | null | undefined): string | null {
    if (t === 'input') return this.inputDir;
    if (t === 'output') return this.outputDir;
    if (t === 'temp') return this.tempDir;
    return null;
  }

  modelFolders(): ModelFolder[] {
    const m = (n: string) => path.join(this.modelsDir, n);
    const o = (n: string) => path.join(this.outputDir, n);
    return [
      { name: 'checkpoints', paths: [m('checkpoints'), o('checkpoints')], exts: PT_EXT },
      { name: 'configs', paths: [m('configs')], exts: ['.yaml'] },
      { name: 'loras', paths: [m('loras'), o('loras')], exts: PT_EXT },
      { name: 'vae', paths: [m('vae'), o('vae')], exts: PT_EXT },
      { name: 'text_encoders', paths: [m('text_encoders'), m('clip'), o('clip')], exts: PT_EXT },
      { name: 'diffusion_models', paths: [m('unet'), m('diffusion_models'), o('diffusion_models')], exts: PT_EXT },
      { name: 'clip_vision', paths: [m('clip_vision')], exts: PT_EXT },
      { name: 'style_models', paths: [m('style_models')], exts: PT_EXT },
      { name: 'embeddings', paths: [m('embeddings')], exts: PT_EXT },
      { name: 'diffusers', paths: [m('diffusers')], exts: ['folder'] },
      { name: 'vae_approx', paths: [m('vae_approx')], exts: PT_EXT },
      { name: 'controlnet', paths: [m('controlnet'), m('t2i_adapter')], exts: PT_EXT },
      { name: 'gligen', paths: [m('gligen')], exts: PT_EXT },
      { name: 'upscale_models', paths: [m('upscale_models')], exts: PT_EXT },
      { name: 'custom_nodes', paths: [this.customNodesDir], exts: [] },
      { name: 'hypernetworks', paths: [m('hypernetworks')], exts: PT_EXT },
      { name: 'photomaker', paths: [m('photomaker')], exts: PT_EXT },
      { name: 'classifiers', paths: [m('classifiers')], exts: [''] },
    ];
  }

  listModels(name: string): string[] {
    const f = this.modelFolders().find((x) => x.name === name);
    if (!f) return [];
    const out = new Set<string>();
    for (const p of f.paths) {
      for (const rel of walkFiles(p)) {
        if (f.exts.length === 0 || f.exts.includes(path.extname(rel).toLowerCase())) out.add(rel);
      }
    }
    return [...out].sort();
  }

  // Core loaders list as ComfyUI's LoadImage does on both servers (os.listdir of input/, 7914c47 and 0.3.44 alike):
  // top-level files only, never the per-user subfolders uploads go to — listing those is the gateway's job. Custom
  // pickers (`tree`) walk the whole folder, as many custom nodes do, so the gateway's filtering of others' files shows.
  private inputFiles(exts: Set<string>, tree = false): string[] {
    if (tree) return walkFiles(this.inputDir).filter((f) => exts.has(path.extname(f).toLowerCase()));
    return fs
      .readdirSync(this.inputDir, { withFileTypes: true })
      .filter((e) => e.isFile() && exts.has(path.extname(e.name).toLowerCase()))
      .map((e) => e.name)
      .sort();
  }

  nodeDefs(): Record<string, NodeDef> {
    const images = this.inputFiles(IMAGE_EXT);
    const allImages = this.inputFiles(IMAGE_EXT, true);
    const INT = (d: number, min = 0, max = 2 ** 64) => ['INT', { default: d, min, max }];
    const FLOAT = (d: number, min = 0, max = 100) => ['FLOAT', { default: d, min, max, step: 0.01 }];
    const hidden = { prompt: 'PROMPT', extra_pnginfo: 'EXTRA_PNGINFO' };
    const sampler = {
      model: ['MODEL'],
      seed: INT(0),
      steps: INT(20, 1, 10000),
      cfg: FLOAT(8.0),
      sampler_name: [SAMPLERS],
      scheduler: [SCHEDULERS],
      positive: ['CONDITIONING'],
      negative: ['CONDITIONING'],
      latent_image: ['LATENT'],
    };
    return {
      CheckpointLoaderSimple: {
        input: { required: { ckpt_name: [this.listModels('checkpoints')] } },
        output: ['MODEL', 'CLIP', 'VAE'],
        category: 'loaders',
        display_name: 'Load Checkpoint',
      },
      VAELoader: {
        input: { required: { vae_name: [this.listModels('vae')] } },
        output: ['VAE'],
        category: 'loaders',
        display_name: 'Load VAE',
      },
      LoraLoader: {
        input: {
          required: {
            model: ['MODEL'],
            clip: ['CLIP'],
            lora_name: [this.listModels('loras')],
            strength_model: FLOAT(1, -100, 100),
            strength_clip: FLOAT(1, -100, 100),
          },
        },
        output: ['MODEL', 'CLIP'],
        category: 'loaders',
        display_name: 'Load LoRA',
      },
      UpscaleModelLoader: {
        input: { required: { model_name: [this.listModels('upscale_models')] } },
        output: ['UPSCALE_MODEL'],
        category: 'loaders',
        display_name: 'Load Upscale Model',
      },
      CLIPTextEncode: {
        input: { required: { text: ['STRING', { multiline: true, dynamicPrompts: true }], clip: ['CLIP'] } },
        output: ['CONDITIONING'],
        category: 'conditioning',
        display_name: 'CLIP Text Encode (Prompt)',
      },
      EmptyLatentImage: {
        input: { required: { width: INT(512, 16, 16384), height: INT(512, 16, 16384), batch_size: INT(1, 1, 4096) } },
        output: ['LATENT'],
        category: 'latent',
        display_name: 'Empty Latent Image',
      },
      KSampler: {
        input: { required: { ...sampler, denoise: FLOAT(1.0, 0, 1) } },
        output: ['LATENT'],
        category: 'sampling',
        display_name: 'KSampler',
      },
      KSamplerAdvanced: {
        input: {
          required: {
            model: ['MODEL'],
            add_noise: [['enable', 'disable']],
            noise_seed: INT(0),
            steps: INT(20, 1, 10000),
            cfg: FLOAT(8.0),
            sampler_name: [SAMPLERS],
            scheduler: [SCHEDULERS],
            positive: ['CONDITIONING'],
            negative: ['CONDITIONING'],
            latent_image: ['LATENT'],
            start_at_step: INT(0, 0, 10000),
            end_at_step: INT(10000, 0, 10000),
            return_with_leftover_noise: [['disable', 'enable']],
          },
        },
        output: ['LATENT'],
        category: 'sampling',
        display_name: 'KSampler (Advanced)',
      },
      VAEDecode: {
        input: { required: { samples: ['LATENT'], vae: ['VAE'] } },
        output: ['IMAGE'],
        category: 'latent',
        display_name: 'VAE Decode',
      },
      VAEEncode: {
        input: { required: { pixels: ['IMAGE'], vae: ['VAE'] } },
        output: ['LATENT'],
        category: 'latent',
        display_name: 'VAE Encode',
      },
      ImageScale: {
        input: {
          required: {
            image: ['IMAGE'],
            upscale_method: [['nearest-exact', 'bilinear', 'area', 'bicubic', 'lanczos']],
            width: INT(512, 0, 16384),
            height: INT(512, 0, 16384),
            crop: [['disabled', 'center']],
          },
        },
        output: ['IMAGE'],
        category: 'image/upscaling',
        display_name: 'Upscale Image',
      },
      SaveImage: {
        input: {
          required: {
            images: ['IMAGE', { tooltip: 'The images to save.' }],
            filename_prefix: ['STRING', { default: 'ComfyUI', tooltip: 'The prefix for the file to save.' }],
          },
          hidden,
        },
        output: [],
        category: 'image',
        output_node: true,
        display_name: 'Save Image',
        description: 'Saves the input images to your ComfyUI output directory.',
      },
      PreviewImage: {
        input: { required: { images: ['IMAGE'] }, hidden },
        output: [],
        category: 'image',
        output_node: true,
        display_name: 'Preview Image',
        description: 'Saves the input images to your ComfyUI output directory.',
      },
      LoadImage: {
        input: { required: { image: [images, { image_upload: true }] } },
        output: ['IMAGE', 'MASK'],
        category: 'image',
        display_name: 'Load Image',
      },
      LoadImageMask: {
        input: { required: { image: [images, { image_upload: true }], channel: [['alpha', 'red', 'green', 'blue']] } },
        output: ['MASK'],
        category: 'mask',
        display_name: 'Load Image (as Mask)',
      },
      LoadAudio: {
        input: { required: { audio: [this.inputFiles(AUDIO_VIDEO_EXT), { audio_upload: true }] } },
        output: ['AUDIO'],
        category: 'audio',
        display_name: 'Load Audio',
      },
      // Nodes whose names say nothing about files (core's WebcamCapture; custom packs' pickers and exporters):
      WebcamCapture: {
        input: {
          required: {
            image: ['WEBCAM', {}],
            width: INT(0, 0, 16384),
            height: INT(0, 0, 16384),
            capture_on_queue: ['BOOLEAN', { default: true }],
          },
        },
        output: ['IMAGE', 'MASK'],
        category: 'image',
        display_name: 'Webcam Capture',
      },
      PhotoPicker: {
        input: { required: { photo: [allImages, { image_upload: true }] } },
        output: ['IMAGE'],
        category: 'custom',
        display_name: 'Photo Picker',
      },
      FolderPicker: { input: { required: { picture: [allImages] } }, output: ['IMAGE'], category: 'custom', display_name: 'Folder Picker' },
      ExportFrames: {
        input: { required: { frames: ['IMAGE'], prefix: ['STRING', { default: 'frames' }] } },
        output: [],
        category: 'custom',
        output_node: true,
        display_name: 'Export Frames',
      },
    };
  }

  objectInfo(): Record<string, any> {
    const out: Record<string, any> = {};
    for (const [name, d] of Object.entries(this.nodeDefs())) {
      const input_order: Record<string, string[]> = {};
      for (const [k, v] of Object.entries(d.input)) input_order[k] = Object.keys(v ?? {});
      out[name] = {
        input: d.input,
        input_order,
        output: d.output,
        output_is_list: d.output.map(() => false),
        output_name: d.output_name ?? d.output,
        name,
        display_name: d.display_name ?? name,
        description: d.description ?? '',
        python_module: 'nodes',
        category: d.category,
        output_node: !!d.output_node,
      };
    }
    return out;
  }

  systemStats(): any {
    if (this.legacy) {
      return {
        system: { os: 'posix', python_version: '3.11.9 (main) [GCC 12.2.0]', embedded_python: false },
        devices: [
          {
            name: 'cuda:0 fake',
            type: 'cuda',
            index: 0,
            vram_total: 25769803776,
            vram_free: 21474836480,
            torch_vram_total: 0,
            torch_vram_free: 0,
          },
        ],
      };
    }
    return {
      system: {
        os: 'posix',
        ram_total: 68719476736,
        ram_free: 34359738368,
        comfyui_version: '0.3.0',
        required_frontend_version: '1.0.0',
        python_version: '3.11.9 (main) [GCC 12.2.0]',
        pytorch_version: '2.4.0+cu121',
        embedded_python: false,
        argv: this.argv ?? ['main.py', '--listen', '127.0.0.1', ...(this.multiUser ? ['--multi-user'] : [])],
      },
      devices: [
        {
          name: 'cuda:0 fake',
          type: 'cuda',
          index: 0,
          vram_total: 25769803776,
          vram_free: 21474836480,
          torch_vram_total: 0,
          torch_vram_free: 0,
        },
      ],
    };
  }

  featureFlags(): any {
    return { supports_preview_metadata: true, max_upload_size: this.maxUploadSize };
  }

  viewMetadata(c: Ctx): void {
    const folder = this.modelFolders().find((f) => f.name === c.params.folder_name);
    const filename = c.query.get('filename');
    if (!folder || filename === null || !filename.endsWith('.safetensors')) return this.sendEmpty(c, 404);
    const rel = path.posix.relative('/', path.posix.join('/', filename));
    for (const p of folder.paths) {
      const full = path.join(p, rel);
      if (!isInside(p, full) || !fs.existsSync(full)) continue;
      try {
        const fd = fs.openSync(full, 'r');
        try {
          const lenBuf = Buffer.alloc(8);
          fs.readSync(fd, lenBuf, 0, 8, 0);
          const len = Number(lenBuf.readBigUInt64LE(0));
          if (len > 1024 * 1024) return this.sendEmpty(c, 404);
          const hdr = Buffer.alloc(len);
          fs.readSync(fd, hdr, 0, len, 8);
          const j = JSON.parse(hdr.toString('utf8'));
          if (!isObj(j) || !('__metadata__' in j)) return this.sendEmpty(c, 404);
          return this.json(c, j.__metadata__);
        } finally {
          fs.closeSync(fd);
        }
      } catch {
        return this.sendEmpty(c, 404);
      }
    }
    return this.sendEmpty(c, 404);
  }

  // ───── /view ─────

  private annotated(name: string): [string, string | null] {
    for (const t of ['output', 'input', 'temp']) {
      if (name.endsWith(` [${t}]`)) return [name.slice(0, -(t.length + 3)), this.dirByType(t)];
    }
    return [name, null];
  }

  async view(c: Ctx): Promise<void> {
    const fnParam = c.query.get('filename');
    if (fnParam === null) return this.sendEmpty(c, 404);
    let [filename, outputDir] = this.annotated(fnParam);
    if (!filename) return this.sendEmpty(c, 400);
    if (filename[0] === '/' || filename.includes('..') || filename.includes('\0')) return this.sendEmpty(c, 400);
    if (outputDir === null) outputDir = this.dirByType(c.query.get('type') ?? 'output');
    if (outputDir === null) return this.sendEmpty(c, 400);
    const typeDir = outputDir;
    const sub = c.query.get('subfolder');
    if (sub !== null) {
      if (sub.includes('\0')) return this.sendEmpty(c, 400);
      const full = pyJoin(outputDir, sub);
      if (!isInside(typeDir, path.resolve(full))) return this.sendEmpty(c, 403);
      outputDir = full;
    }
    filename = pyBasename(filename);
    const file = path.resolve(pyJoin(outputDir, filename));
    let st: fs.Stats;
    try {
      st = await fsp.stat(file);
    } catch {
      return this.sendEmpty(c, 404);
    }
    if (!st.isFile()) return this.sendEmpty(c, 404);
    if (!realInside(typeDir, file)) return this.sendEmpty(c, 403);
    // ?preview= and ?channel= are accepted and ignored (the real server re-encodes the image)
    const headers: Record<string, string | number> = {
      'Content-Type': mimeOf(file),
      'Content-Disposition': latin1Header(`filename="${filename}"`),
      'Accept-Ranges': 'bytes',
      'Last-Modified': st.mtime.toUTCString(),
    };
    let start = 0;
    let end = st.size - 1;
    let status = 200;
    const range = c.req.headers.range;
    if (range) {
      const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
      if (m && (m[1] || m[2])) {
        if (m[1]) {
          start = parseInt(m[1], 10);
          if (m[2]) end = Math.min(parseInt(m[2], 10), st.size - 1);
        } else {
          start = Math.max(0, st.size - parseInt(m[2], 10));
        }
        if (start > end || start >= st.size) {
          c.res.writeHead(416, { 'Content-Range': `bytes */${st.size}`, 'Content-Length': 0 });
          c.res.end();
          return;
        }
        status = 206;
        headers['Content-Range'] = `bytes ${start}-${end}/${st.size}`;
      }
    }
    headers['Content-Length'] = st.size === 0 ? 0 : end - start + 1;
    c.res.writeHead(status, headers);
    if (c.head || st.size === 0) {
      c.res.end();
      return;
    }
    const pause = this.stallFor(c.path, c.method)?.midBodyMs;
    if (pause) {
      // The first half now, the rest after a pause (a slow disk or a big file being produced).
      const data = await fsp.readFile(file);
      const part = data.subarray(start, end + 1);
      c.res.write(part.subarray(0, part.length >> 1));
      await new Promise((r) => setTimeout(r, pause));
      if (!c.res.destroyed) c.res.end(part.subarray(part.length >> 1));
      return;
    }
    await new Promise<void>((resolve) => {
      const rs = fs.createReadStream(file, { start, end });
      rs.on('error', () => {
        c.res.destroy();
        resolve();
      });
      c.res.on('close', () => {
        rs.destroy();
        resolve();
      });
      rs.pipe(c.res);
    });
  }

  // ───── uploads ─────

  async upload(c: Ctx, isMask: boolean): Promise<void> {
    const ct = c.req.headers['content-type'] ?? '';
    const { value, params } = parseHeaderParams(ct);
    if (value !== 'multipart/form-data' || !params.boundary) return this.sendEmpty(c, 400);
    const mp = await parseMultipart(bodyStream(c.body), params.boundary, this.spoolDir);
    try {
      const image = mp.files.get('image');
      const overwrite = mp.fields.get('overwrite');
      const typeField = mp.fields.has('type') ? mp.fields.get('type')! : null;
      const uploadType = typeField === null ? 'input' : typeField;
      const uploadDir = this.dirByType(uploadType);
      if (!uploadDir) return this.sendEmpty(c, 400);
      if (!image) return this.sendEmpty(c, 400);
      let filename = image.filename;
      // like the real server, a name with directories is fine while the file stays in the type's folder
      if (!filename || filename.includes('\0')) return this.sendEmpty(c, 400);
      const subfolder = mp.fields.get('subfolder') ?? '';
      // like the real server: `..` inside the subfolder is fine as long as the result stays in the type's folder
      // (so `bob/../alice`, e.g. from a UTF-7 `_charset_` trick, lands in input/alice/)
      if (subfolder.includes('\0')) return this.sendEmpty(c, 400);
      const fullOutputFolder = pyJoin(uploadDir, pyNormpath(subfolder));
      let filepath = path.resolve(pyJoin(fullOutputFolder, filename));
      if (!isInside(uploadDir, filepath) || !realInside(uploadDir, filepath)) return this.sendEmpty(c, 400);

      let maskSource: string | null = null;
      if (isMask) {
        const refText = mp.fields.get('original_ref');
        if (refText === undefined) return this.sendEmpty(c, 400);
        let ref: any;
        try {
          ref = JSON.parse(refText);
        } catch {
          return this.sendEmpty(c, 400);
        }
        if (!isObj(ref) || typeof ref.filename !== 'string' || !ref.filename) return this.sendEmpty(c, 400);
        let [refName, refDir] = this.annotated(ref.filename);
        if (!refName || refName[0] === '/' || refName.includes('..')) return this.sendEmpty(c, 400);
        if (refDir === null) refDir = this.dirByType(typeof ref.type === 'string' ? ref.type : 'output');
        if (refDir === null) return this.sendEmpty(c, 400);
        const refType = refDir;
        if (typeof ref.subfolder === 'string' && ref.subfolder !== '') {
          const full = pyJoin(refDir, ref.subfolder);
          if (!isInside(refType, path.resolve(full))) return this.sendEmpty(c, 403);
          refDir = full;
        }
        maskSource = path.resolve(pyJoin(refDir, refName));
        if (!realInside(refType, maskSource) || !fs.existsSync(maskSource) || !fs.statSync(maskSource).isFile()) {
          return this.sendEmpty(c, 400); // stricter: real answers 200 and silently writes nothing
        }
      }

      await fsp.mkdir(fullOutputFolder, { recursive: true });
      const [stem, ext] = pySplitext(filename);
      let duplicate = false;
      if (!(overwrite === 'true' || overwrite === '1')) {
        let i = 1;
        while (fs.existsSync(filepath)) {
          if (!isMask && fs.statSync(filepath).isFile() && (await sha256File(filepath)) === image.sha256) {
            duplicate = true;
            break;
          }
          filename = `${stem} (${i})${ext}`;
          filepath = path.resolve(pyJoin(fullOutputFolder, filename));
          i++;
        }
      }
      if (!duplicate) {
        // for masks the real server composites the mask's alpha into the original; the fake stores the upload as is
        await moveFile(image.file, filepath);
      }
      this.log(`upload ${uploadType}/${subfolder}/${filename}`);
      return this.json(c, { name: filename, subfolder, type: uploadType });
    } finally {
      await cleanupMultipart(mp);
    }
  }

  // ───── prompts / queue ─────

  queueInfo(): any {
    return { exec_info: { queue_remaining: this.pending.length + (this.running ? 1 : 0) } };
  }

  private sortedPending(): StoredPrompt[] {
    return [...this.pending].sort((a, b) => a.number - b.number || a.seq - b.seq);
  }

  queueState(): any {
    return {
      queue_running: this.running ? [this.running.queueItem()] : [],
      queue_pending: this.sortedPending().map((e) => e.queueItem()),
    };
  }

  private queueUpdated(): void {
    this.emitJson('status', { status: this.queueInfo() }, null);
  }

  async postPrompt(c: Ctx): Promise<void> {
    let j: any;
    try {
      j = JSON.parse((await bodyBuffer(c.body)).toString('utf8'));
    } catch (e: any) {
      return this.json(
        c,
        { error: { type: 'invalid_prompt', message: 'Invalid JSON', details: String(e?.message ?? e), extra_info: {} }, node_errors: {} },
        400,
      );
    }
    if (!isObj(j)) {
      return this.json(
        c,
        { error: { type: 'invalid_prompt', message: 'Request body must be a JSON object', details: '', extra_info: {} }, node_errors: {} },
        400,
      );
    }
    let number: number;
    if ('number' in j) {
      number = typeof j.number === 'string' ? Number(j.number) : j.number;
      if (typeof number !== 'number' || !Number.isFinite(number)) {
        return this.json(
          c,
          { error: { type: 'invalid_prompt', message: 'Invalid number', details: '', extra_info: {} }, node_errors: {} },
          400,
        );
      }
    } else {
      number = this.number;
      if ('front' in j && j.front) number = -number;
      this.number++;
    }
    if (!('prompt' in j)) {
      return this.json(
        c,
        { error: { type: 'no_prompt', message: 'No prompt provided', details: 'No prompt provided', extra_info: {} }, node_errors: {} },
        400,
      );
    }
    const prompt = j.prompt;
    const v = this.validatePrompt(prompt);
    if (!v.ok) {
      this.log(`invalid prompt: ${pyJson(v.error)}`);
      return this.json(c, { error: v.error, node_errors: v.nodeErrors }, 400);
    }
    const extra: Record<string, any> = isObj(j.extra_data) ? JSON.parse(JSON.stringify(j.extra_data)) : {};
    if ('client_id' in j) extra.client_id = j.client_id;
    for (const k of SENSITIVE_EXTRA_DATA_KEYS) delete extra[k];
    const promptId = !this.legacy && j.prompt_id !== undefined && j.prompt_id !== null ? String(j.prompt_id) : uuid4();
    const entry = this.makeEntry(promptId, number, prompt, extra, v.outputs);
    // a client-chosen prompt_id that already exists replaces the stored entry (real: history is overwritten)
    const old = this.prompts.get(promptId);
    if (old && old.state === 'pending') this.pending = this.pending.filter((x) => x !== old);
    this.prompts.set(promptId, entry);
    for (const f of this.arrivals.get(promptId) ?? []) f();
    this.arrivals.delete(promptId);
    const startsNow = !this.running && this.pending.length === 0;
    this.pending.push(entry);
    this.log('got prompt');
    this.queueUpdated();
    setImmediate(() => this.kick());
    if (this.legacy && startsNow) {
      // The old server's executor thread starts the prompt while the answer is still on its way.
      const deadline = Date.now() + 2000;
      while (entry.state === 'pending' && this.running !== entry && Date.now() < deadline) await this.sleep(5);
      await this.sleep(20);
    }
    return this.json(c, { prompt_id: promptId, number, node_errors: {} });
  }

  private makeEntry(promptId: string, number: number, prompt: any, extra: Record<string, any>, outputs: string[]): StoredPrompt {
    const e: StoredPrompt = {
      prompt_id: promptId,
      number,
      prompt,
      extra_data: extra,
      outputs_to_execute: outputs,
      client_id: 'client_id' in extra ? extra.client_id : null,
      state: 'pending',
      seq: this.seq++,
      create_time: Date.now(),
      outputs: {},
      messages: [],
      meta: {},
      queueItem() {
        return [e.number, e.prompt_id, e.prompt, e.extra_data, e.outputs_to_execute];
      },
    };
    return e;
  }

  private validatePrompt(prompt: unknown): { ok: true; outputs: string[] } | { ok: false; error: any; nodeErrors: any } {
    const invalid = (message: string, details = '') => ({
      ok: false as const,
      error: { type: 'invalid_prompt', message, details, extra_info: {} },
      nodeErrors: {},
    });
    if (!isObj(prompt)) return invalid('Invalid prompt: the prompt must be a JSON object', '');
    const defs = this.nodeDefs();
    for (const [id, node] of Object.entries(prompt)) {
      if (!isObj(node) || !('class_type' in node)) {
        return invalid(`Cannot execute because a node is missing the class_type property.`, `Node ID '#${id}'`);
      }
      if (typeof node.class_type !== 'string' || !(node.class_type in defs)) {
        return invalid(`Cannot execute because node ${String(node.class_type)} does not exist.`, `Node ID '#${id}'`);
      }
      if ('inputs' in node && !isObj(node.inputs)) return invalid('Invalid node inputs', `Node ID '#${id}'`);
    }
    const outputs = Object.keys(prompt).filter((id) => defs[prompt[id].class_type].output_node);
    if (outputs.length === 0) {
      return {
        ok: false,
        error: { type: 'prompt_no_outputs', message: 'Prompt has no outputs', details: '', extra_info: {} },
        nodeErrors: {},
      };
    }
    const nodeErrors: Record<string, any> = {};
    const addErr = (id: string, err: any) => {
      nodeErrors[id] ??= { errors: [], dependent_outputs: [], class_type: prompt[id].class_type };
      nodeErrors[id].errors.push(err);
    };
    for (const [id, node] of Object.entries(prompt)) {
      const def = defs[node.class_type];
      const inputs: Record<string, any> = isObj(node.inputs) ? node.inputs : {};
      const specs = { ...(def.input.required ?? {}), ...(def.input.optional ?? {}) };
      for (const [name, val] of Object.entries(inputs)) {
        const spec = specs[name];
        if (Array.isArray(val)) {
          const ok =
            val.length === 2 &&
            typeof val[0] === 'string' &&
            Number.isInteger(val[1]) &&
            Object.prototype.hasOwnProperty.call(prompt, val[0]);
          if (!ok) {
            addErr(id, {
              type: 'bad_linked_input',
              message: 'Bad linked input, must be a length-2 list of [string, int] pointing at an existing node',
              details: `${name}`,
              extra_info: { input_name: name, input_config: spec ?? null, received_value: val },
            });
          }
          continue;
        }
        if (node.class_type === 'LoadImage' || node.class_type === 'LoadImageMask' || node.class_type === 'LoadAudio') {
          if (name === 'image' || name === 'audio') {
            const problem = this.checkInputFile(val);
            if (problem) {
              addErr(id, {
                type: 'custom_validation_failed',
                message: 'Custom validation failed for node',
                details: `${name} - ${problem}`,
                extra_info: { input_name: name, input_config: spec ?? null, received_value: val },
              });
            }
            continue;
          }
        }
        if (node.class_type === 'SaveImage' && name === 'filename_prefix') {
          if (typeof val !== 'string') {
            addErr(id, {
              type: 'invalid_input_type',
              message: 'Failed to convert an input value to a STRING value',
              details: `${name}, ${pyJson(val)}`,
              extra_info: { input_name: name, input_config: spec ?? null, received_value: val },
            });
            continue;
          }
          try {
            this.getSaveImagePath(val, this.outputDir, 2, 2, false);
          } catch (e: any) {
            addErr(id, {
              type: 'custom_validation_failed',
              message: 'Custom validation failed for node',
              details: `${name} - ${e?.message ?? e}`,
              extra_info: { input_name: name, input_config: spec ?? null, received_value: val },
            });
          }
          continue;
        }
        if (spec && Array.isArray(spec[0]) && !spec[0].includes(val)) {
          addErr(id, {
            type: 'value_not_in_list',
            message: 'Value not in list',
            details: `${name}: '${String(val)}' not in ${pyJson(spec[0])}`,
            extra_info: { input_name: name, input_config: spec, received_value: val },
          });
        }
      }
      // default filename_prefix "ComfyUI" is always valid
    }
    if (Object.keys(nodeErrors).length) {
      for (const out of outputs) {
        for (const dep of this.dependencies(prompt, out)) if (nodeErrors[dep]) nodeErrors[dep].dependent_outputs.push(out);
      }
      const details = Object.values(nodeErrors)
        .flatMap((n: any) => n.errors.map((e: any) => `${e.message}: ${e.details}`))
        .join('\n');
      return {
        ok: false,
        error: { type: 'prompt_outputs_failed_validation', message: 'Prompt outputs failed validation', details, extra_info: {} },
        nodeErrors,
      };
    }
    return { ok: true, outputs };
  }

  /** returns a problem description, or null when the (annotated) input file is fine */
  private checkInputFile(val: unknown): string | null {
    if (typeof val !== 'string' || !val) return `Invalid image file: ${String(val)}`;
    let [name, dir] = this.annotated(val);
    dir ??= this.inputDir;
    if (!name || name.startsWith('/') || name.split(/[\\/]/).includes('..') || name.includes('\0')) return `Invalid image file: ${val}`;
    const full = path.resolve(dir, name);
    if (!isInside(dir, full) || !realInside(dir, full)) return `Invalid image file: ${val}`;
    try {
      if (!fs.statSync(full).isFile()) return `Invalid image file: ${val}`;
    } catch {
      return `Invalid image file: ${val}`;
    }
    return null;
  }

  /** nodes an output depends on, in execution (post-)order, including itself */
  private dependencies(prompt: Record<string, any>, out: string, seen = new Set<string>(), order: string[] = []): string[] {
    if (seen.has(out)) return order;
    seen.add(out);
    const inputs = isObj(prompt[out]?.inputs) ? prompt[out].inputs : {};
    for (const v of Object.values(inputs)) {
      if (Array.isArray(v) && typeof v[0] === 'string' && prompt[v[0]]) this.dependencies(prompt, v[0], seen, order);
    }
    order.push(out);
    return order;
  }

  getSaveImagePath(
    prefix: string,
    outputDir: string,
    width: number,
    height: number,
    create = true,
  ): { full: string; filename: string; counter: number; subfolder: string; prefix: string } {
    if (prefix.includes('%')) {
      const d = new Date();
      const p2 = (n: number) => String(n).padStart(2, '0');
      prefix = prefix
        .replace(/%width%/g, String(width))
        .replace(/%height%/g, String(height))
        .replace(/%year%/g, String(d.getFullYear()))
        .replace(/%month%/g, p2(d.getMonth() + 1))
        .replace(/%day%/g, p2(d.getDate()))
        .replace(/%hour%/g, p2(d.getHours()))
        .replace(/%minute%/g, p2(d.getMinutes()))
        .replace(/%second%/g, p2(d.getSeconds()));
    }
    if (prefix.includes('\0')) throw new Error('Invalid filename prefix');
    const norm = pyNormpath(prefix);
    const subfolder = pyDirname(norm);
    const filename = pyBasename(norm);
    const full = pyJoin(outputDir, subfolder);
    if (!isInside(outputDir, path.resolve(full)) || !realInside(outputDir, path.resolve(full))) {
      throw new Error(
        `**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: ${path.resolve(full)}\n         output_dir: ${outputDir}\n         commonpath: ${commonPath(outputDir, path.resolve(full))}`,
      );
    }
    const prefixLen = pyBasename(prefix).length;
    let counter = 1;
    try {
      let max: number | null = null;
      for (const f of fs.readdirSync(full)) {
        const pre = f.slice(0, prefixLen + 1);
        const digits = pyInt(f.slice(prefixLen + 1).split('_')[0]) ?? 0;
        if (pre.slice(0, -1) === filename && pre.slice(-1) === '_') max = max === null ? digits : Math.max(max, digits);
      }
      if (max !== null) counter = max + 1;
    } catch (e: any) {
      if (e?.code !== 'ENOENT') throw e;
      if (create) fs.mkdirSync(full, { recursive: true });
    }
    return { full, filename, counter, subfolder, prefix };
  }

  getHistory(c: Ctx): void {
    const mi = c.query.get('max_items');
    const off = c.query.get('offset');
    let maxItems: number | null = null;
    let offset = -1;
    if (mi !== null) {
      const n = pyInt(mi);
      if (n === null) return this.sendText(c, 400, 'invalid max_items');
      maxItems = n;
    }
    if (off !== null) {
      const n = pyInt(off);
      if (n === null) return this.sendText(c, 400, 'invalid offset');
      offset = n;
    }
    const keys = [...this.history.keys()];
    if (offset < 0 && maxItems !== null) offset = keys.length - maxItems;
    const out: Record<string, any> = {};
    let count = 0;
    for (let i = 0; i < keys.length; i++) {
      if (i >= offset) {
        out[keys[i]] = this.history.get(keys[i])!.history;
        count++;
        if (maxItems !== null && count >= maxItems) break;
      }
    }
    return this.json(c, out);
  }

  async postHistory(c: Ctx): Promise<void> {
    const j = await bodyJson(c.body);
    if (!isObj(j)) throw new HttpError(400, 'expected a JSON object');
    if ('clear' in j && j.clear) {
      for (const id of this.history.keys()) if (this.prompts.get(id)?.history) this.prompts.delete(id);
      this.history.clear();
    }
    if ('delete' in j) {
      if (!Array.isArray(j.delete)) throw new HttpError(400, 'delete must be a list');
      for (const id of j.delete) {
        if (typeof id !== 'string') continue;
        if (this.history.delete(id) && this.prompts.get(id)?.history) this.prompts.delete(id);
      }
    }
    return this.sendEmpty(c, 200);
  }

  async postQueue(c: Ctx): Promise<void> {
    const j = await bodyJson(c.body);
    if (!isObj(j)) throw new HttpError(400, 'expected a JSON object');
    let changed = false;
    if ('clear' in j && j.clear) {
      for (const e of this.pending) this.prompts.delete(e.prompt_id);
      changed = true; // wipe_queue always calls queue_updated
      this.pending = [];
    }
    if ('delete' in j) {
      if (!Array.isArray(j.delete)) throw new HttpError(400, 'delete must be a list');
      for (const id of j.delete) {
        const e = this.pending.find((x) => x.prompt_id === id);
        if (e) {
          this.pending = this.pending.filter((x) => x !== e);
          this.prompts.delete(e.prompt_id);
          changed = true;
        }
      }
    }
    if (changed) this.queueUpdated();
    return this.sendEmpty(c, 200);
  }

  async postInterrupt(c: Ctx): Promise<void> {
    let j: any = {};
    try {
      const text = (await bodyBuffer(c.body)).toString('utf8');
      if (text.trim()) j = JSON.parse(text);
    } catch {
      j = {};
    }
    const pid = isObj(j) ? j.prompt_id : undefined;
    if (pid) {
      if (this.running && this.running.prompt_id === pid) this.running.interrupt = true;
      else this.log(`Prompt ${pid} is not currently running, skipping interrupt`);
    } else if (this.running) {
      this.running.interrupt = true;
    }
    return this.sendEmpty(c, 200);
  }

  private jobOf(e: StoredPrompt): any {
    const status =
      e.state === 'pending'
        ? 'pending'
        : e.state === 'running'
          ? 'in_progress'
          : e.state === 'success'
            ? 'completed'
            : e.state === 'interrupted'
              ? 'cancelled'
              : 'failed';
    const images = Object.values(e.outputs).flatMap((o: any) => (Array.isArray(o?.images) ? o.images : []));
    return {
      id: e.prompt_id,
      status,
      priority: e.number,
      create_time: e.create_time,
      execution_start_time: e.start_time ?? null,
      execution_end_time: e.end_time ?? null,
      outputs_count: images.length,
      preview_output: images[0] ?? null,
      workflow_id: e.extra_data?.extra_pnginfo?.workflow?.id ?? null,
    };
  }

  listJobs(c: Ctx): void {
    const statusFilter = c.query.get('status');
    const wanted = statusFilter ? new Set(statusFilter.split(',').map((s) => s.trim())) : null;
    const limitQ = c.query.get('limit');
    const offsetQ = c.query.get('offset');
    const limit = limitQ !== null ? pyInt(limitQ) : null;
    const offset = offsetQ !== null ? (pyInt(offsetQ) ?? -1) : 0;
    if ((limitQ !== null && (limit === null || limit < 0)) || offset < 0)
      return this.json(c, { error: 'invalid pagination parameters' }, 400);
    let jobs = [...this.prompts.values()].map((e) => this.jobOf(e));
    if (wanted) jobs = jobs.filter((j) => wanted.has(j.status));
    const desc = (c.query.get('sort_order') ?? 'desc') !== 'asc';
    jobs.sort((a, b) => (desc ? b.create_time - a.create_time : a.create_time - b.create_time));
    const total = jobs.length;
    const page = jobs.slice(offset, limit === null ? undefined : offset + limit);
    return this.json(c, { jobs: page, pagination: { offset, limit, total, has_more: offset + page.length < total } });
  }

  getJob(c: Ctx): void {
    const e = this.prompts.get(c.params.job_id);
    if (!e) return this.json(c, { error: 'Job not found' }, 404);
    return this.json(c, {
      ...this.jobOf(e),
      outputs: e.outputs,
      execution_status: e.history?.status ?? null,
      workflow: { prompt: e.prompt, extra_data: e.extra_data },
    });
  }

  // ───── execution ─────

  private kick(): void {
    if (this.running || !this.server || this.pending.length === 0) return;
    const next = this.sortedPending()[0];
    this.pending = this.pending.filter((x) => x !== next);
    this.running = next;
    next.state = 'running';
    next.start_time = Date.now();
    this.queueUpdated();
    const gen = this.generation;
    void this.execute(next, gen)
      .catch((e) => this.log(`executor crashed: ${e}`))
      .finally(() => {
        if (gen !== this.generation) return;
        if (this.running === next) this.running = null;
        setImmediate(() => this.kick());
      });
  }

  /** Sleeps for `ms()` (read live), waking early (within 10 ms) once `stop()` is true. */
  private async sleepUnless(ms: () => number, stop: () => boolean): Promise<void> {
    const start = Date.now();
    while (!stop() && Date.now() - start < ms()) await this.sleep(10);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((r) => {
      const t = setTimeout(r, Math.max(0, ms));
      t.unref?.();
    });
  }

  private async execute(e: StoredPrompt, gen: number): Promise<void> {
    const cid = e.client_id;
    const pid = e.prompt_id;
    this.currentClientId = cid;
    const addMessage = (event: string, data: any, broadcast: boolean) => {
      const d = { ...data, timestamp: Date.now() };
      e.messages.push([event, d]);
      if (cid !== null || broadcast) this.emitJson(event, d, cid);
    };
    const check = () => {
      if (gen !== this.generation) throw new StoppedError('server stopped');
      if (e.interrupt) throw new InterruptedError('interrupted');
    };
    const order: string[] = [];
    const seen = new Set<string>();
    for (const out of e.outputs_to_execute) this.dependencies(e.prompt, out, seen, order);
    const defs = this.nodeDefs();
    const progressNode = order.find((id) => String(e.prompt[id].class_type).includes('Sampler')) ?? order[0];
    const stepMs = () => this.promptDelayMs / (order.length + 1);
    const executed: string[] = [];
    let current: string | null = null;
    let status: 'success' | 'error' | 'interrupted' = 'success';
    try {
      addMessage('execution_start', { prompt_id: pid }, false);
      addMessage('execution_cached', { nodes: [], prompt_id: pid }, false);
      for (const id of order) {
        // an interrupt (or a stop) ends the wait at once, as ComfyUI checks between steps; a test that shortens
        // promptDelayMs shortens the running prompt too
        await this.sleepUnless(stepMs, () => e.interrupt || gen !== this.generation);
        check();
        current = id;
        this.lastNodeId = id;
        this.emitJson('executing', { node: id, display_node: id, prompt_id: pid }, cid);
        if (id === progressNode) {
          for (let v = 1; v <= 2; v++) {
            this.emitJson('progress', { value: v, max: 2, prompt_id: pid, node: id }, cid);
            if (v === 1) {
              const hdr = Buffer.alloc(8);
              hdr.writeUInt32BE(1, 0); // PREVIEW_IMAGE
              hdr.writeUInt32BE(2, 4); // PNG
              this.sendRaw(cid, Buffer.concat([hdr, makePng({ color: [128, 64, 200] })]), true);
            }
          }
        }
        const ui = await this.runNode(e, id, defs);
        executed.push(id);
        if (ui) {
          e.outputs[id] = ui;
          e.meta[id] = { node_id: id, display_node: id, parent_node: null, real_node_id: id };
          this.emitJson('executed', { node: id, display_node: id, output: ui, prompt_id: pid }, cid);
        }
      }
      await this.sleepUnless(stepMs, () => e.interrupt || gen !== this.generation);
      check();
      addMessage('execution_success', { prompt_id: pid }, false);
    } catch (err) {
      if (err instanceof StoppedError) return; // the "process" died: nothing reaches history
      if (err instanceof InterruptedError) {
        status = 'interrupted';
        addMessage(
          'execution_interrupted',
          { prompt_id: pid, node_id: current, node_type: current ? e.prompt[current].class_type : null, executed },
          true,
        );
      } else {
        status = 'error';
        addMessage(
          'execution_error',
          {
            prompt_id: pid,
            node_id: current,
            node_type: current ? e.prompt[current].class_type : null,
            executed,
            exception_message: String((err as Error)?.message ?? err),
            exception_type: 'Exception',
            traceback: [],
            current_inputs: {},
            current_outputs: {},
          },
          false,
        );
      }
    } finally {
      if (gen === this.generation) this.lastNodeId = null;
    }
    if (gen !== this.generation) return;
    // task_done
    e.state = status;
    e.end_time = Date.now();
    e.history = {
      prompt: e.queueItem(),
      outputs: e.outputs,
      status: { status_str: status === 'success' ? 'success' : 'error', completed: status === 'success', messages: e.messages },
      meta: e.meta,
    };
    this.history.delete(pid);
    this.history.set(pid, e);
    while (this.history.size > 10000) {
      const first = this.history.keys().next().value as string;
      this.history.delete(first);
      if (this.prompts.get(first)?.history) this.prompts.delete(first);
    }
    this.prompts.set(pid, e);
    if (this.running === e) this.running = null;
    this.queueUpdated();
    if (cid !== null) this.emitJson('executing', { node: null, prompt_id: pid }, cid);
    const ws = this.waiters.get(pid);
    if (ws) {
      this.waiters.delete(pid);
      for (const w of ws) w(e);
    }
  }

  private async runNode(e: StoredPrompt, id: string, defs: Record<string, NodeDef>): Promise<any | null> {
    const node = e.prompt[id];
    const inputs: Record<string, any> = isObj(node.inputs) ? node.inputs : {};
    const ct = node.class_type as string;
    if (!defs[ct]?.output_node) return null;
    const text: Record<string, string> = { prompt: pyJson(e.prompt) };
    const pnginfo = e.extra_data?.extra_pnginfo;
    if (isObj(pnginfo)) for (const [k, v] of Object.entries(pnginfo)) text[k] = pyJson(v);
    const png = makePng({ width: 2, height: 2, text });
    if (ct === 'SaveImage') {
      const prefix = typeof inputs.filename_prefix === 'string' ? inputs.filename_prefix : 'ComfyUI';
      const r = this.getSaveImagePath(prefix, this.outputDir, 2, 2);
      const file = `${r.filename.replace(/%batch_num%/g, '0')}_${String(r.counter).padStart(5, '0')}_.png`;
      await fsp.writeFile(path.join(r.full, file), png);
      return { images: [{ filename: file, subfolder: r.subfolder, type: 'output' }] };
    }
    if (ct === 'PreviewImage') {
      const alphabet = 'abcdefghijklmnopqrstupvxyz';
      let rnd = '';
      for (let i = 0; i < 5; i++) rnd += alphabet[crypto.randomInt(alphabet.length)];
      const r = this.getSaveImagePath('ComfyUI_temp_' + rnd, this.tempDir, 2, 2);
      const file = `${r.filename}_${String(r.counter).padStart(5, '0')}_.png`;
      await fsp.writeFile(path.join(r.full, file), png);
      return { images: [{ filename: file, subfolder: r.subfolder, type: 'temp' }] };
    }
    return null;
  }

  // ───── WebSocket ─────

  private sendRaw(sid: unknown, data: string | Buffer, binary: boolean): void {
    const targets: WebSocket[] = [];
    if (sid === null || sid === undefined) targets.push(...this.sockets.values());
    else if (typeof sid === 'string') {
      const ws = this.sockets.get(sid);
      if (ws) targets.push(ws);
    }
    for (const ws of targets) {
      if (ws.readyState !== WebSocket.OPEN) continue;
      try {
        ws.send(data, { binary }, () => {});
      } catch {
        /* send error: ignored like send_socket_catch_exception */
      }
    }
  }

  private emitJson(event: string, data: any, sid: unknown): void {
    this.sendRaw(sid, pyJson({ type: event, data }), false);
  }

  private onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => {});
    this.requests.push({
      method: req.method ?? '',
      rawPath: req.url ?? '',
      headers: { ...req.headers },
      rawHeaders: [...req.rawHeaders],
      bodySha256: EMPTY_SHA256,
      bodyLength: 0,
      at: Date.now(),
      ws: true,
      remoteAddress: req.socket.remoteAddress,
      complete: true,
    });
    const reject = (status: number, reason: string, text: string) => {
      if (!socket.writable) {
        socket.destroy();
        return;
      }
      socket.end(
        `HTTP/1.1 ${status} ${reason}\r\nServer: ${SERVER_HEADER}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`,
      );
    };
    try {
      if (!this.originAllowed(req)) return reject(403, 'Forbidden', 'Forbidden');
      const raw = req.url ?? '/';
      const qi = raw.indexOf('?');
      const p = percentDecode(qi === -1 ? raw : raw.slice(0, qi), [0x2f, 0x25]);
      const query = new URLSearchParams(qi === -1 ? '' : raw.slice(qi + 1));
      if (p !== '/ws' && p !== '/api/ws') {
        const found = this.findRoute(p, req.method ?? 'GET');
        if (!found) return reject(404, 'Not Found', '404: Not Found');
        return reject(400, 'Bad Request', 'Not a WebSocket endpoint');
      }
      if ((req.method ?? '').toUpperCase() !== 'GET') return reject(405, 'Method Not Allowed', '405: Method Not Allowed');
      if ((req.headers.upgrade ?? '').toLowerCase() !== 'websocket')
        return reject(400, 'Bad Request', 'Can "Upgrade" only to "WebSocket".');
      const requested = query.get('clientId') ?? '';
      this.wss.handleUpgrade(req, socket, head, (ws) => this.onWsConnection(ws, requested, raw));
    } catch {
      socket.destroy();
    }
  }

  private onWsConnection(ws: WebSocket, requested: string, rawPath: string): void {
    if (!this.server) {
      ws.terminate();
      return;
    }
    let sid = requested;
    if (sid)
      this.sockets.delete(sid); // "Reusing existing session, remove old"
    else sid = uuidHex();
    this.sockets.set(sid, ws);
    const info: SockInfo = { ws, sid, rawPath, firstMessage: true };
    this.allSockets.add(info);
    ws.on('error', () => {});
    ws.on('close', () => {
      this.allSockets.delete(info);
      this.sockets.delete(sid); // real: self.sockets.pop(sid, None) - even if a newer socket owns the sid now
    });
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      let msg: any;
      try {
        msg = JSON.parse(data.toString());
      } catch {
        return;
      }
      if (info.firstMessage && isObj(msg) && msg.type === 'feature_flags') {
        info.featureFlags = msg.data ?? {};
        if (ws.readyState === WebSocket.OPEN) ws.send(pyJson({ type: 'feature_flags', data: this.featureFlags() }), () => {});
      }
      info.firstMessage = false;
    });
    this.emitJson('status', { status: this.queueInfo(), sid }, sid);
    if (this.currentClientId === sid && this.lastNodeId !== null) this.emitJson('executing', { node: this.lastNodeId }, sid);
  }

  // ───── users / userdata ─────

  private usersFile(): string {
    return path.join(this.userDir, 'users.json');
  }
  private async saveUsers(): Promise<void> {
    await fsp.writeFile(this.usersFile(), pyJson(this.users));
  }

  private requestUser(c: Ctx): string {
    let user = 'default';
    if (this.multiUser && c.req.headers['comfy-user'] !== undefined) {
      const h = c.req.headers['comfy-user'];
      user = Array.isArray(h) ? h.join(', ') : h;
      if (user.startsWith('__')) throw new UnknownUserError('Unknown user: ' + user);
    }
    if (!Object.prototype.hasOwnProperty.call(this.users, user)) throw new UnknownUserError('Unknown user: ' + user);
    return user;
  }

  /** get_request_user_filepath: null when the path leaves the user's directory */
  private userFilepath(c: Ctx, file: string | null, createDir = true): string | null {
    const user = this.requestUser(c);
    const userRoot = path.join(this.userDir, user);
    if (!isInside(this.userDir, userRoot) || user.startsWith('__')) return null;
    let p = userRoot;
    if (file !== null) {
      if (file.includes('%')) file = percentDecode(file);
      if (file.includes('\0')) return null;
      p = path.resolve(pyJoin(userRoot, file));
      if (!isInside(userRoot, p) || !realInside(this.userDir, p)) return null;
    }
    const parent = path.dirname(p);
    if (createDir && !fs.existsSync(parent)) fs.mkdirSync(parent, { recursive: true });
    return p;
  }

  getUsers(c: Ctx): void {
    if (this.multiUser) return this.json(c, { storage: 'server', users: this.users });
    return this.json(c, { storage: 'server', migrated: fs.existsSync(path.join(this.userDir, 'default')) });
  }

  async postUsers(c: Ctx): Promise<void> {
    const j = await bodyJson(c.body);
    if (!isObj(j) || typeof j.username !== 'string') return this.json(c, { error: 'username not provided' }, 400);
    const username: string = j.username;
    if (Object.values(this.users).includes(username)) return this.json(c, { error: 'Duplicate username.' }, 400);
    const name = username.trim();
    if (!name) return this.json(c, { error: 'username not provided' }, 400);
    if (name.startsWith('__')) return this.json(c, { error: 'System User prefix not allowed' }, 400);
    const base = name.replace(/[^a-zA-Z0-9-_]+/g, '-');
    if (base.startsWith('__')) return this.json(c, { error: 'System User prefix not allowed' }, 400);
    const id = base + '_' + uuid4();
    this.users[id] = name;
    await this.saveUsers();
    return this.json(c, id);
  }

  listUserdata(c: Ctx): void {
    const dir = c.query.get('dir') ?? '';
    if (!dir) return this.sendText(c, 400, 'Directory not provided');
    const p = this.userFilepath(c, dir);
    if (!p) return this.sendText(c, 403, 'Invalid directory');
    if (!fs.existsSync(p)) return this.sendText(c, 404, 'Directory not found');
    const recurse = (c.query.get('recurse') ?? '').toLowerCase() === 'true';
    const fullInfo = (c.query.get('full_info') ?? '').toLowerCase() === 'true';
    const split = (c.query.get('split') ?? '').toLowerCase() === 'true';
    let files: string[];
    if (recurse) files = walkFiles(p);
    else {
      files = [];
      try {
        for (const e of fs.readdirSync(p, { withFileTypes: true })) {
          if (e.name.startsWith('.')) continue;
          try {
            if (fs.statSync(path.join(p, e.name)).isFile()) files.push(e.name);
          } catch {
            /* dangling */
          }
        }
      } catch {
        files = [];
      }
    }
    return this.json(
      c,
      files.map((rel) => {
        if (fullInfo) return this.fileInfo(path.join(p, rel), p);
        return split ? [rel, ...rel.split('/')] : rel;
      }),
    );
  }

  private fileInfo(file: string, relTo: string): any {
    const st = fs.statSync(file);
    return {
      path: path.relative(relTo, file).split(path.sep).join('/'),
      size: st.size,
      modified: Math.floor(st.mtimeMs),
      created: Math.floor(st.ctimeMs),
    };
  }

  listUserdataV2(c: Ctx): void {
    let rel = c.query.get('path') ?? '';
    rel = percentDecode(rel);
    let base: string | null;
    let target: string | null;
    try {
      base = this.userFilepath(c, null, false);
      target = rel ? this.userFilepath(c, rel, false) : base;
    } catch (e) {
      if (e instanceof UnknownUserError) return this.sendText(c, 403, 'Invalid user specified in request');
      throw e;
    }
    if (!base || !target) return this.sendText(c, 400, 'Invalid path requested');
    if (!fs.existsSync(target)) {
      if (target === base) return this.json(c, []);
      return this.sendText(c, 404, 'Requested path not found');
    }
    if (!fs.statSync(target).isDirectory()) return this.sendText(c, 400, 'Requested path is not a directory');
    const results: any[] = [];
    const walk = (dir: string) => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const abs = path.join(dir, e.name);
        const r = path.relative(base!, abs).split(path.sep).join('/');
        if (e.isDirectory()) {
          results.push({ name: e.name, path: r, type: 'directory' });
          walk(abs);
        } else {
          const st = fs.statSync(abs);
          results.push({ name: e.name, path: r, type: 'file', size: st.size, modified: st.mtimeMs / 1000 });
        }
      }
    };
    walk(target);
    results.sort(
      (a, b) =>
        Number(a.type !== 'directory') - Number(b.type !== 'directory') ||
        (a.name.toLowerCase() < b.name.toLowerCase() ? -1 : a.name.toLowerCase() > b.name.toLowerCase() ? 1 : 0),
    );
    return this.json(c, results);
  }

  private userDataPath(c: Ctx, checkExists: boolean, param = 'file'): string | null {
    const file = c.params[param];
    if (!file) {
      this.sendEmpty(c, 400);
      return null;
    }
    const p = this.userFilepath(c, file);
    if (!p) {
      this.sendEmpty(c, 403);
      return null;
    }
    if (checkExists && !fs.existsSync(p)) {
      this.sendEmpty(c, 404);
      return null;
    }
    return p;
  }

  async getUserdata(c: Ctx): Promise<void> {
    const p = this.userDataPath(c, true);
    if (!p) return;
    let st: fs.Stats;
    try {
      st = await fsp.stat(p);
    } catch {
      return this.sendEmpty(c, 404);
    }
    if (!st.isFile()) return this.sendEmpty(c, 404);
    // Older ComfyUI (web.FileResponse) behaviour on purpose - the worst case for the gateway: the guessed type
    // is served inline, no Content-Disposition, no nosniff (newer releases force attachment + nosniff).
    c.res.writeHead(200, { 'Content-Type': mimeOf(p), 'Content-Length': st.size });
    if (c.head) return void c.res.end();
    c.res.end(await fsp.readFile(p));
  }

  async postUserdata(c: Ctx): Promise<void> {
    const p = this.userDataPath(c, false);
    if (!p) return;
    // 7914c47 reads request.query["overwrite"] without a default: a save or move without it is a 500 there.
    if (this.legacy && c.query.get('overwrite') === null)
      return this.sendText(c, 500, '500 Internal Server Error\n\nServer got itself in trouble');
    const overwrite = (c.query.get('overwrite') ?? 'true') !== 'false';
    const fullInfo = (c.query.get('full_info') ?? 'false').toLowerCase() === 'true';
    if (!overwrite && fs.existsSync(p)) return this.sendText(c, 409, 'File already exists');
    try {
      if (fs.existsSync(p) && fs.statSync(p).isDirectory()) throw new Error('is a directory');
      const tmp = path.join(path.dirname(p), '.tmp-' + crypto.randomBytes(6).toString('hex'));
      await fsp.writeFile(tmp, bodyStream(c.body));
      await fsp.rename(tmp, p);
    } catch {
      return this.sendEmpty(c, 400);
    }
    const userRoot = this.userFilepath(c, null)!;
    return this.json(c, fullInfo ? this.fileInfo(p, userRoot) : path.relative(userRoot, p));
  }

  async deleteUserdata(c: Ctx): Promise<void> {
    const p = this.userDataPath(c, true);
    if (!p) return;
    try {
      await fsp.rm(p);
    } catch {
      return this.sendEmpty(c, 400);
    }
    return this.sendEmpty(c, 204);
  }

  async moveUserdata(c: Ctx): Promise<void> {
    const src = this.userDataPath(c, true);
    if (!src) return;
    const dest = this.userDataPath(c, false, 'dest');
    if (!dest) return;
    // 7914c47 reads request.query["overwrite"] without a default: a save or move without it is a 500 there.
    if (this.legacy && c.query.get('overwrite') === null)
      return this.sendText(c, 500, '500 Internal Server Error\n\nServer got itself in trouble');
    const overwrite = (c.query.get('overwrite') ?? 'true') !== 'false';
    const fullInfo = (c.query.get('full_info') ?? 'false').toLowerCase() === 'true';
    if (!overwrite && fs.existsSync(dest)) return this.sendText(c, 409, 'File already exists');
    await fsp.rename(src, dest);
    const userRoot = this.userFilepath(c, null)!;
    return this.json(c, fullInfo ? this.fileInfo(dest, userRoot) : path.relative(userRoot, dest));
  }

  private settingsFile(c: Ctx): string {
    const p = this.userFilepath(c, 'comfy.settings.json');
    if (!p) throw new HttpError(403, 'Invalid user');
    return p;
  }
  private readSettings(file: string): Record<string, any> {
    try {
      const j = JSON.parse(fs.readFileSync(file, 'utf8'));
      return isObj(j) ? j : {};
    } catch {
      return {};
    }
  }

  getSettings(c: Ctx, id: string | null): void {
    const s = this.readSettings(this.settingsFile(c));
    if (id === null) return this.json(c, s);
    return this.json(c, Object.prototype.hasOwnProperty.call(s, id) ? s[id] : null);
  }

  async postSettings(c: Ctx, id: string | null): Promise<void> {
    const file = this.settingsFile(c);
    const j = await bodyJson(c.body);
    const s = this.readSettings(file);
    if (id === null) {
      if (!isObj(j)) throw new HttpError(400, 'expected a JSON object');
      Object.assign(s, j);
    } else s[id] = j;
    await fsp.writeFile(file, JSON.stringify(s, null, 4));
    return this.sendEmpty(c, 200);
  }
}

// ───────────────────────────────────────────── origin-check helpers ─────────────────────────────────────────────

function parseHostPort(hostport: string): { hostname: string | null; port: number | null } {
  // urllib.parse.urlsplit('//' + host)
  let h = hostport;
  const at = h.lastIndexOf('@');
  if (at !== -1) h = h.slice(at + 1);
  let hostname: string;
  let portStr = '';
  if (h.startsWith('[')) {
    const close = h.indexOf(']');
    hostname = close === -1 ? h.slice(1) : h.slice(1, close);
    const rest = close === -1 ? '' : h.slice(close + 1);
    if (rest.startsWith(':')) portStr = rest.slice(1);
  } else {
    const colon = h.indexOf(':');
    hostname = colon === -1 ? h : h.slice(0, colon);
    if (colon !== -1) portStr = h.slice(colon + 1);
  }
  const port = /^\d+$/.test(portStr) ? parseInt(portStr, 10) : null;
  return { hostname: hostname ? hostname.toLowerCase() : null, port };
}

function parseOrigin(origin: string): { netloc: string; hostname: string | null; port: number | null } {
  // urllib.parse.urlparse(origin)
  const m = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/([^/?#]*)/.exec(origin);
  const netloc = m ? m[1] : '';
  const hp = parseHostPort(netloc);
  return { netloc, hostname: hp.hostname, port: hp.port };
}

function isLoopbackHost(h: string | null): boolean {
  if (!h) return false;
  if (h === 'localhost' || h.endsWith('.localhost')) return true;
  if (/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h)) return true;
  if (h === '::1' || h === '0:0:0:0:0:0:0:1') return true;
  if (/^::ffff:127\./i.test(h)) return false; // python: IPv4-mapped loopback is_loopback == False
  return false;
}

function commonPath(a: string, b: string): string {
  const as = path.resolve(a).split('/');
  const bs = path.resolve(b).split('/');
  const out: string[] = [];
  for (let i = 0; i < Math.min(as.length, bs.length) && as[i] === bs[i]; i++) out.push(as[i]);
  return out.join('/') || '/';
}

// ───────────────────────────────────────────── factory ─────────────────────────────────────────────

/** temp dirs still to remove; swept synchronously at process exit in case a test forgot close() */
const LIVE_TEMP_DIRS = new Set<string>();
let exitHookInstalled = false;
function trackTempDir(dir: string): void {
  LIVE_TEMP_DIRS.add(dir);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const d of LIVE_TEMP_DIRS) {
      try {
        fs.rmSync(d, { recursive: true, force: true });
      } catch {
        /* ignore */
      }
    }
  });
}

export async function startFakeComfy(opts: FakeComfyOptions = {}): Promise<FakeComfy> {
  let baseDir: string;
  let created = false;
  if (opts.baseDir) {
    await fsp.mkdir(opts.baseDir, { recursive: true });
    baseDir = fs.realpathSync(opts.baseDir);
  } else {
    baseDir = fs.realpathSync(await fsp.mkdtemp(path.join(os.tmpdir(), 'fake-comfy-')));
    created = true;
    trackTempDir(baseDir);
  }
  const spoolDir = fs.realpathSync(await fsp.mkdtemp(path.join(os.tmpdir(), 'fake-comfy-spool-')));
  trackTempDir(spoolDir);
  const s = new FakeComfyServer(opts, baseDir, created, spoolDir);
  await s.init(opts);
  await s.start();
  return s;
}

/** A complete, valid txt2img prompt for the fake (checkpoint -> KSampler -> VAEDecode -> SaveImage). */
export function sampleWorkflow(
  filenamePrefix = 'ComfyUI',
  opts: { seed?: number; text?: string; ckpt?: string } = {},
): Record<string, any> {
  return {
    '4': { class_type: 'CheckpointLoaderSimple', inputs: { ckpt_name: opts.ckpt ?? 'fake_model.safetensors' } },
    '5': { class_type: 'EmptyLatentImage', inputs: { width: 512, height: 512, batch_size: 1 } },
    '6': { class_type: 'CLIPTextEncode', inputs: { text: opts.text ?? 'a photo of a cat', clip: ['4', 1] } },
    '7': { class_type: 'CLIPTextEncode', inputs: { text: 'blurry', clip: ['4', 1] } },
    '3': {
      class_type: 'KSampler',
      inputs: {
        seed: opts.seed ?? 42,
        steps: 20,
        cfg: 7,
        sampler_name: 'euler',
        scheduler: 'normal',
        denoise: 1,
        model: ['4', 0],
        positive: ['6', 0],
        negative: ['7', 0],
        latent_image: ['5', 0],
      },
    },
    '8': { class_type: 'VAEDecode', inputs: { samples: ['3', 0], vae: ['4', 2] } },
    '9': { class_type: 'SaveImage', inputs: { filename_prefix: filenamePrefix, images: ['8', 0] } },
  };
}
