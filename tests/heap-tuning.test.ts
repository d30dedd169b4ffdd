/**
 * gateway/heapTuning.ts: on glibc the gateway frees one mmap()ed chunk at start-up, which raises glibc's trim
 * threshold (a 2 MB /view otherwise faulted ~250–700 pages back in; measured by `npm run bench`, minflt per request).
 * Here: it runs on glibc, is a no-op elsewhere, and leaves no `gc` global behind.
 */
import { onGlibc, raiseGlibcTrimThreshold } from '../gateway/heapTuning';

test('runs on glibc (every Linux this project ships on), reports false elsewhere, and exposes no gc()', () => {
  const glibc = onGlibc();
  if (process.platform === 'linux') expect(typeof glibc).toBe('boolean');
  expect(raiseGlibcTrimThreshold()).toBe(glibc);
  expect((globalThis as { gc?: unknown }).gc).toBeUndefined();
  expect(raiseGlibcTrimThreshold()).toBe(glibc); // a second call is harmless
});
