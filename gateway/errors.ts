/** The one error type handlers throw; rendered by http/render.ts as {"error":{code,message,details}}. */
export class AppError extends Error {
  constructor(
    public readonly status: number,
    public readonly code: string,
    message: string,
    public readonly details: Record<string, unknown> = {},
    /** extra response headers, e.g. Retry-After */
    public readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'AppError';
  }
}

/** Shorthands for the refusals every part of the gateway shares. */
export const errors = {
  authRequired: () => new AppError(401, 'AUTH_REQUIRED', 'Authentication required'),
  invalidCredentials: () => new AppError(401, 'INVALID_CREDENTIALS', 'Invalid credentials'),
  forbidden: (message = 'Forbidden') => new AppError(403, 'FORBIDDEN', message),
  notFound: (message = 'Not found') => new AppError(404, 'NOT_FOUND', message),
  invalidBody: (message: string, details: Record<string, unknown> = {}) => new AppError(400, 'INVALID_BODY', message, details),
  /** a prompt the gateway will not queue for this caller (details name the node) */
  promptRefused: (message: string, details: Record<string, unknown> = {}) => new AppError(400, 'PROMPT_REFUSED', message, details),
  /** a queue limit (max_waiting, max_running) of the caller is reached: details {limit, value, resets_at} */
  queueLimit: (message: string, details: Record<string, unknown>) => new AppError(429, 'QUEUE_LIMIT', message, details),
  /** the caller's prompts for today are used up: details {limit, value, resets_at} */
  quotaExceeded: (message: string, details: Record<string, unknown>) => new AppError(429, 'QUOTA_EXCEEDED', message, details),
  upstreamUnavailable: () => new AppError(502, 'UPSTREAM_UNAVAILABLE', 'ComfyUI is not reachable right now; try again shortly'),
  /** ComfyUI took longer than `upstream_timeout_s` to start answering */
  upstreamTimeout: (seconds: number) =>
    new AppError(504, 'UPSTREAM_TIMEOUT', `ComfyUI did not start answering within ${seconds} s`, { timeout_s: seconds }),
};
