import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createAccessLog, createLogger, type AccessFields } from '../gateway/log';

/** Lines in `file` once `n` are there (the destination writes asynchronously). */
async function lines(file: string, n: number): Promise<string[]> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const got = fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean) : [];
    if (got.length >= n || Date.now() > deadline) return got;
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('the access line', () => {
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-access-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('is byte for byte what pino writes for the same fields, escapes and all', async () => {
    const file = path.join(dir, 'log.jsonl');
    const logger = createLogger({ levels: ['info'], file, stdout: false });
    const write = createAccessLog(logger);
    const cases: AccessFields[] = [
      { method: 'GET', path: '/view?x="\u2028\u0000é\\', status: 200, ms: 0.123456, ip: '::ffff:10.0.0.1', user: 'ali"ce\n' },
      { method: 'POST', path: '/prompt', status: 401, ms: 12, ip: '127.0.0.1', user: undefined },
      { method: undefined, path: '/', status: 500, ms: NaN, ip: '::1', user: '' },
    ];
    for (const f of cases) {
      logger.info({ ...f }, 'request');
      write(f);
    }
    const got = await lines(file, cases.length * 2);
    expect(got).toHaveLength(cases.length * 2);
    for (let i = 0; i < cases.length; i++) {
      const [viaPino, ours] = [got[2 * i], got[2 * i + 1]];
      // the time may tick between the two lines; everything else is the same bytes
      const strip = (l: string) => l.replace(/"time":"[^"]+"/, '"time":0');
      expect(strip(ours)).toBe(strip(viaPino));
      expect(JSON.parse(ours).msg).toBe('request');
    }
  });

  it('follows the level: nothing below info, and a logger it does not know goes through pino', async () => {
    const file = path.join(dir, 'warn.jsonl');
    const quiet = createLogger({ levels: ['warn'], file, stdout: false });
    createAccessLog(quiet)({ method: 'GET', path: '/', status: 200, ms: 1, ip: '::1', user: undefined });
    quiet.warn('marker');
    const got = await lines(file, 1);
    expect(got.map((l) => JSON.parse(l).msg)).toEqual(['marker']);

    const seen: string[] = [];
    const pino = (await import('pino')).default;
    const foreign = pino({ base: { pid: 7 } }, { write: (l: string) => void seen.push(l) });
    createAccessLog(foreign)({ method: 'GET', path: '/x', status: 204, ms: 2, ip: '::1', user: 'bob' });
    expect(seen).toHaveLength(1);
    expect(JSON.parse(seen[0])).toMatchObject({ pid: 7, msg: 'request', path: '/x', status: 204, user: 'bob' });
  });
});
