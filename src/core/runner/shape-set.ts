/**
 * The distinct input shapes one session has run. A shape is the whole dims tuple of every input, batch included,
 * under the input's name: `x:4x3x480x640`; a model of several inputs has one key for the tuple of all of them.
 *
 * Why it is counted: onnxruntime's CUDA provider re-plans its cuDNN convolutions whenever the input dims change
 * (docs/PERFORMANCE.md, "GPU"), and a WebGPU session compiles and caches pipelines per shape, so a session that
 * sees few shapes is one that stays warm. Stage.shapeBound says how many a stage's policy allows.
 *
 * The profiled run that counts nodes at creation (profiling.ts) is not recorded: it runs once, before warm-up, and
 * warm-up then runs the shape the stage serves. Owned by the worker thread that owns the session.
 */
export class ShapeSet {
  private readonly keys = new Set<string>();

  /** Records the shape of one run's feeds; returns the number of distinct shapes so far. */
  record(feeds: Readonly<Record<string, { readonly dims: readonly number[] }>>): number {
    const key = Object.keys(feeds)
      .sort()
      .map((name) => `${name}:${(feeds[name]?.dims ?? []).join('x')}`)
      .join('|');
    this.keys.add(key);
    return this.keys.size;
  }

  get size(): number {
    return this.keys.size;
  }
}
