import type express from 'express';
import { dlErrors } from './errors';

/** One requested model: its source URL and, optionally, the sha256 the file must have. */
export interface ModelSource {
  url: string;
  sha256: string | null;
}

/** At most this many models per request (a workflow names tens). */
export const MAX_MODELS = 1000;

const isObject = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);

/** The JSON body of a request read by the raw parser; malformed → 400 INVALID_JSON (upstream's code). */
export function jsonBody(req: express.Request): unknown {
  const raw = req.body;
  const text = Buffer.isBuffer(raw) ? raw.toString('utf8') : '';
  try {
    return JSON.parse(text);
  } catch {
    throw dlErrors.invalidJson();
  }
}

/** `{"models": {model_id: url | {url, sha256}}}` → a map; anything else → 400 INVALID_BODY. */
export function parseModelsBody(body: unknown): Map<string, ModelSource> {
  if (!isObject(body)) throw dlErrors.invalidBody('Validation failed.', { errors: [{ path: [], message: 'body must be a JSON object' }] });
  const models = Object.prototype.hasOwnProperty.call(body, 'models') ? body.models : {};
  if (!isObject(models))
    throw dlErrors.invalidBody('Validation failed.', {
      errors: [{ path: ['models'], message: 'models must be an object of model_id → url' }],
    });
  const keys = Object.keys(models);
  if (keys.length > MAX_MODELS)
    throw dlErrors.invalidBody('Validation failed.', { errors: [{ path: ['models'], message: `at most ${MAX_MODELS} models` }] });
  const out = new Map<string, ModelSource>();
  for (const id of keys) {
    const v = Object.getOwnPropertyDescriptor(models, id)?.value;
    if (typeof v === 'string') {
      out.set(id, { url: v, sha256: null });
      continue;
    }
    const bad = (message: string) => dlErrors.invalidBody('Validation failed.', { errors: [{ path: ['models', id], message }] });
    if (!isObject(v) || typeof v.url !== 'string') throw bad('expected a URL string or {url, sha256}');
    let sha: string | null = null;
    if (v.sha256 !== undefined && v.sha256 !== null) {
      if (typeof v.sha256 !== 'string' || !/^[0-9a-fA-F]{64}$/.test(v.sha256)) throw bad('sha256 must be 64 hex characters');
      sha = v.sha256.toLowerCase();
    }
    out.set(id, { url: v.url, sha256: sha });
  }
  return out;
}

/** `{"model_id": "..."}` → the id; anything else → 400 INVALID_BODY. */
export function parseCancelBody(body: unknown): string {
  if (!isObject(body) || typeof body.model_id !== 'string')
    throw dlErrors.invalidBody('Validation failed.', { errors: [{ path: ['model_id'], message: 'model_id is required (a string)' }] });
  return body.model_id;
}
