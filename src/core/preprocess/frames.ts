/**
 * The byte framing between the server and its preprocessing processes (process-pool.ts): each message is
 *
 *   u32 LE header length | u32 LE payload length | header (JSON, UTF-8) | payload (raw bytes)
 *
 * on a pipe of its own in each direction. Image bytes and pixels travel as the payload, written to the pipe as they
 * are and read straight into one buffer of the announced size: no serialiser copies them, and nothing but that one
 * buffer is allocated per message. (Node's IPC channel cost more server CPU per image, mostly copies and garbage
 * collection: docs/PERFORMANCE.md.)
 */

export const PREFIX_BYTES = 8;
export const MAX_HEADER_BYTES = 64 * 1024;

/** The frame's first part (prefix and header); write the payload after it as it is. */
export function frameHead(header: unknown, payloadLength: number): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  if (json.length > MAX_HEADER_BYTES) throw new RangeError(`frame header of ${json.length} bytes, the limit is ${MAX_HEADER_BYTES}`);
  const head = Buffer.allocUnsafe(PREFIX_BYTES + json.length);
  head.writeUInt32LE(json.length, 0);
  head.writeUInt32LE(payloadLength, 4);
  json.copy(head, PREFIX_BYTES);
  return head;
}

/** Copies from chunk[at..] into target[filled..] as much as both allow; returns the bytes copied. */
function copyUpTo(chunk: Buffer, at: number, target: Buffer, filled: number): number {
  const n = Math.min(target.length - filled, chunk.length - at);
  chunk.copy(target, filled, at, at + n);
  return n;
}

/**
 * Reassembles frames from a byte stream cut anywhere. The header is read and parsed first; `accept` then sees it with
 * the announced payload length, and only an accepted frame gets a payload buffer, so a peer cannot make the reader
 * allocate more than `accept` allows. A header over its limit or not JSON, or a frame `accept` refuses, is a
 * protocol error: `onError` is called once and the reader takes nothing more (the peer is not to be trusted after
 * that). `fail` ends the reader the same way from outside.
 */
export class FrameReader {
  private readonly prefix = Buffer.alloc(PREFIX_BYTES);
  private prefixFill = 0;
  private header: Buffer | undefined;
  private headerFill = 0;
  private parsed: unknown;
  private payloadLength = 0;
  private payload: Buffer | undefined;
  private payloadFill = 0;
  private failed = false;

  constructor(
    private readonly accept: (header: unknown, payloadLength: number) => string | undefined,
    private readonly onFrame: (header: unknown, payload: Buffer) => void,
    private readonly onError: (err: Error) => void,
  ) {}

  push(chunk: Buffer): void {
    let at = 0;
    while (!this.failed) {
      if (this.header === undefined) {
        const n = copyUpTo(chunk, at, this.prefix, this.prefixFill);
        this.prefixFill += n;
        at += n;
        if (this.prefixFill < PREFIX_BYTES) return;
        const headerLength = this.prefix.readUInt32LE(0);
        if (headerLength === 0 || headerLength > MAX_HEADER_BYTES) {
          this.fail(new Error(`frame header of ${headerLength} bytes (1 to ${MAX_HEADER_BYTES} allowed)`));
          return;
        }
        this.payloadLength = this.prefix.readUInt32LE(4);
        this.header = Buffer.allocUnsafe(headerLength);
        this.headerFill = 0;
      }
      const header = this.header;
      if (this.headerFill < header.length) {
        const n = copyUpTo(chunk, at, header, this.headerFill);
        this.headerFill += n;
        at += n;
        if (this.headerFill < header.length) return;
      }
      if (this.payload === undefined) {
        try {
          this.parsed = JSON.parse(header.toString('utf8'));
        } catch {
          this.fail(new Error('frame header is not JSON'));
          return;
        }
        const refused = this.accept(this.parsed, this.payloadLength);
        if (refused !== undefined) {
          this.fail(new Error(refused));
          return;
        }
        this.payload = Buffer.allocUnsafe(this.payloadLength);
        this.payloadFill = 0;
      }
      const payload = this.payload;
      if (this.payloadFill < payload.length) {
        const n = copyUpTo(chunk, at, payload, this.payloadFill);
        this.payloadFill += n;
        at += n;
        if (this.payloadFill < payload.length) return;
      }
      const parsed = this.parsed;
      this.header = undefined;
      this.payload = undefined;
      this.parsed = undefined;
      this.prefixFill = 0;
      this.onFrame(parsed, payload);
      if (at >= chunk.length) return;
    }
  }

  /** Ends the reader: nothing more is taken, and `onError` is called if it has not been. */
  fail(err: Error): void {
    if (this.failed) return;
    this.failed = true;
    this.header = undefined;
    this.payload = undefined;
    this.parsed = undefined;
    this.onError(err);
  }
}
