import fs from 'node:fs';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';
import { queryParamName, TOKEN_QUERY_PARAMS } from './auth/chain';

export type { Logger };

/** pino's isoTime, formatted once per millisecond: a busy gateway logs many lines in the same one. */
function isoTimeEachMs(): () => string {
  let last = -1;
  let text = '';
  return () => {
    const now = Date.now();
    if (now !== last) {
      last = now;
      text = `,"time":"${new Date(now).toISOString()}"`;
    }
    return text;
  };
}

const ORDER = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;

/**
 * The gateway's pino logger: to stdout (human-readable when `pretty`, i.e. stdout is a terminal; JSON lines
 * otherwise, for journald and log shippers) and, when configured, JSON lines to the `log` file.
 */
export function createLogger(opts: { levels: string[]; file: string | null; stdout?: boolean; pretty?: boolean }): Logger {
  const levels = opts.levels.map((l) => l.toLowerCase());
  const level = levels.includes('silent') ? 'silent' : (ORDER.find((l) => levels.includes(l)) ?? 'info');
  const streams: pino.StreamEntry[] = [];
  if (opts.stdout !== false) {
    const stream = opts.pretty
      ? pretty({ destination: 1, colorize: true, translateTime: 'SYS:HH:MM:ss', ignore: 'pid,hostname', singleLine: true })
      : pino.destination({ fd: 1, sync: false });
    streams.push({ level: level as pino.Level, stream });
  }
  if (opts.file) {
    fs.mkdirSync(path.dirname(opts.file), { recursive: true });
    // Created 0600 like every other data file (it names users and addresses); an older, wider file is narrowed.
    fs.closeSync(fs.openSync(opts.file, 'a', 0o600));
    if ((fs.statSync(opts.file).mode & 0o077) !== 0) fs.chmodSync(opts.file, 0o600);
    streams.push({ level: level as pino.Level, stream: pino.destination({ dest: opts.file, sync: false, mkdir: true }) });
  }
  const logger = pino(
    {
      level,
      base: undefined,
      timestamp: isoTimeEachMs(),
      // Defence in depth: nothing we log should carry these, but if it ever does they are censored.
      redact: {
        paths: [
          'password',
          '*.password',
          'new_user_password',
          '*.new_user_password',
          'token',
          '*.token',
          'headers.authorization',
          'headers.cookie',
          'headers["x-api-key"]',
          'apiKey',
          'api_key',
          'secret',
        ],
        censor: '[redacted]',
      },
    },
    streams.length ? pino.multistream(streams) : pino.destination('/dev/null'),
  );
  made.add(logger);
  return logger;
}

/** Loggers createLogger made: their line format is known (createAccessLog writes theirs directly). */
const made = new WeakSet<Logger>();

const SECRET_PARAMS = new Set([...TOKEN_QUERY_PARAMS, 'access_token', 'code', 'state']);

/**
 * A URL safe for logs: credential-bearing query values replaced. Names are compared as a query parser reads them
 * (percent-decoded, case-insensitive), because `?%61pi_key=` is a credential to the chain too.
 */
export function redactUrl(url: string): string {
  const q = url.indexOf('?');
  if (q < 0) return url;
  const parts = url
    .slice(q + 1)
    .split('&')
    .map((part) => {
      const eq = part.indexOf('=');
      if (eq < 0) return part;
      const name = part.slice(0, eq);
      // a malformed escape: a query parser keeps it literally, so compare it literally
      const decoded = queryParamName(part) ?? name;
      return SECRET_PARAMS.has(decoded.toLowerCase()) ? `${name}=[redacted]` : part;
    });
  return url.slice(0, q + 1) + parts.join('&');
}

/** The fields of one access line (the gateway's own, never user-supplied keys). */
export interface AccessFields {
  method: string | undefined;
  path: string;
  status: number;
  ms: number;
  ip: string;
  user: string | undefined;
}

type Internals = Record<symbol, unknown>;

/**
 * Writes the access line of every request, byte for byte what `logger.info(fields, 'request')` writes (level, the
 * logger's own time and bindings, the fields, msg), without pino's general path: serialising through pino and its
 * redaction was a fifth of the CPU of a small proxied request, the single largest cost the gateway added. The
 * fields are fixed and already safe to log (the path went through redactUrl), so redaction has nothing to do.
 */
export function createAccessLog(logger: Logger): (f: AccessFields) => void {
  const s = pino.symbols;
  const l = logger as unknown as Internals;
  const stream = l[s.streamSym] as { write(line: string): void } & Record<string | symbol, unknown>;
  const time = l[s.timeSym] as (() => string) | undefined;
  // Only a logger createLogger made is known to write lines this way; any other (a test's, a child) keeps pino's path.
  const plain = made.has(logger) && typeof stream?.write === 'function' && typeof time === 'function';
  const level = (logger.levels.values as Record<string, number>).info;
  return (f) => {
    if (!logger.isLevelEnabled('info')) return;
    if (!plain) return void logger.info({ ...f }, 'request');
    const bindings = (l[s.chindingsSym] as string | undefined) ?? '';
    let line = `{"level":${level}${time!()}${bindings}`;
    if (f.method !== undefined) line += `,"method":${JSON.stringify(f.method)}`;
    line += `,"path":${JSON.stringify(f.path)}`;
    line += `,"status":${f.status},"ms":${Number.isFinite(f.ms) ? f.ms : null},"ip":${JSON.stringify(f.ip)}`;
    if (f.user !== undefined) line += `,"user":${JSON.stringify(f.user)}`;
    line += ',"msg":"request"}\n';
    // A multistream picks its destinations by the level of the line being written (pino sets the same fields).
    if (stream[s.needsMetadataGsym]) {
      stream.lastLevel = level;
      stream.lastMsg = 'request';
      stream.lastObj = f;
      stream.lastTime = '';
      stream.lastLogger = logger;
    }
    stream.write(line);
  };
}
