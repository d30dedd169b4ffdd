import { z } from 'zod';
import { queueLimitsSchema, queueSchedulerSchema, sharedInputSchema, upstreamsSchema } from '../queue/config';

const logLevel = z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']);

/** config.json's shape: Sentinel's keys kept with their meaning, plus the gateway's own (DESIGN §3). */
export const configSchema = z
  .object({
    // ComfyUI-Sentinel keys
    secret_key_env: z.string().min(1).default('SECRET_KEY'),
    users_db: z.string().min(1).default('users_db.json'),
    access_token_expiration_hours: z.number().positive().default(12),
    max_access_token_expiration_hours: z.number().positive().default(8760),
    log: z.string().min(1).nullable().default('comfyui-gateway.log'),
    log_levels: z.array(logLevel).default(['info']),
    whitelist: z.string().min(1).default('whitelist.txt'),
    blacklist: z.string().min(1).default('blacklist.txt'),
    blacklist_after_attempts: z.number().int().min(0).default(0),
    free_memory_on_logout: z.boolean().default(false),
    force_https: z.boolean().default(false),
    separate_users: z.boolean().default(true),
    manager_admin_only: z.boolean().default(true),
    // hosts (exact names) and IP addresses/CIDRs non-admins' prompts may name in http(s) URL inputs although private
    prompt_url_allow: z
      .array(
        z
          .string()
          .trim()
          .regex(/^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?|[0-9A-Fa-f.:]+(?:\/\d{1,3})?)$/, 'must be a host name, an IP address or a CIDR'),
      )
      .default([]),
    // gateway keys
    host: z.string().min(1).default('0.0.0.0'),
    port: z.number().int().min(0).max(65535).default(8189),
    upstream: z.url({ protocol: /^https?$/ }).default('http://127.0.0.1:8188'),
    /** how long ComfyUI may take to send a response's headers; once they came, a body streams for as long as it needs */
    upstream_timeout_s: z.number().positive().max(86_400).default(300),
    data_dir: z.string().min(1).default('./data'),
    api_key: z.string().min(16, 'must be at least 16 characters').nullable().default(null),
    api_key_file: z.string().min(1).nullable().default(null),
    trusted_proxies: z.array(z.string().min(1)).default([]),
    client_ip_header: z.enum(['x-forwarded-for', 'cf-connecting-ip', 'x-real-ip']).default('x-forwarded-for'),
    allow_loopback_without_auth: z.boolean().default(false),
    loopback_identity: z.string().min(1).default('api-key'),
    bcrypt_cost: z.number().int().min(4).max(15).default(12),
    tls: z
      .object({ cert: z.string().min(1), key: z.string().min(1) })
      .strict()
      .nullable()
      .default(null),
    cookie: z
      .object({
        name: z
          .string()
          .regex(/^[A-Za-z0-9_-]+$/)
          .default('jwt_token'),
        same_site: z.enum(['lax', 'strict']).default('lax'),
      })
      .strict()
      .default({ name: 'jwt_token', same_site: 'lax' }),
    comfyui: z
      .object({
        base_dir: z.string().min(1).nullable().default(null),
        models_dir: z.string().min(1).nullable().default(null),
        input_dir: z.string().min(1).nullable().default(null),
        output_dir: z.string().min(1).nullable().default(null),
        temp_dir: z.string().min(1).nullable().default(null),
      })
      .strict()
      .default({ base_dir: null, models_dir: null, input_dir: null, output_dir: null, temp_dir: null }),
    model_downloads: z
      .object({
        enabled: z.boolean().default(true),
        allowed_hosts: z.array(z.string().min(1)).default(['huggingface.co', 'civitai.com']),
        redirect_hosts: z
          .array(z.string().min(1))
          .default(['cdn-lfs.huggingface.co', 'cdn-lfs-us-1.huggingface.co', 'cdn-lfs.hf.co', 'cas-bridge.xethub.hf.co']),
        max_concurrent: z.number().int().min(1).max(16).default(2),
        allowed_roles: z.array(z.enum(['admin', 'user'])).default(['admin']),
      })
      .strict()
      .default({
        enabled: true,
        allowed_hosts: ['huggingface.co', 'civitai.com'],
        redirect_hosts: ['cdn-lfs.huggingface.co', 'cdn-lfs-us-1.huggingface.co', 'cdn-lfs.hf.co', 'cas-bridge.xethub.hf.co'],
        max_concurrent: 2,
        allowed_roles: ['admin'],
      }),
    hf_oauth: z
      .object({
        client_id: z.string().min(1).nullable().default(null),
        callback_port: z.number().int().min(0).max(65535).default(41954),
        redirect_uri: z.url().nullable().default(null),
      })
      .strict()
      .default({ client_id: null, callback_port: 41954, redirect_uri: null }),
    // the gateway's own queue (DESIGN §12): release order between users, and per-role limits
    scheduler: queueSchedulerSchema,
    limits: queueLimitsSchema,
    upstreams: upstreamsSchema,
    shared_input: sharedInputSchema,
    // Prometheus metrics: GET /metrics for admins, and/or a plain listener on 127.0.0.1:port for a local scraper
    metrics: z
      .object({
        enabled: z.boolean().default(true),
        port: z.number().int().min(1).max(65535).nullable().default(null),
      })
      .strict()
      .default({ enabled: true, port: null }),
    // where users, tokens, the ledger and the other records live: files in data_dir, or PostgreSQL shared by replicas
    store: z
      .object({
        kind: z.enum(['file', 'postgres']).default('file'),
        url: z
          .string()
          .regex(/^postgres(ql)?:\/\//, 'must be a postgres:// URL')
          .nullable()
          .default(null),
      })
      .strict()
      .refine((s) => s.kind === 'file' || s.url !== null, { message: 'store.kind "postgres" needs store.url' })
      .default({ kind: 'file', url: null }),
    // shared fast state of several replicas (lockout and rate counters, IP-list reloads, downloads, WebSocket fan-out)
    redis: z
      .object({ url: z.string().regex(/^rediss?:\/\//, 'must be a redis:// URL'), key_prefix: z.string().default('cgw:') })
      .strict()
      .nullable()
      .default(null),
    cloudflare_access: z
      .object({
        team_domain: z.string().min(1),
        audience: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
        certs_url: z.url().nullable().default(null),
        required: z.boolean().default(false),
        auto_provision: z.boolean().default(false),
        service_tokens: z.record(z.string(), z.string()).default({}),
      })
      .strict()
      .nullable()
      .default(null),
  })
  .strict();

/** The validated configuration every factory receives (paths not yet resolved). */
export type Config = z.infer<typeof configSchema>;
