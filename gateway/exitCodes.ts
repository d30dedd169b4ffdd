/** Exit codes of every command (README "Command line"): success, runtime failure, usage/configuration error. */
export const EXIT = { OK: 0, RUNTIME: 1, USAGE: 2 } as const;
