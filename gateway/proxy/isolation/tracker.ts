import type { Logger } from '../../log';
import type { Upstream } from '../upstream';
import type { Ledger } from './ledger';

/** What the gateway believes ComfyUI is running right now. */
export type RunState = { kind: 'unknown' } | { kind: 'idle' } | { kind: 'running'; promptId: string; owner: string | null };

/**
 * Attributes WebSocket frames that carry no prompt id (legacy previews type 1, progress text type 3, custom
 * events) to the prompt ComfyUI is executing. ComfyUI sends progress text with no sid at all (to every socket),
 * so the only safe rule is "deliver it to the owner of the running prompt, and to nobody while unsure".
 *
 * Knowledge comes from the owner's own socket (events that name the prompt) and from GET /queue, asked once per
 * `status` broadcast (ComfyUI sends one on every queue change: a prompt queued, started or finished). Between a
 * `status` and the answer the state is `unknown`, so a stale owner never receives the next prompt's frames.
 */
export interface RunTracker {
  readonly state: RunState;
  /** the running prompt is this user's */
  runningFor(user: string): boolean;
  /** nothing is running (known, not assumed) */
  idle(): boolean;
  /** a `status` frame arrived: the queue changed */
  onStatus(): void;
  /** an event naming a prompt the gateway knows the owner of */
  onPromptEvent(type: string, promptId: string, owner: string, data: Record<string, unknown>): void;
}

const TERMINAL = new Set(['execution_success', 'execution_error', 'execution_interrupted']);

/** Builds the tracker over the ledger (owners) and ComfyUI's GET /queue. */
export function createRunTracker(deps: { upstream: Upstream; ledger: Ledger; logger: Logger }): RunTracker {
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
        const pid = Array.isArray(first) && typeof first[1] === 'string' ? first[1] : null;
        state = pid ? { kind: 'running', promptId: pid, owner: deps.ledger.owner(pid) ?? null } : { kind: 'idle' };
      }
    } catch (e) {
      deps.logger.debug({ err: (e as Error).message }, 'run tracker: GET /queue failed');
    } finally {
      inflight = false;
      if (again) {
        again = false;
        void refresh();
      }
    }
  }

  return {
    get state() {
      return state;
    },
    runningFor(user) {
      return state.kind === 'running' && state.owner === user;
    },
    idle: () => state.kind === 'idle',
    onStatus() {
      version++;
      state = { kind: 'unknown' };
      void refresh();
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
