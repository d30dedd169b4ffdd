import type { ResolvedConfig } from './load';

/** The few facts an operator checks at start-up (the full config is long and mostly defaults); never secrets. */
export function summarizeConfig(cfg: ResolvedConfig): Record<string, unknown> {
  return {
    config: cfg.configPath ?? '(defaults)',
    listen: `${cfg.host}:${cfg.port}${cfg.tls ? ' (TLS)' : ''}`,
    upstream: cfg.upstream,
    data_dir: cfg.paths.dataDir,
    static_key: cfg.apiKey ? 'set' : 'none',
    trusted_proxies: cfg.trusted_proxies.length,
    separate_users: cfg.separate_users,
    model_downloads: cfg.model_downloads.enabled,
    cloudflare_access: cfg.cloudflare_access ? cfg.cloudflare_access.team_domain : 'off',
    store: cfg.store.kind === 'postgres' ? `postgres ${hostOf(cfg.store.url)}` : 'files in data_dir',
    redis: cfg.redis ? hostOf(cfg.redis.url) : 'off',
    metrics: cfg.metrics.port !== null ? `127.0.0.1:${cfg.metrics.port}` : cfg.metrics.enabled ? '/metrics (admin)' : 'off',
  };
}

/** host:port/db of a database URL, never its password. */
function hostOf(url: string | null): string {
  try {
    const u = new URL(url ?? '');
    return `${u.host}${u.pathname === '/' ? '' : u.pathname}`;
  } catch {
    return '(unparsable url)';
  }
}
