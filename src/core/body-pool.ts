/**
 * Reusable buffers for request bodies.
 *
 * Why: each raw image body used to be a fresh buffer (Fastify concatenates the socket's chunks into a new one per
 * request). Large ArrayBuffers are external memory to V8, and their churn starts mark-compacts on the main
 * thread and pause the event loop; reused buffers cause fewer of them (docs/PERFORMANCE.md).
 *
 * Buffers come in power-of-two classes from `minBytes` to `maxBytes`; larger bodies get a buffer of their own. At
 * most `maxFreePerClass` free buffers are kept per class, so what the pool holds is bounded (8 per class from
 * 64 kB to 1 MB: under 16 MB). A buffer goes back only through `release`, which its owner calls once nothing reads
 * it any more: for an image, once the pipeline's promise has settled (sharp reads the bytes asynchronously).
 * Never releasing is safe (the buffer is garbage-collected); releasing early is not.
 */

export interface PooledBuffer {
  /** Exactly the size asked for: a view of the front of a class-sized buffer. */
  readonly buffer: Buffer;
  /** Returns the memory to the pool; idempotent. The buffer must not be read or written afterwards. */
  release(): void;
}

export interface BodyPoolOptions {
  minBytes?: number;
  maxBytes?: number;
  maxFreePerClass?: number;
}

export class BodyPool {
  private readonly minBytes: number;
  private readonly maxBytes: number;
  private readonly maxFreePerClass: number;
  /** Free buffers by capacity. */
  private readonly free = new Map<number, ArrayBuffer[]>();
  private lent = 0;
  private closed = false;

  constructor(opts: BodyPoolOptions = {}) {
    this.minBytes = opts.minBytes ?? 64 * 1024;
    this.maxBytes = opts.maxBytes ?? 1024 * 1024;
    this.maxFreePerClass = opts.maxFreePerClass ?? 8;
    for (const [name, value] of Object.entries({ minBytes: this.minBytes, maxBytes: this.maxBytes })) {
      if (!(Number.isInteger(value) && value > 0 && (value & (value - 1)) === 0)) {
        throw new RangeError(`${name} must be a power of two, got ${value}`);
      }
    }
    if (this.maxBytes < this.minBytes) throw new RangeError('maxBytes must be at least minBytes');
  }

  /** The class capacity for `size` bytes, or undefined when the body is too large to pool. */
  capacityFor(size: number): number | undefined {
    if (size > this.maxBytes) return undefined;
    let capacity = this.minBytes;
    while (capacity < size) capacity *= 2;
    return capacity;
  }

  acquire(size: number): PooledBuffer {
    if (!(Number.isInteger(size) && size >= 0)) throw new RangeError(`a body size must be a whole number of bytes, got ${size}`);
    const capacity = this.capacityFor(size);
    const memory = capacity === undefined ? undefined : (this.free.get(capacity)?.pop() ?? new ArrayBuffer(capacity));
    this.lent++;
    let released = false;
    return {
      buffer: memory === undefined ? Buffer.allocUnsafeSlow(size) : Buffer.from(memory, 0, size),
      release: () => {
        if (released) return;
        released = true;
        this.lent--;
        if (memory === undefined || capacity === undefined || this.closed) return;
        const list = this.free.get(capacity) ?? [];
        if (list.length < this.maxFreePerClass) list.push(memory);
        this.free.set(capacity, list);
      },
    };
  }

  /** Buffers handed out and not yet released, pooled or not: 0 once every owner has given its buffer back. */
  get inUse(): number {
    return this.lent;
  }

  /** Drops the free buffers and keeps none released from now on (the app closing). */
  close(): void {
    this.closed = true;
    this.free.clear();
  }

  /** Bytes held in free buffers. */
  get freeBytes(): number {
    let bytes = 0;
    for (const [capacity, list] of this.free) bytes += capacity * list.length;
    return bytes;
  }
}
