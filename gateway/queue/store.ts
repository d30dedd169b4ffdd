/**
 * What the gateway queue persists, behind one small async interface: the file store (journal + snapshot in
 * data_dir) is the embedded default; a shared database can implement the same five calls. Every value is plain
 * JSON, so an implementation only stores and replays operations.
 */

/** A prompt accepted by the gateway and not yet released to a worker. */
export interface HeldPrompt {
  /** the gateway's prompt id (what the client knows) */
  id: string;
  /** the owner's account key (users/types.ts AccountKeys): a deleted account's prompts are never run */
  owner: string;
  role: 'admin' | 'user';
  /** arrival order, gateway-wide */
  seq: number;
  /** the `number` answered to the client */
  number: number;
  /** unix ms of acceptance */
  at: number;
  /** an admin's `front`: released before everything else */
  front: boolean;
  /** the JSON body to POST to ComfyUI (already confined and given its ids) */
  body: string;
  /** the owner's ComfyUI user id (comfy-user header), when known */
  comfyUser: string | null;
  /** the clientId the owner used ('' when none) and the one ComfyUI is given */
  clientId: string;
  upstreamClientId: string;
  /** replicas: the submitter waits on replica `replica` (its change-feed origin) for ComfyUI's answer until `until` (unix ms) */
  answerTo?: { replica: string; until: number };
}

/** A held prompt that ComfyUI refused when it was released: shown in /history with an error status. */
export interface FailedPrompt {
  id: string;
  owner: string;
  at: number;
  /** ComfyUI's refusal (its 400 body), or the gateway's reason */
  error: Record<string, unknown>;
  /** the prompt tuple as /history shows it */
  prompt: unknown[];
}

/** Per-user limits set by an admin (null fields fall back to the role's). */
export interface LimitOverride {
  max_waiting: number | null;
  max_running: number | null;
  per_day: number | null;
}

/** Usage of one user on one UTC day. */
export interface UsageRow {
  /** account key */
  owner: string;
  /** YYYY-MM-DD (UTC) */
  day: string;
  prompts: number;
  gpu_s: number;
  images: number;
}

/** Everything the queue keeps, as loaded at start-up. */
export interface QueueState {
  held: HeldPrompt[];
  failed: FailedPrompt[];
  limits: Record<string, LimitOverride>;
  usage: UsageRow[];
  /** the next seq/number to hand out */
  nextSeq: number;
}

/**
 * One durable change. `drop` forgets held and failed prompts (released, deleted); `failed` moves a held prompt to
 * the failed ones in one step, so no reader sees it gone from both; `usage` adds its counts to the row of (owner, day).
 */
export type QueueOp =
  | { op: 'hold'; prompt: HeldPrompt }
  | { op: 'drop'; ids: string[] }
  | { op: 'failed'; entry: FailedPrompt }
  | { op: 'limits'; owner: string; limits: LimitOverride | null }
  | { op: 'usage'; owner: string; day: string; prompts: number; gpu_s: number; images: number };

/** The queue's persistence: `apply` resolves once the change is durable (fsync'd, committed). */
export interface QueueStore {
  load(): Promise<QueueState>;
  apply(op: QueueOp): Promise<void>;
  close(): Promise<void>;
}

/** Applies one operation to an in-memory state (the file store's replay, and any store's reference semantics). */
export function applyOp(state: QueueState, o: QueueOp, maxFailed = 1000): void {
  switch (o.op) {
    case 'hold':
      state.held.push(o.prompt);
      state.nextSeq = Math.max(state.nextSeq, o.prompt.seq + 1, o.prompt.number + 1);
      return;
    case 'drop': {
      const ids = new Set(o.ids);
      state.held = state.held.filter((p) => !ids.has(p.id));
      state.failed = state.failed.filter((p) => !ids.has(p.id));
      return;
    }
    case 'failed':
      state.held = state.held.filter((p) => p.id !== o.entry.id);
      state.failed.push(o.entry);
      if (state.failed.length > maxFailed) state.failed.splice(0, state.failed.length - maxFailed);
      return;
    case 'limits':
      if (o.limits) state.limits[o.owner] = o.limits;
      else delete state.limits[o.owner];
      return;
    case 'usage': {
      let row = state.usage.find((r) => r.owner === o.owner && r.day === o.day);
      if (!row) state.usage.push((row = { owner: o.owner, day: o.day, prompts: 0, gpu_s: 0, images: 0 }));
      row.prompts += o.prompts;
      row.gpu_s += o.gpu_s;
      row.images += o.images;
      return;
    }
  }
}

/** An empty state. */
export const emptyState = (): QueueState => ({ held: [], failed: [], limits: {}, usage: [], nextSeq: 1 });
