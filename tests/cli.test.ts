/**
 * The `comfyui-gateway` executable as an operator runs it: the compiled bin (dist/, built by `npm test`), its help,
 * version and exit codes, a busy port, the start-up line, and the build-once script that `npm start` runs.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { spawnGateway, type ChildGateway } from './helpers/child';
import { startFakeComfy, type FakeComfy } from './helpers/fakeComfy';
import { clientTraffic } from './helpers/traffic';

const ROOT = path.resolve(__dirname, '..');
const BIN = path.join(ROOT, 'dist', 'gateway', 'bin.js');
const KEY = 'cli-test-key-0123456789abcdef';

function run(
  args: string[],
  opts: { cwd?: string; timeoutMs?: number } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [BIN, ...args], {
      cwd: opts.cwd ?? os.tmpdir(),
      env: { PATH: process.env.PATH },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`${args.join(' ')} did not exit:\n${stderr}`));
    }, opts.timeoutMs ?? 30_000);
    p.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

const dirs: string[] = [];
function tmp(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-cli-'));
  dirs.push(d);
  return d;
}
afterAll(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

// Every test spawns node several times; a loaded machine can take seconds per start.
jest.setTimeout(120_000);

describe('comfyui-gateway executable', () => {
  test('package.json names the bin, and it is the compiled dist/gateway/bin.js with a shebang', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    expect(pkg.bin).toEqual({ 'comfyui-gateway': 'dist/gateway/bin.js' });
    expect(fs.readFileSync(BIN, 'utf8').startsWith('#!/usr/bin/env node')).toBe(true);
  });

  test('--help, -h and help: usage with exit codes on stdout, exit 0; --version prints package.json version', async () => {
    for (const args of [['--help'], ['-h'], ['help'], ['serve', '--help'], ['--port', '1', '--help']]) {
      const r = await run(args);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/^usage: comfyui-gateway/);
      expect(r.stdout).toMatch(/exit codes:[\s\S]*0 [\s\S]*1 [\s\S]*2 /);
      expect(r.stderr).toBe('');
    }
    const version = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version;
    for (const flag of ['--version', '-V']) expect(await run([flag])).toMatchObject({ code: 0, stdout: `comfyui-gateway ${version}\n` });
  });

  test('sub-command help: users --help and help users exit 0; bad commands and flags exit 2', async () => {
    for (const args of [
      ['users', '--help'],
      ['help', 'users'],
    ]) {
      const r = await run(args);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/usage: comfyui-gateway users <command>[\s\S]*add NAME[\s\S]*Exit codes/);
    }
    const unknown = await run(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown command "frobnicate"/);
    const flag = await run(['--frobnicate']);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toMatch(/frobnicate/);
    const users = await run(['users', 'frobnicate']);
    expect(users.code).toBe(2);
  });

  test('--config twice is refused (exit 2) by the gateway and by users, and nothing is written', async () => {
    const dir = tmp();
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ data_dir: './data', bcrypt_cost: 4 }));
    const twice = await run(['users', 'list', '--config', 'config.json', '--config', 'config.json'], { cwd: dir });
    expect(twice.code).toBe(2);
    expect(twice.stderr).toMatch(/--config given more than once/);
    expect(fs.existsSync(path.join(dir, 'data'))).toBe(false);
    const serveTwice = await run(['--config', 'config.json', '--config', 'other.json'], { cwd: dir });
    expect(serveTwice.code).toBe(2);
    expect(serveTwice.stderr).toBe('comfyui-gateway: Invalid configuration:\n  - command line: --config given more than once\n');
    expect(fs.existsSync(path.join(dir, 'data'))).toBe(false);
  });
});

describe('start-up', () => {
  let fake: FakeComfy;
  const children: ChildGateway[] = [];
  beforeAll(async () => {
    fake = await startFakeComfy();
  });
  afterAll(async () => {
    for (const c of children) {
      c.kill('SIGKILL');
      await c.exited;
    }
    await fake.close();
  });

  test('a busy port: exit 1 and exactly one clear line on stderr, nothing proxied', async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      const dir = tmp();
      const before = clientTraffic(fake).length;
      const r = await run(['--host', '127.0.0.1', '--port', String(port), '--upstream', fake.url, '--data-dir', dir, '--api-key', KEY], {
        cwd: dir,
      });
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(
        `comfyui-gateway: cannot listen on 127.0.0.1:${port}: the port is already in use (is another gateway running? choose another with --port)\n`,
      );
      expect(clientTraffic(fake).length).toBe(before); // discovery calls (GET /system_stats …) are not proxying
    } finally {
      await new Promise((r) => blocker.close(r));
    }
  });

  test('the start-up line names every address listened on and the admin page; stdout is JSON when not a terminal', async () => {
    const dir = tmp();
    const g = await spawnGateway(['--host', '0.0.0.0', '--port', '0', '--upstream', fake.url, '--data-dir', dir, '--api-key', KEY]);
    children.push(g);
    const line = g
      .stderr()
      .split('\n')
      .find((l) => l.includes('listening on'))!;
    const v4 = Object.values(os.networkInterfaces())
      .flat()
      .filter((a) => a && a.family === 'IPv4')
      .map((a) => a!.address);
    expect(v4).toContain('127.0.0.1');
    for (const a of v4) expect(line).toContain(`http://${a}:${g.port}`);
    expect(line).toContain(`admin page: http://127.0.0.1:${g.port}/admin`);
    expect(line).toContain('(all interfaces, 0.0.0.0)');
    // every named address answers
    for (const a of v4) expect((await fetch(`http://${a}:${g.port}/health`)).status).toBe(200);
    // stdout is a pipe here: JSON lines, and the configuration line is a short summary without secrets
    const lines = g
      .stdout()
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const summary = lines.find((l) => l.msg === 'configuration loaded')!;
    expect(summary).toMatchObject({ upstream: fake.url, static_key: 'set', listen: '0.0.0.0:0' });
    expect(JSON.stringify(summary).length).toBeLessThan(500);
    expect(g.stdout()).not.toContain(KEY);
  });

  test('on a terminal the console log is human-readable (pino-pretty), not JSON', async () => {
    const dir = tmp();
    // script(1) runs the gateway on a pseudo-terminal, as an operator's shell would
    const cmd = [process.execPath, BIN, '--host', '127.0.0.1', '--port', '0', '--upstream', fake.url, '--data-dir', dir, '--api-key', KEY]
      .map((a) => `'${a}'`)
      .join(' ');
    const p = spawn('script', ['-qfec', cmd, '/dev/null'], {
      env: { PATH: process.env.PATH, TERM: 'dumb' },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    const exited = new Promise((r) => p.on('exit', r));
    try {
      const end = Date.now() + 60_000;
      // The start-up line is written directly; the log lines come through pino-pretty's worker and may trail it.
      const plain = () => out.replace(/\x1b\[[0-9;]*m/g, '');
      while (!(/listening on/.test(out) && /configuration loaded/.test(plain())) && Date.now() < end && p.exitCode === null)
        await new Promise((r) => setTimeout(r, 50));
      expect(out).toMatch(/listening on/);
      const plainOut = plain();
      expect(plainOut).toMatch(/INFO.*configuration loaded/);
      expect(plainOut.split(/\r?\n/).some((l) => l.startsWith('{"level"'))).toBe(false);
      expect(plainOut).not.toContain(KEY);
    } finally {
      p.kill('SIGTERM');
      await exited;
    }
  });

  test('bound to one address, the line names only that address', async () => {
    const dir = tmp();
    const g = await spawnGateway(['--host', '127.0.0.1', '--port', '0', '--upstream', fake.url, '--data-dir', dir, '--api-key', KEY]);
    children.push(g);
    const line = g
      .stderr()
      .split('\n')
      .find((l) => l.includes('listening on'))!;
    expect(line).toBe(
      `comfyui-gateway: listening on http://127.0.0.1:${g.port} in front of ${fake.url}; admin page: http://127.0.0.1:${g.port}/admin`,
    );
  });
});

describe('build once (scripts/ensure-built.js, run by prepare and npm start)', () => {
  /** A copy of the tree without node_modules: what `npm ci --omit=dev` leaves (no TypeScript). */
  function copyTree(withDist: boolean): string {
    const dir = tmp();
    for (const f of ['scripts', 'gateway', 'tsconfig.json', 'tsconfig.build.json', 'package.json'])
      fs.cpSync(path.join(ROOT, f), path.join(dir, f), { recursive: true });
    if (withDist) fs.cpSync(path.join(ROOT, 'dist', 'gateway'), path.join(dir, 'dist', 'gateway'), { recursive: true });
    return dir;
  }
  const ensure = (dir: string) =>
    spawnSync(process.execPath, [path.join(dir, 'scripts', 'ensure-built.js')], {
      cwd: dir,
      encoding: 'utf8',
      env: { PATH: process.env.PATH },
    });

  test('a built tree is used as it is: no compiler run, nothing rewritten, and the bin runs without TypeScript', () => {
    const dir = copyTree(true);
    const future = new Date(Date.now() + 60_000);
    fs.utimesSync(path.join(dir, 'dist', 'gateway', 'bin.js'), future, future);
    const builtAt = fs.statSync(path.join(dir, 'dist', 'gateway', 'bin.js')).mtimeMs;
    const r = ensure(dir);
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('');
    expect(fs.statSync(path.join(dir, 'dist', 'gateway', 'bin.js')).mtimeMs).toBe(builtAt);
    const v = spawnSync(process.execPath, [path.join(dir, 'dist', 'gateway', 'bin.js'), '--version'], {
      cwd: dir,
      encoding: 'utf8',
      env: { PATH: process.env.PATH, NODE_PATH: path.join(ROOT, 'node_modules') },
    });
    expect(v.stdout).toMatch(/^comfyui-gateway \d+\.\d+\.\d+/);
  });

  test('stale sources without TypeScript: a warning, the existing build is kept (exit 0)', () => {
    const dir = copyTree(true);
    const past = new Date(Date.now() - 3_600_000);
    fs.utimesSync(path.join(dir, 'dist', 'gateway', 'bin.js'), past, past);
    const r = ensure(dir);
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/TypeScript is not installed; using the existing build/);
  });

  test('a packaged tree (dist/ without sources, as in the Docker image) runs as it is', () => {
    const dir = copyTree(true);
    fs.rmSync(path.join(dir, 'gateway'), { recursive: true });
    for (const f of ['tsconfig.json', 'tsconfig.build.json']) fs.rmSync(path.join(dir, f));
    const r = ensure(dir);
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('');
  });

  test('no dist/ and no TypeScript: exit 1 with what to do', () => {
    const dir = copyTree(false);
    const r = ensure(dir);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/dist\/ is missing and TypeScript is not installed: run `npm ci`/);
  });

  test('npm start and npm run users go through ensure-built, never straight to tsc', () => {
    const { scripts } = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
    for (const s of ['start', 'users']) {
      expect(scripts[s]).toMatch(/^node scripts\/ensure-built\.js && node dist\/gateway\/bin\.js/);
      expect(scripts[s]).not.toMatch(/tsc|npm run build/);
    }
    expect(scripts.prepare).toBe('node scripts/ensure-built.js');
  });
});
