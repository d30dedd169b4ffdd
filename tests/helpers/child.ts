import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/** The compiled entry point; `npm test` builds dist/ before jest runs. */
export const MAIN_JS = path.resolve(__dirname, '..', '..', 'dist', 'gateway', 'main.js');

/** A gateway running as its own process (the way `npm start` runs it). */
export interface ChildGateway {
  proc: ChildProcess;
  url: string;
  port: number;
  stderr: () => string;
  stdout: () => string;
  /** resident set size in bytes, from /proc */
  rss(): number;
  exited: Promise<number | null>;
  kill(signal?: NodeJS.Signals): void;
}

/** Spawns dist/gateway/main.js with the given CLI args and waits for its "listening on" line (a deadline, not a sleep: a loaded machine can take many seconds to start node). */
export async function spawnGateway(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 60_000): Promise<ChildGateway> {
  if (!fs.existsSync(MAIN_JS)) throw new Error(`${MAIN_JS} is missing: run \`npm run build\` (npm test does)`);
  const proc = spawn(process.execPath, [MAIN_JS, ...args], { env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const url = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`gateway did not start:\n${err}\n${out}`)), timeoutMs);
    const check = () => {
      const m = /listening on (https?:\/\/[^\s]+)/.exec(err);
      if (m) {
        clearTimeout(t);
        resolve(m[1]);
      }
    };
    proc.stderr!.on('data', check);
    void exited.then((code) => {
      clearTimeout(t);
      reject(new Error(`gateway exited with ${code} before listening:\n${err}`));
    });
  });
  return {
    proc,
    url,
    port: Number(new URL(url).port),
    stderr: () => err,
    stdout: () => out,
    rss() {
      const status = fs.readFileSync(`/proc/${proc.pid}/status`, 'utf8');
      return Number(/VmRSS:\s+(\d+)/.exec(status)![1]) * 1024;
    },
    exited,
    kill: (signal = 'SIGTERM') => void proc.kill(signal),
  };
}

/** Runs main.js to completion (for start-up refusals) and returns its exit code and output. */
export function runGateway(
  args: string[],
  env: NodeJS.ProcessEnv = {},
  timeoutMs = 60_000,
): Promise<{ code: number | null; stderr: string; stdout: string }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [MAIN_JS, ...args], {
      env: { PATH: process.env.PATH, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    proc.stdout.on('data', (d) => (out += d));
    proc.stderr.on('data', (d) => (err += d));
    const t = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`main.js did not exit:\n${err}`));
    }, timeoutMs);
    proc.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code, stderr: err, stdout: out });
    });
  });
}
