import fs from 'node:fs';
import path from 'node:path';
import pino, { type Logger } from 'pino';

export type { Logger };

const ORDER = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;

/** The gateway's pino logger: JSON lines to stdout and, when configured, the `log` file. */
export function createLogger(opts: { levels: string[]; file: string | null; stdout?: boolean }): Logger {
  const levels = opts.levels.map((l) => l.toLowerCase());
  const level = levels.includes('silent')
    ? 'silent'
    : ORDER.find((l) => levels.includes(l)) ?? 'info';
  const streams: pino.StreamEntry[] = [];
  if (opts.stdout !== false) streams.push({ level: level as pino.Level, stream: pino.destination({ fd: 1, sync: false }) });
  if (opts.file) {
    fs.mkdirSync(path.dirname(opts.file), { recursive: true });
    streams.push({ level: level as pino.Level, stream: pino.destination({ dest: opts.file, sync: false, mkdir: true }) });
  }
  return pino(
    {
      level,
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
      // Defence in depth: nothing we log should carry these, but if it ever does they are censored.
      redact: {
        paths: [
          'password', '*.password', 'new_user_password', '*.new_user_password', 'token', '*.token',
          'headers.authorization', 'headers.cookie', 'headers["x-api-key"]', 'apiKey', 'api_key', 'secret',
        ],
        censor: '[redacted]',
      },
    },
    streams.length ? pino.multistream(streams) : pino.destination('/dev/null'),
  );
}

const SECRET_QUERY = /([?&](?:api_key|token|access_token|code|state)=)[^&#]*/gi;

/** A URL safe for logs: credential-bearing query values replaced. */
export function redactUrl(url: string): string {
  return url.replace(SECRET_QUERY, '$1[redacted]');
}
