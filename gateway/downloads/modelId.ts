/** File extensions a downloaded model may have (upstream ComfyUI's list; also required of the source URL's path). */
export const MODEL_EXTENSIONS = ['.safetensors', '.sft', '.ckpt', '.pth', '.pt'] as const;

const SEGMENT = /^[A-Za-z0-9._-]+$/;

/** True when a name ends in one of the model extensions (case-sensitive, as upstream). */
export function hasModelExtension(name: string): boolean {
  return MODEL_EXTENSIONS.some((ext) => name.endsWith(ext));
}

/** A parsed `<folder>/<file>` model id. */
export interface ModelId {
  folder: string;
  file: string;
}

/**
 * Parses `<folder>/<file>`: exactly one `/`, both parts `[A-Za-z0-9._-]+` and not `.`/`..`, the file with a model
 * extension, the folder one of `known`. Returns the reason as a string when the id is refused.
 */
export function parseModelId(id: unknown, known: ReadonlySet<string>): ModelId | string {
  if (typeof id !== 'string' || id.length === 0) return "model_id must be '<folder>/<file>'";
  if (id.length > 512) return 'model_id is too long';
  const parts = id.split('/');
  if (parts.length !== 2) return "model_id must contain exactly one '/'";
  const [folder, file] = parts;
  for (const seg of parts) {
    if (!SEGMENT.test(seg)) return `invalid segment ${JSON.stringify(seg)}`;
    if (seg === '.' || seg === '..') return `invalid segment ${JSON.stringify(seg)}`;
  }
  if (!hasModelExtension(file)) return `file must end with one of ${MODEL_EXTENSIONS.join(' ')}`;
  if (!known.has(folder)) return `unknown model folder ${JSON.stringify(folder)}`;
  return { folder, file };
}
