import type { SessionPoolOptions } from '../../src/core/runner/options.js';

/**
 * A session pool's options for a test: one worker on the CPU provider, one intra-op and one inter-op thread, no
 * fallback, the rest from `rest` (a normalisation for images, warm-up dims, the arena, ...).
 */
export function cpuPoolOptions(modelName: string, modelPath: string, rest: Partial<SessionPoolOptions> = {}): SessionPoolOptions {
  return {
    modelName,
    modelPath,
    providers: ['cpu'],
    fallbackToCpu: false,
    gpuDeviceId: 0,
    instances: 1,
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    ...rest,
  };
}
