/**
 * gateway/heapTuning.ts: on glibc the gateway frees one mmap()ed chunk at start-up, which raises glibc's trim
 * threshold (a 2 MB /view otherwise faulted ~250–700 pages back in; measured by `npm run bench`, minflt per request).
 * Here: it runs on glibc, is a no-op elsewhere, and leaves no `gc` global behind.
 */
import { fixHeapGrowth, HEAP_GROWING_PERCENT, heapGrowthFlag, onGlibc, raiseGlibcTrimThreshold } from '../gateway/heapTuning';

test('runs on glibc (every Linux this project ships on), reports false elsewhere, and exposes no gc()', () => {
  const glibc = onGlibc();
  if (process.platform === 'linux') expect(typeof glibc).toBe('boolean');
  expect(raiseGlibcTrimThreshold()).toBe(glibc);
  expect((globalThis as { gc?: unknown }).gc).toBeUndefined();
  expect(raiseGlibcTrimThreshold()).toBe(glibc); // a second call is harmless
});

test("V8's old-generation growth is fixed at 4× unless the operator chose their own", () => {
  expect(heapGrowthFlag([], '')).toBe(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  expect(HEAP_GROWING_PERCENT).toBe(300);
  expect(heapGrowthFlag(['--heap-growing-percent=50'], '')).toBeNull();
  expect(heapGrowthFlag([], '--max-old-space-size=512 --heap_growing_percent=20')).toBeNull();
  expect(heapGrowthFlag(['--max-old-space-size=512'], '--max-semi-space-size=16')).not.toBeNull();
  expect(fixHeapGrowth(['--heap-growing-percent=50'], '')).toBe(false);
  expect(fixHeapGrowth([], '')).toBe(true);
});
