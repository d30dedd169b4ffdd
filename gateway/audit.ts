import type { Logger } from './log';

/** One audit record: what happened, to whom, from where; never a secret. */
export interface AuditEvent {
  event: string;
  user?: string | null;
  ip?: string;
  user_agent?: string;
  [k: string]: unknown;
}

/** The audit trail: JSON lines marked `audit: true` in the log, plus a bounded in-memory tail for the admin API. */
export interface Audit {
  record(e: AuditEvent): void;
  recent(limit: number): (AuditEvent & { time: string })[];
}

/** Builds the audit trail on top of the gateway logger; `onRecord` sees every record (metrics). */
export function createAudit(logger: Logger, keep = 5000, onRecord?: (e: AuditEvent) => void): Audit {
  const ring: (AuditEvent & { time: string })[] = [];
  return {
    record(e) {
      const entry = { ...e, time: new Date().toISOString() };
      ring.push(entry);
      if (ring.length > keep) ring.splice(0, ring.length - keep);
      logger.info({ audit: true, ...e }, `audit ${e.event}`);
      onRecord?.(e);
    },
    recent(limit) {
      return ring.slice(-Math.max(0, limit)).reverse();
    },
  };
}
