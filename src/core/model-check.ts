import type { InputSpec } from '../config/input-spec.js';
import type { TensorMeta } from './types.js';
import { IMAGE_INPUT_TYPES, isImageInputType } from './runner/image-feed.js';

/**
 * Checks a manifest's view of a model against the session's own metadata, so that a wrong size, layout, name or
 * class count fails startup naming the model and the field, rather than the first request.
 */

export class ModelCheckError extends Error {
  constructor(model: string, field: string, detail: string) {
    super(`model "${model}": ${field}: ${detail}`);
    this.name = 'ModelCheckError';
  }
}

/** Dynamic spatial size: the tensor's H and W follow each image (and the manifest's are only nominal). */
export function isDynamicSize(spec: InputSpec): boolean {
  return spec.resize.mode === 'limit-round32';
}

/** Finds the image input and checks it; returns its name. */
export function checkImageInput(
  model: string,
  field: string,
  spec: InputSpec,
  inputs: readonly TensorMeta[],
  opts: { dynamicWidth?: boolean } = {},
): TensorMeta {
  let input: TensorMeta | undefined;
  if (spec.name !== undefined) {
    input = inputs.find((i) => i.name === spec.name);
    if (input === undefined) {
      throw new ModelCheckError(
        model,
        `${field}.name`,
        `the model has no input "${spec.name}" (inputs: ${inputs.map((i) => i.name).join(', ')})`,
      );
    }
  } else {
    if (inputs.length !== 1) {
      throw new ModelCheckError(
        model,
        `${field}.name`,
        `the model has ${inputs.length} inputs (${inputs.map((i) => i.name).join(', ')}); name the image input`,
      );
    }
    input = inputs[0] as TensorMeta;
  }
  if (!isImageInputType(input.type)) {
    throw new ModelCheckError(
      model,
      `${field}.dtype`,
      `the model's input "${input.name}" is ${input.type}; an image input may be ${IMAGE_INPUT_TYPES.join(', ')}`,
    );
  }
  if (spec.dtype !== undefined && spec.dtype !== input.type) {
    throw new ModelCheckError(model, `${field}.dtype`, `the manifest says ${spec.dtype}, the model's input "${input.name}" is ${input.type}`);
  }
  // A model without a batch dimension is reported with one of 1 (runner/image-feed.ts): rank 4 here either way.
  if (input.shape.length !== 4) {
    throw new ModelCheckError(
      model,
      `${field}.layout`,
      `the model's input "${input.name}" has rank ${input.shape.length} ([${input.shape.join(',')}]), an image input has rank 4 (or 3 without a batch dimension)`,
    );
  }
  const [n, a, b, c] = input.shape as [number, number, number, number];
  const [ch, h, w] = spec.layout === 'NCHW' ? [a, b, c] : [c, a, b];
  if (ch !== -1 && ch !== 3) {
    throw new ModelCheckError(
      model,
      `${field}.layout`,
      `${spec.layout} puts channels where the model's input "${input.name}" [${input.shape.join(',')}] has ${ch}; expected 3`,
    );
  }
  if (n !== -1 && n !== 1) {
    throw new ModelCheckError(model, `${field}.batching`, `the model's batch dimension is fixed at ${n}; only 1 or dynamic is supported`);
  }
  const dynamic = isDynamicSize(spec);
  if (h !== -1 && (dynamic || h !== spec.height)) {
    throw new ModelCheckError(
      model,
      `${field}.height`,
      dynamic
        ? `resize mode ${spec.resize.mode} needs a dynamic height, the model's input "${input.name}" fixes it at ${h}`
        : `the manifest says ${spec.height}, the model's input "${input.name}" has height ${h}`,
    );
  }
  if (w !== -1 && (dynamic || opts.dynamicWidth === true || w !== spec.width)) {
    throw new ModelCheckError(
      model,
      `${field}.width`,
      dynamic || opts.dynamicWidth === true
        ? `this model needs a dynamic width, the model's input "${input.name}" fixes it at ${w}`
        : `the manifest says ${spec.width}, the model's input "${input.name}" has width ${w}`,
    );
  }
  return input;
}

/** Finds an output by name (or the only one). */
export function checkOutput(model: string, field: string, outputs: readonly TensorMeta[], name: string | undefined): TensorMeta {
  if (name !== undefined) {
    const out = outputs.find((o) => o.name === name);
    if (out === undefined) {
      throw new ModelCheckError(model, field, `the model has no output "${name}" (outputs: ${outputs.map((o) => o.name).join(', ')})`);
    }
    return out;
  }
  if (outputs.length !== 1) {
    throw new ModelCheckError(
      model,
      field,
      `the model has ${outputs.length} outputs (${outputs.map((o) => o.name).join(', ')}); name the one to read`,
    );
  }
  return outputs[0] as TensorMeta;
}

/** Checks that the last dimension of an output (when fixed) equals what the manifest implies. */
export function checkLastDim(model: string, field: string, out: TensorMeta, expected: number, what: string): void {
  const last = out.shape[out.shape.length - 1];
  if (last !== undefined && last !== -1 && last !== expected) {
    throw new ModelCheckError(model, field, `${what}: the manifest implies ${expected}, the model's output "${out.name}" has ${last}`);
  }
}
