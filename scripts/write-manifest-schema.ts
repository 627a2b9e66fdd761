/** Writes docs/manifest.schema.json, the JSON Schema of models.manifest.json generated from its zod schema. */
import { writeFileSync } from 'node:fs';
import { manifestJsonSchema } from '../src/config/manifest.js';

const out = process.argv[2] ?? 'docs/manifest.schema.json';
writeFileSync(out, `${JSON.stringify(manifestJsonSchema(), null, 2)}\n`);
process.stdout.write(`wrote ${out}\n`);
