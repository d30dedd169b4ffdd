/** What a worker can run: its node classes and the model files its loaders list (from its /object_info). */
export interface Caps {
  classes: Set<string>;
  /** model inputs (`ckpt_name`, `lora_name`, …) → the files this worker offers */
  models: Map<string, Set<string>>;
}

/** What a prompt needs: its node classes, and the model files it names. */
export interface Needs {
  classes: string[];
  models: [string, string][];
}

const MODEL_INPUT = /_name$/;
type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj | null => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Obj) : null);

/** Reads a worker's /object_info answer. */
export function capsOf(objectInfo: unknown): Caps {
  const caps: Caps = { classes: new Set(), models: new Map() };
  if (!objectInfo || typeof objectInfo !== 'object') return caps;
  for (const [cls, def] of Object.entries(objectInfo as Obj)) {
    caps.classes.add(cls);
    for (const group of ['required', 'optional']) {
      const inputs = obj(obj(obj(def)?.input)?.[group]);
      if (!inputs) continue;
      for (const [name, spec] of Object.entries(inputs)) {
        if (!MODEL_INPUT.test(name) || !Array.isArray(spec)) continue;
        const opts = obj(spec[1])?.options;
        const list: unknown[] | null = Array.isArray(spec[0]) ? spec[0] : spec[0] === 'COMBO' && Array.isArray(opts) ? opts : null;
        if (!list) continue;
        let set = caps.models.get(name);
        if (!set) caps.models.set(name, (set = new Set()));
        for (const v of list) if (typeof v === 'string') set.add(v);
      }
    }
  }
  return caps;
}

/** Reads what a prompt body (POST /prompt JSON) needs; nothing when it cannot be read. */
export function needsOf(body: string): Needs {
  const needs: Needs = { classes: [], models: [] };
  let prompt: unknown;
  try {
    prompt = (JSON.parse(body) as { prompt?: unknown }).prompt;
  } catch {
    return needs;
  }
  if (!prompt || typeof prompt !== 'object') return needs;
  for (const n of Object.values(prompt as Obj)) {
    const node = obj(n);
    if (typeof node?.class_type === 'string') needs.classes.push(node.class_type);
    for (const [name, v] of Object.entries(obj(node?.inputs) ?? {}))
      if (MODEL_INPUT.test(name) && typeof v === 'string') needs.models.push([name, v]);
  }
  return needs;
}

/** Whether a worker has every node class and model file a prompt names (unknown capabilities: assumed yes). */
export function fits(caps: Caps | null, needs: Needs): boolean {
  if (!caps) return true;
  if (!needs.classes.every((c) => caps.classes.has(c))) return false;
  return needs.models.every(([name, file]) => !caps.models.has(name) || caps.models.get(name)!.has(file));
}
