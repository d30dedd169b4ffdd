/**
 * The conformance harness: starts a real, unmodified ComfyUI (tree 7914c47 or 0.3.44) with the project's
 * setup.sh / start.sh, and a real gateway in front of it. Used by tests/comfyui/*.real.test.ts only.
 *
 * Where the servers' scripts live: env COMFYUI_SERVERS_DIR, else a `shared/comfyui` folder beside the clone.
 * Where they are installed: env COMFY_HOME, default /tmp/comfyui-real.
 * Which ports: env COMFYUI_TEST_PORTS ("18100-18119") limits the choice to a range; otherwise any free port.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { startGateway, TEST_KEY, type TestGateway } from '../helpers/gateway';

/** The two real server trees the suite drives. */
export const TREES = ['7914c47', '0.3.44'] as const;
/** One of TREES. */
export type Tree = (typeof TREES)[number];

const REPO = path.resolve(__dirname, '..', '..');

/** The folder holding setup.sh, start.sh and the two server tarballs. */
export function serversDir(): string {
  if (process.env.COMFYUI_SERVERS_DIR) return path.resolve(process.env.COMFYUI_SERVERS_DIR);
  // CI lays shared/ beside the clone; a worktree may sit one level deeper.
  const candidates = [path.resolve(REPO, '..', 'shared', 'comfyui'), path.resolve(REPO, '..', '..', 'shared', 'comfyui')];
  return candidates.find((c) => fs.existsSync(path.join(c, 'start.sh'))) ?? candidates[0];
}

/** Where setup.sh installs the trees and their venv. */
export function comfyHome(): string {
  return process.env.COMFY_HOME || '/tmp/comfyui-real';
}

/**
 * Runs setup.sh (idempotent, ~6 s when already done). Throws a message saying what is missing and how to fix
 * it, so the suite fails loudly instead of passing without a server.
 */
export function ensureSetup(): void {
  const dir = serversDir();
  const setup = path.join(dir, 'setup.sh');
  if (!fs.existsSync(setup) || !fs.existsSync(path.join(dir, 'start.sh'))) {
    throw new Error(
      `real ComfyUI servers unavailable: no setup.sh/start.sh in ${dir}. ` +
        'Set COMFYUI_SERVERS_DIR to the folder holding setup.sh, start.sh and the comfyui-*.tar.gz server tarballs.',
    );
  }
  const r = spawnSync('bash', [setup], { env: { ...process.env, COMFY_HOME: comfyHome() }, encoding: 'utf8', timeout: 30 * 60_000 });
  if (r.status !== 0) {
    throw new Error(
      `real ComfyUI servers could not be set up: ${setup} exited ${r.status ?? r.signal}\n${r.stdout}\n${r.stderr}\n` +
        `(COMFY_HOME=${comfyHome()}; its setup-pip-*.log files say more)`,
    );
  }
}

/** A real ComfyUI process on 127.0.0.1. */
export interface RealComfy {
  tree: Tree;
  url: string;
  port: number;
  /** COMFY_DATA_DIR: input/, output/ and (0.3.44 only) user/ live here */
  dataDir: string;
  /** the user folder this server really uses (7914c47 has a fixed one inside its tree, shared by every run) */
  userDir: string;
  inputDir: string;
  outputDir: string;
  proc: ChildProcess;
  /** everything the process printed so far */
  output(): string;
  stop(): Promise<void>;
}

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

async function pickPort(): Promise<number> {
  const range = process.env.COMFYUI_TEST_PORTS;
  if (range) {
    const [lo, hi] = range.split('-').map(Number);
    for (let p = lo; p <= (hi || lo); p++) if (await portFree(p)) return p;
    throw new Error(`no free port in COMFYUI_TEST_PORTS=${range}`);
  }
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

/** Polls until ComfyUI answers /system_stats, the process dies, or the deadline passes. */
async function waitReady(url: string, proc: ChildProcess, out: () => string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`ComfyUI exited (${proc.exitCode ?? proc.signalCode}) before answering:\n${out().slice(-4000)}`);
    }
    try {
      const r = await fetch(`${url}/system_stats`, { signal: AbortSignal.timeout(2000) });
      if (r.ok) return;
    } catch {
      /* not up yet */
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`ComfyUI did not answer within ${timeoutMs} ms:\n${out().slice(-4000)}`);
}

/**
 * Starts a real ComfyUI of `tree` with `args` (e.g. ['--multi-user']) on a free port with a fresh data dir, in its
 * own process group, and resolves once it answers HTTP.
 */
export async function startRealComfy(tree: Tree, args: string[] = [], timeoutMs = 180_000): Promise<RealComfy> {
  const port = await pickPort();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `real-comfy-${tree}-`));
  const proc = spawn('sh', [path.join(serversDir(), 'start.sh'), String(port), '--tree', tree, ...args], {
    env: { ...process.env, COMFY_HOME: comfyHome(), COMFY_DATA_DIR: dataDir },
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let text = '';
  proc.stdout!.on('data', (d) => (text += d));
  proc.stderr!.on('data', (d) => (text += d));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      try {
        process.kill(-proc.pid!, 'SIGTERM');
      } catch {
        /* already gone */
      }
      const t = setTimeout(() => {
        try {
          process.kill(-proc.pid!, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }, 5000);
      await exited;
      clearTimeout(t);
    }
    fs.rmSync(dataDir, { recursive: true, force: true });
  };
  try {
    await waitReady(url, proc, () => text, timeoutMs);
  } catch (e) {
    await stop();
    throw e;
  }
  const userDir = tree === '7914c47' ? path.join(comfyHome(), 'ComfyUI-7914c47', 'user') : path.join(dataDir, 'user');
  return {
    tree,
    url,
    port,
    dataDir,
    userDir,
    inputDir: path.join(dataDir, 'input'),
    outputDir: path.join(dataDir, 'output'),
    proc,
    output: () => text,
    stop,
  };
}

/** A real gateway (in-process, like the fast suite) in front of `comfy`, with the static key TEST_KEY. */
export function startGatewayFor(comfy: RealComfy, config: Record<string, unknown> = {}): Promise<TestGateway> {
  return startGateway({ upstream: comfy.url, api_key: TEST_KEY, ...config });
}

/** A real ComfyUI and a gateway in front of it, for the enclosing describe block. */
export interface RealStack {
  comfy: RealComfy;
  gw: TestGateway;
  wsUrl(p: string): string;
}

/** Starts a real ComfyUI of `tree` (with `args`) and a gateway before the block's tests; stops both after. */
export function useRealStack(tree: Tree, opts: { args?: string[]; config?: Record<string, unknown> } = {}): RealStack {
  const stack = { wsUrl: (p: string) => stack.gw.url.replace(/^http/, 'ws') + p } as RealStack;
  beforeAll(async () => {
    stack.comfy = await startRealComfy(tree, opts.args ?? []);
    stack.gw = await startGatewayFor(stack.comfy, opts.config ?? {});
  }, 240_000);
  afterAll(async () => {
    await stack.gw?.close();
    await stack.comfy?.stop();
  }, 60_000);
  return stack;
}

/** A workflow that needs no model: EmptyImage 64x64 -> SaveImage. */
export function emptyImageWorkflow(prefix: string, color = 0): Record<string, unknown> {
  return {
    '1': { class_type: 'EmptyImage', inputs: { width: 64, height: 64, batch_size: 1, color } },
    '2': { class_type: 'SaveImage', inputs: { images: ['1', 0], filename_prefix: prefix } },
  };
}

export { TEST_KEY };
