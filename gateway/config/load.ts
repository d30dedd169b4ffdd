import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { didYouMean, semanticProblems } from './checks';
import { configSchema, type Config } from './schema';

/** Start-up refusal carrying every configuration problem at once. */
export class ConfigError extends Error {
  constructor(public readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/** Config after CLI/env overrides, with absolute paths and the effective static key. */
export interface ResolvedConfig extends Config {
  configPath: string | null;
  /** the effective static API key from --api-key, --api-key-file, env or config; never logged */
  apiKey: string | null;
  hfEndpoint: string;
  paths: { dataDir: string; usersDb: string; whitelist: string; blacklist: string; log: string | null };
}

const cliOptions = {
  config: { type: 'string' },
  host: { type: 'string' },
  port: { type: 'string' },
  upstream: { type: 'string' },
  'data-dir': { type: 'string' },
  'api-key': { type: 'string' },
  'api-key-file': { type: 'string' },
  'log-level': { type: 'string' },
} as const;

/** Loads config.json + CLI flags + environment; throws ConfigError listing every problem. */
export function loadConfig(argv: string[], env: NodeJS.ProcessEnv = process.env, cwd = process.cwd()): ResolvedConfig {
  const problems: string[] = [];
  let args: ReturnType<typeof parseArgs<{ options: typeof cliOptions; strict: true; allowPositionals: false }>>['values'];
  try {
    const parsed = parseArgs({ args: argv, options: cliOptions, strict: true, allowPositionals: false, tokens: true });
    args = parsed.values;
    // "last one wins" would silently ignore a flag the operator meant: a repeated option is refused.
    const seen = new Set<string>();
    for (const t of parsed.tokens) {
      if (t.kind !== 'option') continue;
      if (seen.has(t.name)) problems.push(`command line: --${t.name} given more than once`);
      seen.add(t.name);
    }
    if (problems.length) throw new ConfigError(problems);
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new ConfigError([`command line: ${(e as Error).message}`]);
  }

  const configPath = args.config ? path.resolve(cwd, args.config) : null;
  let raw: Record<string, unknown> = {};
  if (configPath) {
    try {
      const parsed: unknown = JSON.parse(fs.readFileSync(configPath, 'utf8'));
      if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) problems.push(`${configPath}: must be a JSON object`);
      else raw = parsed as Record<string, unknown>;
    } catch (e) {
      problems.push(`${configPath}: ${(e as Error).message}`);
    }
  }
  const baseDir = configPath ? path.dirname(configPath) : cwd;

  if (args.host !== undefined) raw.host = args.host;
  if (args.port !== undefined) {
    const n = Number(args.port);
    if (!/^\d+$/.test(args.port)) problems.push(`--port: not a port number: ${JSON.stringify(args.port)}`);
    raw.port = n;
  }
  if (args.upstream !== undefined) raw.upstream = args.upstream;
  if (args['data-dir'] !== undefined) raw.data_dir = args['data-dir'];
  if (args['log-level'] !== undefined) raw.log_levels = [args['log-level']];
  if (args['api-key-file'] !== undefined) raw.api_key_file = args['api-key-file'];
  if (args['api-key'] !== undefined) raw.api_key = args['api-key'];
  else if (env.COMFYUI_GATEWAY_API_KEY && raw.api_key === undefined && args['api-key-file'] === undefined)
    raw.api_key = env.COMFYUI_GATEWAY_API_KEY;

  // Several workers (`upstreams`): the first one is also `upstream`, which the proxy and discovery use.
  const workers = Array.isArray(raw.upstreams) ? (raw.upstreams as { url?: unknown }[]) : [];
  if (workers.length && typeof workers[0]?.url === 'string') {
    if (raw.upstream === undefined) raw.upstream = workers[0].url;
    else if (raw.upstream !== workers[0].url)
      problems.push(`${configPath ? path.basename(configPath) + ': ' : ''}upstream must be upstreams[0].url (or left out)`);
    if (workers.length > 1 && !raw.shared_input)
      problems.push(
        `${configPath ? path.basename(configPath) + ': ' : ''}shared_input: required with more than one worker (the input folder every worker reads)`,
      );
  }
  const result = configSchema.safeParse(raw);
  const file = configPath ? path.basename(configPath) + ': ' : '';
  if (!result.success) {
    for (const issue of result.error.issues) {
      if (issue.code === 'unrecognized_keys') {
        for (const k of issue.keys) problems.push(`${file}unknown key "${[...issue.path, k].join('.')}"${didYouMean(issue.path, k)}`);
        continue;
      }
      const where = issue.path.length ? issue.path.join('.') : '(root)';
      problems.push(`${file}${where}: ${issue.message}`);
    }
  }
  // Semantic problems (bad CIDR, unreadable files) in the same message as the schema's.
  problems.push(...semanticProblems(raw, baseDir, args['api-key'] !== undefined));
  if (!result.success || problems.length) throw new ConfigError(problems);
  const cfg = result.data;
  let apiKey = cfg.api_key;
  if (cfg.api_key_file && args['api-key'] === undefined) apiKey = fs.readFileSync(path.resolve(baseDir, cfg.api_key_file), 'utf8').trim();

  const dataDir = path.resolve(baseDir, cfg.data_dir);
  return {
    ...cfg,
    configPath,
    apiKey,
    hfEndpoint: (env.HF_ENDPOINT || 'https://huggingface.co').replace(/\/+$/, ''),
    paths: {
      dataDir,
      usersDb: path.resolve(dataDir, cfg.users_db),
      whitelist: path.resolve(baseDir, cfg.whitelist),
      blacklist: path.resolve(baseDir, cfg.blacklist),
      log: cfg.log ? path.resolve(dataDir, cfg.log) : null,
    },
  };
}

/** A copy of the config that is safe to log: secrets replaced. */
export function redactConfig(cfg: ResolvedConfig): Record<string, unknown> {
  const noPassword = (u: string | null) => (u ? u.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:[redacted]@') : u);
  return {
    ...cfg,
    apiKey: cfg.apiKey ? '[redacted]' : null,
    api_key: cfg.api_key ? '[redacted]' : null,
    store: { ...cfg.store, url: noPassword(cfg.store.url) },
    redis: cfg.redis ? { ...cfg.redis, url: noPassword(cfg.redis.url) } : null,
  };
}
