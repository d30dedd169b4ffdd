import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { composeGateway, type Composed, type ComposeOptions } from '../../gateway/compose';
import { loadConfig, type ResolvedConfig } from '../../gateway/config/load';
import { listen, type Running } from '../../gateway/server';

/** A real gateway on a real port with its own temp data dir, for integration tests. */
export interface TestGateway extends Running {
  composed: Composed;
  config: ResolvedConfig;
  dir: string;
  /** every log line the gateway wrote (parsed JSON) */
  logs: Record<string, unknown>[];
  close(): Promise<void>;
}

/**
 * Starts a gateway the way main.ts does (config file → loadConfig → composeGateway → listen) on 127.0.0.1:0.
 * `config` is written to a config.json in a fresh temp dir; `args` are extra CLI flags.
 */
export async function startGateway(
  config: Record<string, unknown> = {},
  opts: { args?: string[]; env?: NodeJS.ProcessEnv; compose?: ComposeOptions; files?: Record<string, string> } = {},
): Promise<TestGateway> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-test-'));
  for (const [name, content] of Object.entries(opts.files ?? {})) {
    fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    fs.writeFileSync(path.join(dir, name), content);
  }
  const full = { port: 0, host: '127.0.0.1', data_dir: './data', log_levels: ['debug'], bcrypt_cost: 4, ...config };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(full, null, 2));
  const cfg = loadConfig(['--config', path.join(dir, 'config.json'), ...(opts.args ?? [])], opts.env ?? {}, dir);
  const composed = await composeGateway(cfg, { stdout: false, env: opts.env ?? {}, ...opts.compose });
  const running = await listen(composed, '127.0.0.1', 0);
  const readLogs = () => {
    if (!cfg.paths.log || !fs.existsSync(cfg.paths.log)) return [];
    return fs
      .readFileSync(cfg.paths.log, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  };
  return {
    ...running,
    composed,
    config: cfg,
    dir,
    get logs() {
      composed.logger.flush?.();
      return readLogs();
    },
    async close() {
      await running.shutdown(2000);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Reads the log file after giving pino's async destination a moment to flush. */
export async function flushedLogs(gw: TestGateway): Promise<Record<string, unknown>[]> {
  gw.composed.logger.flush?.();
  await new Promise((r) => setTimeout(r, 150));
  return gw.logs;
}

/** A key long enough for the schema. */
export const TEST_KEY = 'test-static-key-0123456789abcdef';
