import type { Logger } from '../../log';
import type { Upstream } from '../upstream';
import type { Ledger } from './ledger';
import type { PromptIds } from './promptIds';

/** What the gateway believes ComfyUI is running right now. */
export type RunState = { kind: 'unknown' } | { kind: 'idle' } | { kind: 'running'; promptId: string; owner: string | null };

/**
 * Whether ComfyUI is idle, for custom WebSocket events that name no prompt (they may go to everyone only when no
 * prompt is running; while one runs they belong to its owner's socket, which ws.ts tracks per socket).
 *
 * Knowledge comes from the events that name a prompt and from GET /queue. Every `status` broadcast (ComfyUI sends
 * one on every queue change: a prompt queued, started or finished) makes the state `unknown`; the queue is asked
 * only when an event needs the answer while unsure (that event is dropped, the next ones use the answer), and an
 * answer is used only if nothing changed while it was on its way.
 */
export interface RunTracker {
  readonly state: RunState;
  /** nothing is running (known, not assumed) */
  idle(): boolean;
  /** a `status` frame arrived: the queue changed */
  onStatus(): void;
  /** an event naming a prompt the gateway knows the owner of */
  onPromptEvent(type: string, promptId: string, owner: string, data: Record<string, unknown>): void;
}

const TERMINAL = new Set(['execution_success', 'execution_error', 'execution_interrupted']);

/** Builds the tracker over the ledger (owners) and ComfyUI's GET /queue. */
export function createRunTracker(deps: { upstream: Upstream; ledger: Ledger; promptIds: PromptIds; logger: Logger }): RunTracker {
  let state: RunState = { kind: 'unknown' };
  let version = 0;
  let inflight = false;
  let again = false;

  async function refresh(): Promise<void> {
    if (inflight) {
      again = true;
      return;
    }
    inflight = true;
    const asked = version;
    try {
      const q = await deps.upstream.json<{ queue_running?: unknown[] }>('GET', '/queue', { timeoutMs: 5000 });
      if (version === asked) {
        const first = Array.isArray(q.queue_running) ? q.queue_running[0] : undefined;
        const pid = Array.isArray(first) && typeof first[1] === 'string' ? deps.promptIds.toClient(first[1]) : null;
        state = pid ? { kind: 'running', promptId: pid, owner: deps.ledger.owner(pid) ?? null } : { kind: 'idle' };
      }
    } catch (e) {
      deps.logger.debug({ err: (e as Error).message }, 'run tracker: GET /queue failed');
    } finally {
      inflight = false;
      // Asked again meanwhile and still unsure (the queue changed while we were asking): ask once more.
      if (again && state.kind === 'unknown') void refresh();
      again = false;
    }
  }

  return {
    get state() {
      return state;
    },
    idle() {
      if (state.kind === 'unknown') void refresh();
      return state.kind === 'idle';
    },
    onStatus() {
      version++;
      state = { kind: 'unknown' };
    },
    onPromptEvent(type, promptId, owner, data) {
      const ends = TERMINAL.has(type) || (type === 'executing' && data.node === null);
      if (ends) {
        // Only from "running this very prompt": an end seen while unsure must not declare the queue idle.
        if (state.kind === 'running' && state.promptId === promptId) {
          version++;
          state = { kind: 'idle' };
        }
        return;
      }
      if (state.kind === 'running' && state.promptId === promptId) return;
      version++;
      state = { kind: 'running', promptId, owner };
    },
  };
}
