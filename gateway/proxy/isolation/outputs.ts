import { isFileType, normaliseRef, type FileRef } from './paths';

/** The files a node output names (`{images: [{filename, subfolder, type}], gifs: [...], ...}`), normalised. */
export function filesOfOutput(output: unknown): FileRef[] {
  const out: FileRef[] = [];
  if (!output || typeof output !== 'object') return out;
  for (const items of Object.values(output as Record<string, unknown>)) {
    if (!Array.isArray(items)) continue;
    for (const it of items) {
      if (!it || typeof it !== 'object') continue;
      const { filename, subfolder, type } = it as Record<string, unknown>;
      if (typeof filename !== 'string' || !isFileType(type)) continue;
      try {
        out.push(normaliseRef(type, typeof subfolder === 'string' ? subfolder : '', filename).ref);
      } catch {
        // a name we would refuse to serve anyway
      }
    }
  }
  return out;
}

/** The files of every node in a history entry's `outputs`. */
export function filesOfOutputs(outputs: unknown): FileRef[] {
  if (!outputs || typeof outputs !== 'object') return [];
  return Object.values(outputs as Record<string, unknown>).flatMap((o) => filesOfOutput(o));
}
