import fs from 'node:fs';
import path from 'node:path';
import type { Gate, Interceptor } from '../../app';
import type { Audit } from '../../audit';
import type { ResolvedConfig } from '../../config/load';
import { AppError } from '../../errors';
import type { Logger } from '../../log';
import type { ComfyServer } from '../comfyServer';
import type { Upstream } from '../upstream';
import type { WsHooks } from '../ws';
import { createClientIds } from './clientIds';
import { createComfyUsers } from './comfyUsers';
import { createUserFolders, type UserFolders } from './folders';
import { NAME_KEYS, type AccountKeys } from '../../users/types';
import type { IsolationContext } from './context';
import { historyInterceptors } from './history';
import { jobsInterceptors } from './jobs';
import type { DocCollection } from '../../store/docs';
import { createLedger, type Ledger, type PromptRecord } from './ledger';
import { logsSubscribeInterceptor } from './logs';
import { createNodeSchemas } from './nodeSchema';
import { objectInfoInterceptor } from './objectInfo';
import { promptInterceptor } from './prompt';
import { createPromptIds } from './promptIds';
import { queueInterceptors } from './queue';
import { createWorkerReads } from './workerReads';
import { systemStatsInterceptor } from './systemStats';
import { createRunTracker } from './tracker';
import { uploadInterceptor } from './upload';
import { createUploadList, type SharedUploads } from './uploadList';
import { userdataInterceptors } from './userdata';
import { usersInterceptor } from './users';
import { pathListingInterceptor, viewInterceptor } from './view';
import { createIsolationWsHooks } from './ws';
import type { GatewayQueue } from '../../queue';
import { bindQueue, promptInfoInterceptor } from './held';

/**
 * ComfyUI routes that never read comfy-user (server.py's core routes, static files). Every request to ComfyUI
 * carries the caller's own id (created on first use); when it cannot be had, only these routes go ahead without
 * it — user data, settings, /users and custom nodes' routes are refused (502) instead, since ComfyUI would take a
 * request without comfy-user for its default user.
 */
const IGNORES_COMFY_USER = new Set([
  '',
  'index.html',
  'ws',
  'prompt',
  'queue',
  'history',
  'interrupt',
  'jobs',
  'view',
  'view_metadata',
  'upload',
  'object_info',
  'embeddings',
  'extensions',
  'models',
  'features',
  'system_stats',
  'free',
  'internal',
  'i18n',
  'workflow_templates',
  'experiment',
  'templates',
  'scripts',
  'fonts',
  'cursor',
  'docs',
  'index.css',
  'favicon.ico',
  'manifest.json',
  'vhs',
]);

/** Multi-user isolation (issue 5, DESIGN §7), ready to be wired into the front door by compose.ts. */
export interface Isolation {
  /** resolves each principal's ComfyUI user id into ctx.principal.comfyUser */
  enrichers: Gate[];
  interceptors: Interceptor[];
  /** must run before any other hook (it maps client ids and drops other users' frames) */
  wsHooks: WsHooks;
  /** creates (or finds) the ComfyUI user of a gateway user now, e.g. when the user is created */
  ensureComfyUser(username: string): Promise<string>;
  /** the prompt-ownership ledger (for tests and benchmarks) */
  ledger: Ledger;
  /** a deleted account's input/output folders: kept for admins or removed */
  folders: UserFolders;
  close(): Promise<void>;
}

/**
 * Builds the isolation layer. With `separate_users` off, prompts, queue, history and files are shared, but
 * the rest still holds: comfy-user is always the caller's own, client ids are bound to users (no takeover), every
 * prompt gets a client_id (nothing broadcast), WebSocket frames of other users' prompts are dropped, and
 * extra_data secrets are shown only to their owner.
 */
/** comfyui.input_dir (or base_dir/input) from the config, resolved against the config file's folder. */
export function configuredInputDir(config: ResolvedConfig): string | null {
  const base = config.configPath ? path.dirname(config.configPath) : process.cwd();
  const dir = config.comfyui.input_dir ?? (config.comfyui.base_dir ? path.join(config.comfyui.base_dir, 'input') : null);
  return dir ? path.resolve(base, dir) : null;
}

/** What isolation keeps in the replicas' shared store (built by store/compose.ts isolationShared). */
export interface IsolationShared {
  ledger: { initial: Map<string, PromptRecord>; docs: DocCollection<PromptRecord> };
  comfyUsers: { initial: Map<string, string>; docs: DocCollection<string> };
  /** each user's uploads, for loader lists when ComfyUI's input folder cannot be read (uploadList.ts) */
  uploads: SharedUploads;
  clientIdKey: Buffer;
}

