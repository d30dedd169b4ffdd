import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { MALLOC_ENV } from '../gateway/heapTuning';

/** A gateway process for a benchmark: the compiled entry point with `config` written into `dir`. */
export async function spawnBenchGateway(opts: {
  dir: string;
  config: Record<string, unknown>;
  args?: string[];
  command?: string[];
  /** extra environment of the gateway process */
  env?: Record<string, string>;
}): Promise<{ proc: ChildProcess; url: string }> {
  const file = path.join(opts.dir, 'config.json');
  fs.writeFileSync(file, JSON.stringify({ host: '127.0.0.1', port: 0, data_dir: 'data', log_levels: ['warn'], log: null, ...opts.config }));
  const command = opts.command ?? [path.join(__dirname, '..', 'gateway', 'main.js')];
  const proc = spawn(process.execPath, [...command, '--config', file, ...(opts.args ?? [])], {
    cwd: opts.dir,
    env: { ...process.env, ...MALLOC_ENV, ...opts.env }, // as the Dockerfile and the systemd unit run it
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const url = await new Promise<string>((resolve, reject) => {
    let err = '';
    proc.stderr!.on('data', (d) => {
      err += d;
      const m = /listening on (\S+)/.exec(err);
      if (m) resolve(m[1]);
    });
    proc.on('exit', (c) => reject(new Error(`gateway exited ${c}: ${err}`)));
  });
  return { proc, url };
}
