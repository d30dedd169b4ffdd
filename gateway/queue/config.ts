import { z } from 'zod';

const count = z.number().int().min(0).nullable().default(null);

/** One role's (or user's) limits; null = no limit. */
export const limitSetSchema = z
  .object({
    /** most prompts a user may have waiting (held by the gateway or waiting on a worker) */
    max_waiting: count,
    /** most of a user's prompts on workers at once (running or in a worker's waiting slot) */
    max_running: count,
    /** most prompts a user may queue per UTC day */
    per_day: count,
  })
  .strict();

/** `limits: { <role>: {max_waiting, max_running, per_day} }`. */
export const queueLimitsSchema = z.partialRecord(z.enum(['admin', 'user']), limitSetSchema).default({});

/** `scheduler: { policy, weights, coalesce_ms }`. */
export const queueSchedulerSchema = z
  .object({
    policy: z.enum(['fair', 'fifo']).default('fair'),
    weights: z.partialRecord(z.enum(['admin', 'user']), z.number().positive().max(1000)).default({}),
    /** how long a worker's waiting slot stays open after a release, so users arriving together are ordered together */
    coalesce_ms: z.number().int().min(0).max(5000).default(50),
  })
  .strict()
  .default({ policy: 'fair', weights: {}, coalesce_ms: 50 });

/** A limit set as the admin API and the store carry it (every key optional). */
export type LimitSet = z.infer<typeof limitSetSchema>;

/** `upstreams: [{url, name, weight, tags}]`: several ComfyUI workers (the first is also `upstream`). */
export const upstreamsSchema = z
  .array(
    z
      .object({
        url: z.url({ protocol: /^https?$/ }),
        name: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'letters, digits, _ . - (at most 64)'),
        weight: z.number().positive().max(100).default(1),
        tags: z.array(z.string().min(1).max(64)).max(32).default([]),
      })
      .strict(),
  )
  .min(1)
  .max(64)
  .refine((l) => new Set(l.map((w) => w.name)).size === l.length, 'worker names must be unique')
  .nullable()
  .default(null);

/**
 * The folder every worker reads as its ComfyUI input directory (a shared mount): uploads go to the first worker
 * and every worker must see them. Required with more than one worker.
 */
export const sharedInputSchema = z.string().min(1).nullable().default(null);
