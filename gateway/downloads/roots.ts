import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../log';

/** Where the model roots learned from ComfyUI are remembered, so a start can sweep orphans without asking it. */
export interface RootsPersistence {
  load(): Promise<string[]>;
  /** failures are logged, never thrown */
  save(roots: string[]): void;
}

/** Only absolute paths are roots (anything else in a stored list is ignored). */
export const absoluteRoots = (v: unknown): string[] =>
  Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string' && path.isAbsolute(x)) : [];

/** The roots in one file of data_dir (atomic write, rewritten only when they changed; failures only logged). */
export function fileRoots(file: string, logger: Logger): RootsPersistence {
  return {
    async load() {
      try {
        return absoluteRoots(JSON.parse(fs.readFileSync(file, 'utf8')));
      } catch {
        return [];
      }
    },
    save(roots) {
      try {
        const text = JSON.stringify(roots);
        if (fs.existsSync(file) && fs.readFileSync(file, 'utf8') === text) return;
        fs.mkdirSync(path.dirname(file), { recursive: true });
        const tmp = `${file}.${process.pid}.tmp`;
        fs.writeFileSync(tmp, text, { mode: 0o600 });
        fs.renameSync(tmp, file);
      } catch (e) {
        logger.warn({ err: (e as Error).message }, 'could not remember model folder roots');
      }
    },
  };
}
