/**
 * Property-based fuzzing (issue #5, part 2) with fast-check, fixed seed, short runs (the long run is
 * scripts/hardening/fuzz.ts): the predict route on mutated real photos (truncation, byte, header-dimension and
 * chunk-length edits) and on generated valid images, and the manifest parser on mutated manifests. Every status is
 * one the API documents, every body matches its schema, valid images answer 200, and the server stays ready.
 */
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import sharp from 'sharp';
import t from 'tap';
import type { FastifyInstance } from 'fastify';
import { buildTestApp, sharedManifestPath } from '../helpers/app.js';
import { imagePath, sharedTestOptions } from '../helpers/shared.js';
import { leaks, writeManifest } from '../helpers/hostile.js';
import { imageMutation, validImage, mutate } from '../helpers/fuzz.js';
import { ErrorBodySchema } from '../../src/errors.js';
import { PredictResultSchema } from '../../src/routes/schemas.js';
import { ManifestError, parseManifest } from '../../src/config/manifest.js';

const SEED = Number(process.env['OCULAR_FUZZ_SEED'] ?? 20260505);
const RUNS = Number(process.env['OCULAR_FUZZ_RUNS'] ?? 150);
const PHOTOS = ['cat_chelsea.png', 'robin.jpg', 'fruits.jpg'];
/** What the predict route documents for a raw image body. */
const DOCUMENTED = new Set([200, 400, 404, 413, 415, 422, 500, 503]);
/** What a mutated or generated image may get: an answer, or a refusal of the bytes. Never a 5xx. */
const FOR_IMAGES = new Set([200, 415, 422]);

async function predict(app: FastifyInstance, body: Buffer) {
  const res = await app.inject({ method: 'POST', url: '/v1/models/mobilenetv2/predict', payload: body, headers: { 'content-type': 'image/jpeg' } });
  return { status: res.statusCode, body: res.body };
}

function contractHolds(status: number, text: string): string | undefined {
  if (!DOCUMENTED.has(status)) return `undocumented status ${status}`;
  const json = JSON.parse(text) as unknown;
  const ok = status === 200 ? PredictResultSchema.safeParse(json).success : ErrorBodySchema.safeParse(json).success;
  if (!ok) return `body does not match the ${status} schema: ${text.slice(0, 200)}`;
  const leaked = leaks(text);
  if (leaked.length > 0) return `leaks ${leaked.join(', ')}`;
  return undefined;
}

t.test('the predict route under fuzzing', sharedTestOptions('models/mobilenetv2-12-int8/model.onnx', ...PHOTOS.map((p) => `images/${p}`)), async (t) => {
  const { app } = await buildTestApp(t, { manifestPath: writeManifest(t.testdir(), ['mobilenetv2']), config: { logLevel: 'silent' } });
  const seeds = await Promise.all(
    PHOTOS.flatMap((p) => {
      const base = sharp(readFileSync(imagePath(p))).resize({ width: 200 });
      return [base.clone().jpeg().toBuffer(), base.clone().png().toBuffer(), base.clone().webp().toBuffer()];
    }),
  );
  const statuses = new Map<number, number>();

  t.test('mutated photos: documented statuses and bodies, never a 5xx', async (t) => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: seeds.length - 1 }), imageMutation(), async (i, m) => {
        const body = mutate(seeds[i] as Buffer, m);
        const res = await predict(app, body);
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        const broken = contractHolds(res.status, res.body);
        if (broken !== undefined) throw new Error(broken);
        if (!FOR_IMAGES.has(res.status) && !(res.status === 400 && body.length === 0)) throw new Error(`status ${res.status}: ${res.body}`);
      }),
      { seed: SEED, numRuns: RUNS },
    );
    t.pass(`${RUNS} mutations, statuses ${JSON.stringify(Object.fromEntries(statuses))}`);
  });

  t.test('generated valid images all answer 200', async (t) => {
    await fc.assert(
      fc.asyncProperty(validImage(), async (spec) => {
        const body = await spec.encode();
        const res = await predict(app, body);
        const broken = contractHolds(res.status, res.body);
        if (broken !== undefined) throw new Error(broken);
        if (res.status !== 200) throw new Error(`a valid ${spec.describe} answered ${res.status}: ${res.body}`);
      }),
      { seed: SEED, numRuns: Math.max(10, Math.round(RUNS / 3)) },
    );
    t.pass('every generated image answered 200');
  });

  t.test('the server is ready afterwards, its queue empty', async (t) => {
    t.equal((await app.inject({ method: 'GET', url: '/readyz' })).statusCode, 200);
    for (const m of app.ocular.models.list()) t.equal(m.depth, 0, `${m.name}: queue empty`);
  });
});

t.test('the manifest parser under fuzzing: a ManifestError or a manifest, never anything else', async (t) => {
  const base = JSON.parse(readFileSync(sharedManifestPath, 'utf8')) as unknown;
  const json = fc.jsonValue({ maxDepth: 3 });
  /** Replaces the value at a random path of `value` with `replacement`. */
  const edit = (value: unknown, path: number[], replacement: unknown): unknown => {
    if (path.length === 0 || typeof value !== 'object' || value === null) return replacement;
    const keys = Object.keys(value);
    if (keys.length === 0) return replacement;
    const key = keys[(path[0] as number) % keys.length] as string;
    const copy: Record<string, unknown> = Array.isArray(value) ? ([...value] as unknown as Record<string, unknown>) : { ...(value as Record<string, unknown>) };
    copy[key] = edit((value as Record<string, unknown>)[key], path.slice(1), replacement);
    return copy;
  };
  let accepted = 0;
  fc.assert(
    fc.property(fc.oneof(json, fc.tuple(fc.array(fc.nat(), { maxLength: 6 }), json).map(([p, r]) => edit(base, p, r))), (candidate) => {
      try {
        parseManifest(candidate, 'fuzz');
        accepted++;
      } catch (err) {
        if (!(err instanceof ManifestError)) throw new Error(`threw ${(err as Error).name}: ${(err as Error).message}`, { cause: err });
        if ((err as Error).message.length > 20_000) throw new Error('an unbounded error message', { cause: err });
      }
    }),
    { seed: SEED, numRuns: RUNS * 10 },
  );
  t.pass(`${RUNS * 10} manifests: ManifestError or accepted (${accepted} accepted)`);
});
