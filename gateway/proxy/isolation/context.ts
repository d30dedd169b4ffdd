import type { Audit } from '../../audit';
import type { ResolvedConfig } from '../../config/load';
import type { Logger } from '../../log';
import type { ComfyServer } from '../comfyServer';
import type { Upstream } from '../upstream';
import type { ClientIds } from './clientIds';
import type { ComfyUsers } from './comfyUsers';
import type { Ledger } from './ledger';
import type { UploadList } from './uploadList';
import type { PromptIds } from './promptIds';
import type { NodeSchemas } from './nodeSchema';
import type { RunTracker } from './tracker';
import type { GatewayQueue } from '../../queue';
import type { WorkerReads } from './workerReads';

/** Everything the isolation interceptors share (built once by createIsolation). */
export interface IsolationContext {
  config: ResolvedConfig;
  logger: Logger;
  audit: Audit;
  upstream: Upstream;
  ledger: Ledger;
  /** client (gateway) prompt ids <-> ComfyUI's */
  promptIds: PromptIds;
  clientIds: ClientIds;
  tracker: RunTracker;
  comfyUsers: ComfyUsers;
  /** separate_users: files, queue and history are per user */
  separate: boolean;
  cookieName: string;
  /** ComfyUI's input directory when the gateway can read it (lists each user's own files in /object_info) */
  inputDir: string | null;
  /** what each user uploaded through the gateway (their dropdowns when inputDir is unknown) */
  uploads: UploadList;
  /** what the gateway learned about the server (null in unit set-ups) */
  server: ComfyServer | null;
  /** node schemas of the upstream: which nodes and inputs read or write files */
  schemas: NodeSchemas;
  /** the gateway's own queue (absent in unit set-ups: prompts go straight to ComfyUI) */
  queue?: GatewayQueue;
  /** asks every worker at once (listings and clears that span all of them) */
  workers: WorkerReads;
}
