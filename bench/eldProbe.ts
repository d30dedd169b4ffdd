/*
 * Bench-only: preloaded into the gateway process with --require by bench/procs.ts, never imported by the gateway.
 * Measures the gateway's event-loop delay between `eld-start` and `eld-stop` (sent over the IPC channel).
 */
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';

if (process.send) {
  let h: IntervalHistogram | null = null;
  process.on('message', (m: { cmd?: string }) => {
    if (m?.cmd === 'eld-start') {
      h?.disable();
      h = monitorEventLoopDelay({ resolution: 1 });
      h.enable();
      process.send!({ cmd: 'eld-start', value: true });
    } else if (m?.cmd === 'eld-stop' && h) {
      h.disable();
      const ms = (ns: number) => +(ns / 1e6).toFixed(2);
      process.send!({ cmd: 'eld-stop', value: { p50_ms: ms(h.percentile(50)), p99_ms: ms(h.percentile(99)), max_ms: ms(h.max) } });
      h = null;
    }
  });
  // The IPC channel must not keep a gateway alive that is shutting down.
  (process.channel as { unref?: () => void } | undefined)?.unref?.();
}
