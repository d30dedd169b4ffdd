/* The processes a benchmark measures: the fake ComfyUI, the gateway and nginx, each in its own process. */
import { fork, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { MALLOC_ENV } from '../gateway/heapTuning';

/** The fake ComfyUI in its own process, driven over IPC. */
export interface Fake {
  proc: ChildProcess;
  url: string;
  outputDir: string;
  send(m: object, reply: string): Promise<void>;
}

/** Starts bench/fakeProcess.js (the recording fake ComfyUI) and waits for its URL. */
export async function startFake(): Promise<Fake> {
  const proc = fork(path.join(__dirname, 'fakeProcess.js'), { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const ready = await new Promise<{ url: string; outputDir: string }>((resolve) =>
    proc.once('message', (m) => resolve(m as { url: string; outputDir: string })),
  );
  return {
    proc,
    url: ready.url,
    outputDir: ready.outputDir,
    send: (m, reply) =>
      new Promise((resolve) => {
        const on = (r: { cmd: string }) => {
          if (r.cmd === reply) {
            proc.off('message', on);
            resolve();
          }
        };
        proc.on('message', on);
        proc.send(m);
      }),
  };
}

/** bench/bareProxy.js (a bare `node:http` pipe, the calibration point) in front of `upstream`. */
export async function startBare(upstream: string): Promise<{ proc: ChildProcess; url: string }> {
  const proc = fork(path.join(__dirname, 'bareProxy.js'), [upstream], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const ready = await new Promise<{ url: string }>((resolve) => proc.once('message', (m) => resolve(m as { url: string })));
  return { proc, url: ready.url };
}

/** A gateway process with an IPC channel to its bench-only event-loop probe (bench/eldProbe.js). */
export interface BenchGateway {
  proc: ChildProcess;
  url: string;
  /** asks the probe inside the gateway; resolves with its answer */
  ask<T>(cmd: string): Promise<T>;
}

/**
 * Runs the compiled gateway with `config` written into `dir`. The probe is preloaded with --require, so nothing
 * of it is in the gateway's own code; BENCH_PROFILE=DIR adds --cpu-prof (written when the gateway exits).
 */
export async function startGateway(opts: { dir: string; config: Record<string, unknown>; args: string[] }): Promise<BenchGateway> {
  const file = path.join(opts.dir, 'config.json');
  fs.writeFileSync(file, JSON.stringify({ host: '127.0.0.1', port: 0, data_dir: 'data', ...opts.config }));
  const prof = process.env.BENCH_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve(process.env.BENCH_PROFILE)}`] : [];
  const main = path.join(__dirname, '..', 'gateway', 'main.js');
  const proc = spawn(process.execPath, [...prof, '--require', path.join(__dirname, 'eldProbe.js'), main, '--config', file, ...opts.args], {
    cwd: opts.dir,
    // as the Dockerfile and the systemd unit run it
    env: { ...process.env, ...MALLOC_ENV },
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
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
  return {
    proc,
    url,
    ask: <T>(cmd: string) =>
      new Promise<T>((resolve) => {
        const on = (m: { cmd: string; value: T }) => {
          if (m.cmd !== cmd) return;
          proc.off('message', on);
          resolve(m.value);
        };
        proc.on('message', on);
        proc.send({ cmd });
      }),
  };
}

/** Stops a child and waits until it is gone (so a --cpu-prof file is complete). */
export function stop(proc: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => proc.kill('SIGKILL'), 10_000);
    proc.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    proc.kill(signal);
  });
}

/** Resident set size of a process in bytes (Linux /proc), 0 when unknown. */
export function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** Debian's nginx binary when installed (`apt-get install nginx`); the bench never installs it. */
export function findNginx(): string | null {
  for (const p of ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/local/nginx/sbin/nginx']) if (fs.existsSync(p)) return p;
  const w = spawnSync('which', ['nginx'], { encoding: 'utf8' });
  return w.status === 0 ? w.stdout.trim() : null;
}

/**
 * nginx as a plain reverse proxy in front of `upstream`: one worker, keep-alive upstream connections, WebSocket
 * upgrade on /ws, access log to a file (the gateway logs every request too). Runs in the foreground (`daemon off`)
 * on the first free port of `ports`.
 */
export async function startNginx(
  bin: string,
  upstream: string,
  dir: string,
  ports: number[],
): Promise<{ proc: ChildProcess; url: string }> {
  let port = 0;
  for (const p of ports)
    if (await portFree(p)) {
      port = p;
      break;
    }
  if (!port) throw new Error(`no free port in ${ports[0]}-${ports[ports.length - 1]} for nginx`);
  const u = new URL(upstream);
  const conf = `
daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 8192; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fcgi;
  uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  upstream comfy { server ${u.hostname}:${u.port}; keepalive 64; }
  map $http_upgrade $connection_upgrade { default upgrade; '' ''; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://comfy;
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 300s;
    }
  }
}
`;
  fs.writeFileSync(path.join(dir, 'nginx.conf'), conf);
  const proc = spawn(bin, ['-p', dir, '-c', path.join(dir, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`nginx exited ${proc.exitCode}`);
    if (!(await portFree(port))) return { proc, url };
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('nginx did not start');
}
