import type { PreparedPixels } from '../types.js';
import type { SlotItem } from './worker-protocol.js';

const MIN_SLOT_BYTES = 64 * 1024;

/**
 * Free list of shared pixel slots. Sizes are rounded up to a power of two so batches of similar size reuse each
 * other's slots; at most `maxFree` are kept.
 */
export class SlotPool {
  private readonly free: SharedArrayBuffer[] = [];

  constructor(private readonly maxFree: number) {}

  acquire(bytes: number): SharedArrayBuffer {
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const size = (this.free[i] as SharedArrayBuffer).byteLength;
      if (size >= bytes && (best < 0 || size < (this.free[best] as SharedArrayBuffer).byteLength)) best = i;
    }
    if (best >= 0) return this.free.splice(best, 1)[0] as SharedArrayBuffer;
    let size = MIN_SLOT_BYTES;
    while (size < bytes) size *= 2;
    return new SharedArrayBuffer(size);
  }

  release(slot: SharedArrayBuffer): void {
    this.free.push(slot);
    if (this.free.length > this.maxFree) {
      // Drop the smallest: the larger ones serve every batch the smaller would.
      let smallest = 0;
      for (let i = 1; i < this.free.length; i++) {
        if ((this.free[i] as SharedArrayBuffer).byteLength < (this.free[smallest] as SharedArrayBuffer).byteLength) {
          smallest = i;
        }
      }
      this.free.splice(smallest, 1);
    }
  }
}

/**
 * Copies a batch's pixels into one slot taken from `slots`, so the caller may reuse its buffers at once; the slot is
 * the caller's to release. Throws RangeError for an empty batch or an item whose buffer is short.
 */
export function packBatch(slots: SlotPool, batch: readonly PreparedPixels[]): { slot: SharedArrayBuffer; items: SlotItem[] } {
  if (batch.length === 0) throw new RangeError('a batch needs at least one image');
  let total = 0;
  for (const item of batch) {
    const bytes = item.width * item.height * 3;
    if (item.pixels.length < bytes) {
      throw new RangeError(`pixel buffer holds ${item.pixels.length} bytes, ${item.width}x${item.height}x3 needs ${bytes}`);
    }
    total += bytes;
  }
  const slot = slots.acquire(total);
  const view = new Uint8Array(slot);
  const items: SlotItem[] = [];
  let offset = 0;
  for (const item of batch) {
    const bytes = item.width * item.height * 3;
    view.set(item.pixels.subarray(0, bytes), offset);
    items.push({ byteOffset: offset, width: item.width, height: item.height });
    offset += bytes;
  }
  return { slot, items };
}
