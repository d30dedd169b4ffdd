import { sql, type Kysely, type Migration } from 'kysely';

/**
 * The PostgreSQL schema, one migration per change, applied in name order by kysely's Migrator (store/pg.ts migrate).
 * Records whose shape other parts own (the prompt ledger, ComfyUI ids, HF tokens) are jsonb documents, so fields
 * added there flow through without a migration here.
 */
export const MIGRATIONS: Record<string, Migration> = {
  '0001_initial': {
    async up(db: Kysely<unknown>) {
      await sql`
        CREATE TABLE gw_users (
          id text PRIMARY KEY,
          username text NOT NULL UNIQUE,
          email text UNIQUE,
          legacy boolean NOT NULL DEFAULT false,
          role text NOT NULL CHECK (role IN ('admin', 'user')),
          password_hash text NOT NULL,
          disabled boolean NOT NULL DEFAULT false,
          permissions jsonb NOT NULL DEFAULT '[]',
          created_at text NOT NULL,
          tokens_valid_after bigint NOT NULL,
          seq bigserial
        );
        CREATE TABLE gw_tokens (
          id text PRIMARY KEY,
          username text NOT NULL REFERENCES gw_users(username) ON DELETE CASCADE,
          name text NOT NULL,
          prefix text NOT NULL,
          sha256 text NOT NULL UNIQUE,
          created_at text NOT NULL,
          expires_at text,
          last_used_at text
        );
        CREATE TABLE gw_revoked (jti text PRIMARY KEY, exp bigint NOT NULL);
        CREATE INDEX gw_revoked_exp ON gw_revoked (exp);
        CREATE TABLE gw_meta (key text PRIMARY KEY, value jsonb NOT NULL);
        CREATE TABLE gw_docs (
          coll text NOT NULL,
          key text NOT NULL,
          value jsonb NOT NULL,
          seq bigserial,
          PRIMARY KEY (coll, key)
        );
        CREATE INDEX gw_docs_seq ON gw_docs (coll, seq);
        CREATE TABLE gw_audit (
          id bigserial PRIMARY KEY,
          time timestamptz NOT NULL DEFAULT now(),
          event text NOT NULL,
          username text,
          record jsonb NOT NULL
        );
      `.execute(db);
    },
  },
  // The gateway queue (issue 12): held and failed prompts, per-user limits, daily usage (store/pgQueue.ts).
  '0002_queue': {
    async up(db: Kysely<unknown>) {
      await sql`
        CREATE TABLE gw_queue_held (id text PRIMARY KEY, seq bigint NOT NULL, value jsonb NOT NULL);
        CREATE TABLE gw_queue_failed (n bigserial PRIMARY KEY, id text NOT NULL, value jsonb NOT NULL);
        CREATE INDEX gw_queue_failed_id ON gw_queue_failed (id);
        CREATE TABLE gw_queue_limits (owner text PRIMARY KEY, value jsonb NOT NULL);
        CREATE TABLE gw_queue_usage (
          owner text NOT NULL,
          day text NOT NULL,
          prompts bigint NOT NULL DEFAULT 0,
          gpu_s double precision NOT NULL DEFAULT 0,
          images bigint NOT NULL DEFAULT 0,
          PRIMARY KEY (owner, day)
        );
      `.execute(db);
    },
  },
  // ComfyUI's answer to a prompt released by one replica for a submitter waiting on another (queue/answers.ts):
  // kept until that replica takes it, or until `expires`, when a refusal nobody took is recorded as failed.
  '0003_queue_answers': {
    async up(db: Kysely<unknown>) {
      await sql`
        CREATE TABLE gw_queue_answers (id text PRIMARY KEY, replica text NOT NULL, expires timestamptz NOT NULL, value jsonb NOT NULL);
        CREATE INDEX gw_queue_answers_expires ON gw_queue_answers (expires);
      `.execute(db);
    },
  },
};
