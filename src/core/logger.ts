/**
 * What core logs through: object first, short lowercase message, errors under `err`. A pino Logger is one; core
 * never imports pino itself.
 */
export interface Logger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

/** Logs nothing: the default where a logger is optional. */
export const silentLogger: Logger = { info() {}, warn() {}, error() {}, debug() {} };
