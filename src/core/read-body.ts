/**
 * Reading a request body stream to its end within a byte limit: the part the body readers of `/v1` images
 * (plugins/raw-body.ts) and `/v2` inference (protocols/oip/body.ts) share. Each keeps its own memory (a pooled
 * buffer, segments) and hands it the bytes through `write`.
 */

export interface BodyStreamOptions {
  /** Most bytes the body may hold: past it `tooLarge()`, and reading stops. */
  limit: number;
  /** The body's declared length (Content-Length) where the reader relies on it: more or fewer bytes are `lengthMismatch()`. */
  declared: number | undefined;
  tooLarge(): Error;
  lengthMismatch(): Error;
  /** Takes the next chunk; `received` is the count of bytes before it. */
  write(bytes: Buffer, received: number): void;
}

/**
 * Reads `payload` into `opts.write` until it ends or fails, then calls `done` once, with the error or none and the
 * bytes received. The stream's own errors (a client that broke its upload) get status 400 where they carry none.
 */
export function readBodyStream(
  payload: NodeJS.ReadableStream,
  opts: BodyStreamOptions,
  done: (err: Error | undefined, received: number) => void,
): void {
  const { limit, declared } = opts;
  let received = 0;
  const finish = (err: Error | undefined): void => {
    payload.removeListener('data', onData);
    payload.removeListener('end', onEnd);
    payload.removeListener('error', onError);
    done(err, received);
  };
  const onData = (chunk: Buffer | string): void => {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    if (received + bytes.length > limit) {
      finish(opts.tooLarge());
      return;
    }
    if (declared !== undefined && received + bytes.length > declared) {
      finish(opts.lengthMismatch());
      return;
    }
    opts.write(bytes, received);
    received += bytes.length;
  };
  const onEnd = (): void => {
    finish(declared !== undefined && received !== declared ? opts.lengthMismatch() : undefined);
  };
  const onError = (err: Error & { statusCode?: number }): void => {
    if (!(typeof err.statusCode === 'number' && err.statusCode >= 400)) err.statusCode = 400;
    finish(err);
  };
  payload.on('data', onData);
  payload.on('end', onEnd);
  payload.on('error', onError);
  payload.resume();
}
