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
  return pino(
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
}

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
