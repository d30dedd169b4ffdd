import fs from 'node:fs';
import path from 'node:path';
import { closest, distance } from 'fastest-levenshtein';
import ipaddr from 'ipaddr.js';
import type { z } from 'zod';
import { configSchema } from './schema';

/** The object schema found at a key path of the config (through defaults and nullables), if any. */
function objectAt(keys: PropertyKey[]): z.ZodObject | null {
  let s: unknown = configSchema;
  for (const k of [...keys, null]) {
    // unwrap ZodDefault / ZodNullable / ZodOptional down to the object
    while (s && typeof s === 'object' && 'def' in s && (s as { def: { innerType?: unknown } }).def.innerType)
      s = (s as { def: { innerType: unknown } }).def.innerType;
    if (k === null) break;
    const shape = (s as { shape?: Record<string, unknown> } | null)?.shape;
    if (!shape || typeof k !== 'string' || !(k in shape)) return null;
    s = shape[k];
  }
  return (s as { shape?: unknown } | null)?.shape ? (s as z.ZodObject) : null;
}

/** "did you mean …" for an unknown key at a path, when a known key is a small edit away. */
export function didYouMean(parent: PropertyKey[], key: string): string {
  const obj = objectAt(parent);
  if (!obj) return '';
  const known = Object.keys(obj.shape);
  const best = closest(key.toLowerCase(), known);
  return best && distance(key.toLowerCase(), best) <= Math.max(2, Math.floor(best.length / 3)) ? ` (did you mean "${best}"?)` : '';
}

/**
 * The semantic checks zod's shapes cannot express (CIDRs parse, files are readable), run on the raw values so
 * they are reported together with the schema's problems in one message.
 */
export function semanticProblems(raw: Record<string, unknown>, baseDir: string, keyFromFlag: boolean): string[] {
  const problems: string[] = [];
  if (Array.isArray(raw.trusted_proxies)) {
    raw.trusted_proxies.forEach((cidr, i) => {
      if (typeof cidr !== 'string') return; // the schema reports the type
      try {
        if (cidr.includes('/')) ipaddr.parseCIDR(cidr);
        else ipaddr.parse(cidr);
      } catch {
        problems.push(`trusted_proxies[${i}]: not an IP address or CIDR: ${JSON.stringify(cidr)}`);
      }
    });
  }
  if (typeof raw.api_key_file === 'string' && raw.api_key_file && !keyFromFlag) {
    const file = path.resolve(baseDir, raw.api_key_file);
    try {
      const key = fs.readFileSync(file, 'utf8').trim();
      if (key.length < 16) problems.push(`api_key_file ${file}: key must be at least 16 characters`);
    } catch (e) {
      problems.push(`api_key_file ${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? 'error'})`);
    }
  }
  const tls = raw.tls as Record<string, unknown> | null | undefined;
  if (tls && typeof tls === 'object') {
    for (const k of ['cert', 'key'] as const) {
      if (typeof tls[k] !== 'string' || !tls[k]) continue;
      const f = path.resolve(baseDir, tls[k] as string);
      try {
        fs.accessSync(f, fs.constants.R_OK);
      } catch {
        problems.push(`tls.${k}: cannot read ${f}`);
      }
    }
  }
  return problems;
}
