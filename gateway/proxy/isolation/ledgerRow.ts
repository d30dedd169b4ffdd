import type { PromptRecord } from './ledger';
import { isFileType, type FileRef } from './paths';

/** One row of the ledger file (format version 1) as a record; null for a row that is not one (read, never trusted). */
export function ledgerRecordOf(row: unknown): PromptRecord | null {
  if (!Array.isArray(row) || typeof row[0] !== 'string' || typeof row[1] !== 'string') return null;
  const files: FileRef[] = [];
  for (const f of Array.isArray(row[5]) ? (row[5] as unknown[]) : []) {
    if (Array.isArray(f) && isFileType(f[0]) && typeof f[1] === 'string' && typeof f[2] === 'string')
      files.push({ type: f[0], subfolder: f[1], filename: f[2] });
  }
  const upstreamId = typeof row[6] === 'string' && row[6] ? row[6] : undefined;
  const worker = typeof row[7] === 'string' && row[7] ? row[7] : undefined;
  return {
    ...(worker ? { worker } : {}),
    id: row[0],
    owner: row[1],
    at: Number(row[2]) || 0,
    clientId: String(row[3] ?? ''),
    upstreamClientId: String(row[4] ?? ''),
    files,
    ...(upstreamId ? { upstreamId } : {}),
  };
}
