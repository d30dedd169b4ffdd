import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ConfigError, loadConfig, redactConfig } from '../gateway/config/load';
import { runGateway } from './helpers/child';

function tmpConfig(obj: unknown, extra: Record<string, string> = {}): { dir: string; file: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgw-cfg-'));
  const file = path.join(dir, 'config.json');
  fs.writeFileSync(file, typeof obj === 'string' ? obj : JSON.stringify(obj));
  for (const [n, c] of Object.entries(extra)) fs.writeFileSync(path.join(dir, n), c);
  return { dir, file };
}

function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e.problems;
    throw e;
  }
  throw new Error('expected a ConfigError');
}

describe('config loading', () => {
  test('the repository config.json is valid and gives the documented defaults', () => {
    const cfg = loadConfig(['--config', path.resolve(__dirname, '..', 'config.json')], {});
    expect(cfg.port).toBe(8189);
    expect(cfg.host).toBe('0.0.0.0');
    expect(cfg.upstream).toBe('http://127.0.0.1:8188');
    expect(cfg.cookie).toEqual({ name: 'jwt_token', same_site: 'lax' });
    expect(cfg.manager_admin_only).toBe(true);
    expect(cfg.separate_users).toBe(true);
    expect(cfg.access_token_expiration_hours).toBe(12);
    expect(cfg.hfEndpoint).toBe('https://huggingface.co');
  });

  test('every problem is reported at once, with where it is', () => {
    const { file } = tmpConfig({
      port: 'eighty',
      bogus_key: 1,
      whitelist: 5,
      cookie: { name: 'x', nope: true },
      api_key_file: 'missing.txt',
    });
    const problems = problemsOf(() => loadConfig(['--config', file], {}));
    const text = problems.join('\n');
    expect(text).toMatch(/port/);
    expect(text).toMatch(/bogus_key/);
    expect(text).toMatch(/whitelist/);
    expect(text).toMatch(/cookie.*nope|nope/);
    expect(text).toMatch(/api_key_file.*cannot read/);
    expect(problems.length).toBeGreaterThanOrEqual(5);
  });

  test('unreadable api_key_file and malformed trusted_proxies are both reported', () => {
    const { file } = tmpConfig({ api_key_file: 'nope.txt', trusted_proxies: ['10.0.0.0/8', 'not-an-ip'] });
    const problems = problemsOf(() => loadConfig(['--config', file], {}));
    expect(problems.some((p) => /api_key_file.*cannot read/.test(p))).toBe(true);
    expect(problems.some((p) => /trusted_proxies\[1\]/.test(p))).toBe(true);
  });

  test('malformed JSON is a problem, not a crash', () => {
    const { file } = tmpConfig('{"port": 1,,}');
    expect(problemsOf(() => loadConfig(['--config', file], {}))[0]).toMatch(/config\.json/);
  });

  test('unknown CLI flags are refused', () => {
    expect(problemsOf(() => loadConfig(['--frobnicate'], {}))[0]).toMatch(/frobnicate/);
  });

  test('CLI overrides config; key sources: flag > file > env; short keys refused', () => {
    const { file } = tmpConfig({ port: 9000, api_key_file: 'key.txt' }, { 'key.txt': 'file-key-0123456789abcdef\n' });
    const cfg = loadConfig(['--config', file, '--port', '9100', '--upstream', 'http://127.0.0.1:9999', '--data-dir', '/tmp/x'], {
      COMFYUI_GATEWAY_API_KEY: 'env-key-0123456789abcdef',
    });
    expect(cfg.port).toBe(9100);
    expect(cfg.upstream).toBe('http://127.0.0.1:9999');
    expect(cfg.paths.dataDir).toBe('/tmp/x');
    expect(cfg.apiKey).toBe('file-key-0123456789abcdef');
    const flag = loadConfig(['--config', file, '--api-key', 'flag-key-0123456789abcdef'], {});
    expect(flag.apiKey).toBe('flag-key-0123456789abcdef');
    const { file: plain } = tmpConfig({});
    expect(loadConfig(['--config', plain], { COMFYUI_GATEWAY_API_KEY: 'env-key-0123456789abcdef' }).apiKey).toBe(
      'env-key-0123456789abcdef',
    );
    expect(problemsOf(() => loadConfig(['--config', plain, '--api-key', 'short'], {})).join()).toMatch(/api_key/);
  });

  test('redaction hides the key', () => {
    const { file } = tmpConfig({ api_key: 'secret-key-0123456789abcdef' });
    const cfg = loadConfig(['--config', file], {});
    expect(JSON.stringify(redactConfig(cfg))).not.toContain('secret-key-0123456789abcdef');
  });

  test('main.js exits non-zero with one message listing every problem', async () => {
    const { file } = tmpConfig({ port: -1, unknown_thing: true, log_levels: ['loud'] });
    const r = await runGateway(['--config', file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/Invalid configuration/);
    expect(r.stderr).toMatch(/port/);
    expect(r.stderr).toMatch(/unknown_thing/);
    expect(r.stderr).toMatch(/log_levels/);
    expect(r.stderr.match(/Invalid configuration/g)).toHaveLength(1);
  });

  test('a key passed on the command line never appears in the logs', async () => {
    const { file, dir } = tmpConfig({ port: 0, host: '127.0.0.1', data_dir: 'data' });
    const { spawnGateway } = await import('./helpers/child');
    const gw = await spawnGateway(['--config', file, '--api-key', 'cli-secret-0123456789abcdef']);
    gw.kill('SIGTERM');
    expect(await gw.exited).toBe(0);
    const log = fs.readFileSync(path.join(dir, 'data', 'comfyui-gateway.log'), 'utf8');
    expect(log).toContain('configuration loaded');
    expect(log + gw.stdout() + gw.stderr()).not.toContain('cli-secret-0123456789abcdef');
  });
});