export function createIsolation(deps: {
  config: ResolvedConfig;
  logger: Logger;
  audit: Audit;
  upstream: Upstream;
  server?: ComfyServer;
  keys?: AccountKeys;
  /** the replicas' shared store (issue 13): ledger, ComfyUI ids and the client-id key live there instead of data_dir */
  shared?: IsolationShared | null;
  queue?: GatewayQueue;
}): Isolation {
  const { config, logger, upstream } = deps;
  // Ownership hangs on account keys, not names: a later account of a deleted account's name starts empty.
  const keys = deps.keys ?? NAME_KEYS;
  const dataDir = config.paths.dataDir;
  fs.mkdirSync(dataDir, { recursive: true });
  const shared = deps.shared ?? undefined;
  const ledger = createLedger({
    file: path.join(dataDir, 'prompt_ledger.json'),
    logger,
    keys,
    shared: shared?.ledger,
    ...(shared ? { flushDelayMs: 10 } : {}),
  });
  const comfyUsers = createComfyUsers({ file: path.join(dataDir, 'comfy_users.json'), upstream, logger, keys, shared: shared?.comfyUsers });
  const byName = createClientIds(path.join(dataDir, 'isolation.key'), shared?.clientIdKey);
  const clientIds = { ...byName, upstreamFor: (user: string, clientId: string) => byName.upstreamFor(keys.keyOf(user), clientId) };
  const promptIds = createPromptIds({ ledger, logger, onLearned: (h) => deps.server?.notePromptId(h) });
  const tracker = createRunTracker({ upstream, ledger, promptIds, logger });

  const iso: IsolationContext = {
    config,
    logger,
    audit: deps.audit,
    upstream,
    ledger,
    promptIds,
    clientIds,
    tracker,
    comfyUsers,
    separate: config.separate_users,
    cookieName: config.cookie.name,
    inputDir: deps.server?.info?.inputDir ?? configuredInputDir(config),
    server: deps.server ?? null,
    uploads: createUploadList({ file: path.join(dataDir, 'uploads.json'), logger, shared: shared?.uploads }),
    schemas: createNodeSchemas({ upstream, logger, inputDir: () => iso.inputDir }),
    queue: deps.queue,
    workers: createWorkerReads({ primary: upstream, queue: deps.queue, logger }),
  };
  if (deps.queue) bindQueue(iso, deps.queue);
  // What the server discovery learns (again on reconnect) replaces what was known.
  deps.server?.onLearned((info) => {
    if (info.inputDir) iso.inputDir = info.inputDir;
  });

  const enrich: Gate = async (_req, ctx) => {
    const p = ctx.principal;
    if (!p) return;
    if (ctx.decision.rule.owner !== 'comfy') {
      // The gateway's own pages must keep working while ComfyUI is down: use what is known, never wait.
      const known = comfyUsers.cached(p.username);
      if (known) p.comfyUser = known;
      return;
    }
    try {
      p.comfyUser = await comfyUsers.resolve(p.username);
    } catch (e) {
      logger.warn({ err: (e as Error).message, user: p.username }, 'could not resolve the ComfyUI user');
      const known = comfyUsers.cached(p.username);
      if (known) p.comfyUser = known;
      // Never send a request that reads comfy-user without it: ComfyUI would answer for its default user.
      if (!IGNORES_COMFY_USER.has(ctx.route.segments[0]?.toLowerCase() ?? '') && !known) {
        throw new AppError(502, 'UPSTREAM_UNAVAILABLE', 'ComfyUI is not reachable right now; try again shortly');
      }
    }
  };

  return {
    enrichers: [enrich],
    interceptors: [
      promptInterceptor(iso),
      promptInfoInterceptor(iso),
      ...queueInterceptors(iso),
      ...historyInterceptors(iso),
      ...jobsInterceptors(iso),
      // Per-user files and node lists exist only with separate_users: otherwise these routes are ComfyUI's as is.
      ...(iso.separate ? [viewInterceptor(iso), pathListingInterceptor(iso), uploadInterceptor(iso), objectInfoInterceptor(iso)] : []),
      usersInterceptor(iso),
      ...userdataInterceptors(iso),
      logsSubscribeInterceptor(iso),
      systemStatsInterceptor(iso),
    ],
    wsHooks: createIsolationWsHooks({ clientIds, ledger, tracker, promptIds }),
    ensureComfyUser: (username) => comfyUsers.resolve(username),
    ledger,
    folders: createUserFolders({ config, upstream, logger, audit: deps.audit, inputDir: () => iso.inputDir }),
    async close() {
      await ledger.close();
      await comfyUsers.flush();
      await iso.uploads.flush();
    },
  };
}
