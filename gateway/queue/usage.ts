/** What one finished prompt used: GPU-seconds from execution start to its end, and the images it saved. */
export interface PromptUsage {
  gpu_s: number;
  images: number;
  /** unix ms of the end (the day it counts for) */
  endedAt: number;
}

const ENDS = new Set(['execution_success', 'execution_error', 'execution_interrupted']);

/**
 * Reads a ComfyUI history entry: its `status.messages` are the prompt's own WebSocket lifecycle events with their
 * timestamps (execution_start … execution_success/error/interrupted), and its outputs list the images. Preview
 * (temp) images are not counted: they are not kept.
 */
export function usageOfHistory(entry: unknown): PromptUsage | null {
  if (!entry || typeof entry !== 'object') return null;
  const e = entry as { status?: { messages?: unknown }; outputs?: unknown };
  const messages = Array.isArray(e.status?.messages) ? (e.status!.messages as unknown[]) : [];
  let start: number | null = null;
  let end: number | null = null;
  for (const m of messages) {
    if (!Array.isArray(m) || typeof m[0] !== 'string' || !m[1] || typeof m[1] !== 'object') continue;
    const ts = Number((m[1] as { timestamp?: unknown }).timestamp);
    if (!Number.isFinite(ts)) continue;
    if (m[0] === 'execution_start') start = ts;
    else if (ENDS.has(m[0])) end = ts;
  }
  if (start === null || end === null) return null;
  let images = 0;
  if (e.outputs && typeof e.outputs === 'object') {
    for (const out of Object.values(e.outputs as Record<string, unknown>)) {
      const list = (out as { images?: unknown })?.images;
      if (Array.isArray(list)) images += list.filter((i) => (i as { type?: unknown })?.type !== 'temp').length;
    }
  }
  return { gpu_s: Math.max(0, end - start) / 1000, images, endedAt: end };
}
