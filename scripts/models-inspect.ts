/**
 * `npm run models:inspect -- model.onnx [--manifest] [--preset NAME] [--name NAME] [--source PATH_OR_URL]`
 *
 * Prints what an ONNX file holds (inputs and outputs with shapes and types, opsets, producer, metadata properties)
 * and what Ocular recognises in it (task, detection head, how sure: src/core/model-recognise.ts), then what a
 * manifest entry can take from the model and what the user must fill. `--manifest` prints a draft manifest entry
 * as JSON on stdout instead (the notes and the fields left to fill go to stderr), each value it could not infer
 * marked "FILL: ..." so that the entry fails the manifest's check until it is filled; `--preset` fills the
 * preprocessing of a model family (imagenet, yolo, yolox, paddleocr, tf).
 *
 * Exit status: 0 printed; 1 the file cannot be read or is no ONNX model; 2 bad arguments.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { describeRecognition, recogniseModel, type Recognition } from '../src/core/model-recognise.js';
import { summarizeOnnx, type OnnxSummary } from '../src/core/onnx-summary.js';
import type { TensorMeta } from '../src/core/types.js';
import { draftManifestEntry, isPresetName, likelyPreset, PRESETS, type Draft, type PresetName } from './lib/manifest-draft.js';

export interface Inspection {
  path: string;
  bytes: number;
  sha256: string;
  summary: OnnxSummary;
  recognition: Recognition;
}

export async function inspectModel(path: string): Promise<Inspection> {
  const bytes = await readFile(path);
  const summary = summarizeOnnx(bytes);
  const recognition = recogniseModel({
    inputs: summary.inputs,
    outputs: summary.outputs,
    metadata: summary.metadata,
    ops: summary.ops,
    producerName: summary.producerName,
  });
  return { path, bytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex'), summary, recognition };
}

const dimsOf = (t: TensorMeta): string => `[${t.shape.map((d, i) => (d >= 0 ? String(d) : t.symbolicShape[i] || '?')).join(', ')}]`;
const clip = (s: string, n: number): string => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

/** The human report. */
export function formatInspection(i: Inspection, draft: Draft): string {
  const { summary: s, recognition: r } = i;
  const lines: string[] = [];
  const opsets = Object.entries(s.opsets).map(([d, v]) => `${d === '' ? 'ai.onnx' : d} ${v}`);
  lines.push(`model      ${i.path} (${i.bytes.toLocaleString('en-US')} bytes)`);
  lines.push(`sha256     ${i.sha256}`);
  lines.push(`producer   ${[s.producerName, s.producerVersion].filter((x) => x !== '').join(' ') || '(none)'}, IR ${s.irVersion ?? '?'}, opsets ${opsets.join(', ') || '(none)'}`);
  const meta = Object.entries(s.metadata);
  lines.push(`metadata   ${meta.length === 0 ? '(none)' : ''}`.trimEnd());
  for (const [k, v] of meta) lines.push(`  ${k}: ${clip(v.replace(/\s+/g, ' '), 100)}`);
  const width = Math.max(8, ...[...s.inputs, ...s.outputs].map((t) => t.name.length));
  lines.push('inputs');
  for (const t of s.inputs) lines.push(`  ${t.name.padEnd(width)}  ${t.type.padEnd(8)}  ${dimsOf(t)}`);
  lines.push('outputs');
  for (const t of s.outputs) lines.push(`  ${t.name.padEnd(width)}  ${t.type.padEnd(8)}  ${dimsOf(t)}`);
  lines.push(`recognised ${describeRecognition(r)}`);
  for (const reason of r.reasons) lines.push(`  - ${reason}`);
  if (r.input !== undefined) {
    const inp = r.input;
    const size = inp.width !== undefined && inp.height !== undefined ? `${inp.width}x${inp.height} (from the ${inp.sizeFrom})` : 'size dynamic';
    const batch = inp.batch === 'none' ? 'no batch dimension' : inp.batch === 'dynamic' ? 'batch dynamic' : `batch fixed at ${inp.batch}`;
    lines.push(`image input "${inp.name}": ${inp.type}, ${inp.layout}${inp.layoutKnown ? '' : ' (assumed)'}, ${batch}, ${size}`);
  }
  if (r.otherInputs.length > 0) lines.push(`other inputs: ${r.otherInputs.join(', ')}`);
  lines.push(`manifest   task ${String(draft.entry['task'])}; run with --manifest for the entry${draft.toFill.length > 0 ? ', then fill:' : ''}`);
  for (const f of draft.toFill) lines.push(`  - ${f}`);
  for (const n of draft.notes) lines.push(`  note: ${n}`);
  if (draft.toFill.some((f) => /channelOrder|mean|std|scale|resize/.test(f))) {
    const likely = likelyPreset(r);
    lines.push(`presets    (--preset NAME fills channel order, scale, mean, std and resize${likely !== undefined ? `; this model's family usually takes ${likely}: check its documentation` : ''})`);
    for (const [name, p] of Object.entries(PRESETS)) lines.push(`  ${name.padEnd(10)} ${p.description}`);
  }
  return `${lines.join('\n')}\n`;
}

const USAGE = 'usage: npm run models:inspect -- model.onnx [--manifest] [--preset imagenet|yolo|yolox|paddleocr|tf] [--name NAME] [--source PATH_OR_URL]';

export async function main(argv: string[], out: (s: string) => void, err: (s: string) => void): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        manifest: { type: 'boolean', default: false },
        preset: { type: 'string' },
        name: { type: 'string' },
        source: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (e) {
    err(`${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    out(`${USAGE}\n`);
    return 0;
  }
  if (positionals.length !== 1) {
    err(`give one model file\n${USAGE}\n`);
    return 2;
  }
  let preset: PresetName | undefined;
  if (values.preset !== undefined) {
    if (!isPresetName(values.preset)) {
      err(`unknown preset "${values.preset}": one of ${Object.keys(PRESETS).join(', ')}\n`);
      return 2;
    }
    preset = values.preset;
  }
  const path = positionals[0] as string;
  let inspection: Inspection;
  try {
    inspection = await inspectModel(path);
  } catch (e) {
    err(`${path}: ${(e as Error).message}\n`);
    return 1;
  }
  const draft = draftManifestEntry(inspection.summary, inspection.recognition, {
    source: values.source ?? resolve(path),
    sha256: inspection.sha256,
    ...(values.name !== undefined && { name: values.name }),
    ...(preset !== undefined && { preset }),
  });
  if (values.manifest) {
    out(`${JSON.stringify(draft.entry, null, 2)}\n`);
    err(`recognised ${describeRecognition(inspection.recognition)}\n`);
    for (const f of draft.toFill) err(`fill: ${f}\n`);
    const likely = likelyPreset(inspection.recognition);
    if (draft.toFill.length > 0 && likely !== undefined && preset === undefined) err(`preset: this model's family usually takes --preset ${likely} (${PRESETS[likely].description})\n`);
    for (const n of draft.notes) err(`note: ${n}\n`);
  } else {
    out(formatInspection(inspection, draft));
  }
  return 0;
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(
    process.argv.slice(2),
    (s) => process.stdout.write(s),
    (s) => process.stderr.write(s),
  );
}
