import v8 from 'node:v8';
import vm from 'node:vm';

/** The size of the one chunk freed at start-up: glibc then keeps up to twice this much freed heap before trimming. */
export const HEAP_KEEP_CHUNK = 32 * 1024 * 1024;

/**
 * What the shipped launchers (Dockerfile, deploy/comfyui-gateway.service) and `npm run bench` set: glibc then keeps
 * up to 128 MiB of freed heap and grows it 64 MiB at a time, so relaying bodies stops faulting pages back in even
 * after the heap has grown (the start-up chunk below raises the threshold only to 64 MiB, and in a bench run after
 * minutes of small requests a 2 MB /view faulted 120–620 pages again; with these, 4–25). Setting any of them turns
 * glibc's dynamic thresholds off, so the mmap threshold is set too: at its 128 KiB default every buffered body above
 * it (8.5 MB for a 10,000-entry /history) would be a fresh mapping, faulted in page by page. Read by glibc at exec.
 */
export const MALLOC_ENV = {
  MALLOC_TRIM_THRESHOLD_: '134217728',
  MALLOC_TOP_PAD_: '67108864',
  MALLOC_MMAP_THRESHOLD_: '33554432',
} as const;

/** Whether this process runs on glibc (Linux with glibc; not musl, macOS or Windows). */
export function onGlibc(): boolean {
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  return typeof header?.glibcVersionRuntime === 'string';
}

/**
 * Stops glibc from returning the heap to the kernel after every burst of body buffers. Node reads sockets into
 * 64 KiB buffers (and the HTTP parser copies each body chunk into another): relaying a 2 MB /view mallocs and frees
 * ~64 of them. glibc trims the heap's top whenever more than 128 KiB of it is free, so the next buffers fault their
 * pages in again: ~250–700 page faults per 2 MB (nginx: none), and 12–27 ms of CPU instead of 3–5 ms on this VM.
 * Freeing one mmap()ed chunk raises glibc's dynamic thresholds (mmap to the chunk's size, trim to twice it), as
 * MALLOC_TRIM_THRESHOLD_ would, but from inside the process, whatever launched it. Costs at most 32 MiB of kept
 * heap. A no-op off glibc. Must run before the heap is busy: it collects garbage once.
 */
export function raiseGlibcTrimThreshold(): boolean {
  if (!onGlibc()) return false;
  // Above the mmap threshold: a mapping of its own, unreachable once this returns.
  Buffer.allocUnsafeSlow(HEAP_KEEP_CHUNK);
  // free() runs when V8 collects the buffer: collect now, once, rather than whenever the next major GC comes.
  const exposed = (globalThis as { gc?: () => void }).gc;
  if (exposed) exposed();
  else {
    v8.setFlagsFromString('--expose-gc');
    (vm.runInNewContext('gc') as () => void)();
    v8.setFlagsFromString('--no-expose-gc');
  }
  return true;
}

/** The old generation's fixed growth (V8 `--heap-growing-percent`): a major GC lets it grow to 4× what it kept. */
export const HEAP_GROWING_PERCENT = 300;

/**
 * The V8 flag fixHeapGrowth sets, or null when the operator chose their own (on the command line or in
 * NODE_OPTIONS): theirs wins.
 */
export function heapGrowthFlag(execArgv: readonly string[], nodeOptions: string): string | null {
  const chosen = [...execArgv, nodeOptions].some((a) => /heap[-_]growing[-_]percent/.test(a));
  return chosen ? null : `--heap-growing-percent=${HEAP_GROWING_PERCENT}`;
}

/**
 * Fixes how far V8 lets the old generation grow after a major GC. V8 picks that factor from the last GCs' speeds:
 * after a minute of small requests it drops to 1.1, which leaves less slack below the next limit than the young
 * generation holds, so V8 starts incremental marking again right after every major GC. Relaying 2 MB /view bodies
 * then ran ~20 major GCs a second (2.3 ms of GC per request instead of 0.2; 360 MiB/s instead of 700) although the
 * old generation stayed at 21 MB. A fixed factor of 4 (V8's own at start-up) keeps the slack; the cost is a larger
 * heap under load (RSS 236 MiB instead of 171 after a minute of load in the bench), which V8's memory reducer gives
 * back when the load stops. Read by V8 whenever it recomputes its limits, so setting it at start-up is enough.
 */
export function fixHeapGrowth(execArgv: readonly string[] = process.execArgv, nodeOptions = process.env.NODE_OPTIONS ?? ''): boolean {
  const flag = heapGrowthFlag(execArgv, nodeOptions);
  if (flag) v8.setFlagsFromString(flag);
  return flag !== null;
}
