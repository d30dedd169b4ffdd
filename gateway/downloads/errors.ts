import { AppError } from '../errors';

/** The model-download API's refusals: upstream ComfyUI's codes, plus the gateway's identity and storage ones. */
export const dlErrors = {
  invalidJson: () => new AppError(400, 'INVALID_JSON', 'Request body must be valid JSON.'),
  invalidBody: (message: string, details: Record<string, unknown> = {}) => new AppError(400, 'INVALID_BODY', message, details),
  emptyRequest: () => new AppError(400, 'EMPTY_REQUEST', 'No models supplied.'),
  invalidModelId: (modelId: unknown, why: string) =>
    new AppError(400, 'INVALID_MODEL_ID', `Invalid model_id: ${why}`, { model_id: modelId }),
  urlNotAllowed: (modelId: string, url: string, why: string) =>
    new AppError(400, 'URL_NOT_ALLOWED', `Server-side downloads only accept allow-listed hosts: ${why}`, { model_id: modelId, url }),
  notDownloadable: (modelId: string, url: string) =>
    new AppError(
      400,
      'MODEL_NOT_DOWNLOADABLE',
      `Model ${modelId} is gated on HuggingFace and your HuggingFace login (if any) does not grant access.`,
      { model_id: modelId, url },
    ),
  alreadyAvailable: (modelId: string) =>
    new AppError(409, 'ALREADY_AVAILABLE', `Model already exists on disk: ${modelId}`, { model_id: modelId }),
  alreadyDownloading: (modelId: string) =>
    new AppError(409, 'ALREADY_DOWNLOADING', `A download for ${modelId} is already in progress.`, { model_id: modelId }),
  notDownloading: (modelId: string) => new AppError(404, 'NOT_DOWNLOADING', `No active download for ${modelId}.`, { model_id: modelId }),
  insufficientStorage: (modelId: string, required: number, available: number) =>
    new AppError(507, 'INSUFFICIENT_STORAGE', `Not enough free disk space for ${modelId}.`, { model_id: modelId, required, available }),
  forbidden: () => new AppError(403, 'FORBIDDEN', 'Downloading models requires the download_models permission.'),
  notYourDownload: (modelId: string) =>
    new AppError(403, 'FORBIDDEN', `The download of ${modelId} was started by another user; only they or an admin may cancel it.`, {
      model_id: modelId,
    }),
  hfNotEligible: () =>
    new AppError(
      403,
      'HF_AUTH_NOT_ELIGIBLE',
      'HuggingFace login is only offered to users who may download models, from a browser on the gateway host ' +
        '(or when hf_oauth.redirect_uri routes the callback through the gateway).',
    ),
  hfNotConfigured: () => new AppError(503, 'HF_AUTH_NOT_CONFIGURED', 'HuggingFace login is not configured (hf_oauth.client_id).'),
  hfInProgress: () =>
    new AppError(
      409,
      'HF_AUTH_IN_PROGRESS',
      'Another HuggingFace login attempt is in progress. Try again after it completes or times out.',
    ),
  hfStartFailed: (why: string) => new AppError(503, 'HF_AUTH_START_FAILED', `Could not start the HuggingFace login flow: ${why}`),
  foldersUnknown: () =>
    new AppError(
      502,
      'UPSTREAM_UNAVAILABLE',
      "ComfyUI's model folders are not known yet (ComfyUI is not reachable and comfyui.models_dir is not set).",
    ),
  methodNotAllowed: () => new AppError(405, 'METHOD_NOT_ALLOWED', 'Method not allowed'),
};

/** A failure recorded on a model's status entry (`last_error`) after a download did not complete. */
export interface LastError {
  code: string;
  message: string;
}

/** Thrown inside download workers; `transient` failures are retried with a Range request. */
export class DownloadFailure extends Error {
  constructor(
    public readonly code: string,
    message: string,
    public readonly transient = false,
  ) {
    super(message);
    this.name = 'DownloadFailure';
  }
}
