import type { HeldPrompt } from '../../gateway/queue/store';
import type { FakeComfy, RecordedRequest } from './fakeComfy';

/** Polls `check` until it returns something truthy (a deadline, not a sleep). */
export async function eventually<T>(check: () => T | undefined | null | false, timeoutMs = 10_000, what = 'condition'): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`${what} not reached within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * The fake ComfyUI's entry of a prompt, once the gateway's queue released it: a prompt accepted while the worker
 * was busy reaches ComfyUI a little after the 200.
 */
export function promptReached(fake: FakeComfy, promptId: string, timeoutMs = 10_000): Promise<any> {
  return eventually(() => fake.prompts.get(promptId), timeoutMs, `prompt ${promptId} reaching ComfyUI`);
}

/** Waits until `n` requests matching `pred` reached the fake ComfyUI; returns them. */
export function requestsReached(
  fake: FakeComfy,
  pred: (r: RecordedRequest) => boolean,
  n: number,
  timeoutMs = 10_000,
): Promise<RecordedRequest[]> {
  return eventually(
    () => {
      const l = fake.requests.filter(pred);
      return l.length >= n ? l : null;
    },
    timeoutMs,
    `${n} matching requests`,
  );
}

/** A held prompt record for queue unit and store tests (plain defaults; `extra` overrides). */
export const heldPrompt = (id: string, owner: string, seq: number, extra: Partial<HeldPrompt> = {}): HeldPrompt => ({
  id,
  owner,
  role: 'user',
  seq,
  number: seq,
  at: 0,
  front: false,
  body: '{}',
  comfyUser: null,
  clientId: '',
  upstreamClientId: '',
  ...extra,
});
