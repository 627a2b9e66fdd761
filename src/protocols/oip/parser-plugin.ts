import fp from 'fastify-plugin';
import { InferParser, type InferParserOptions } from './parser.js';

/**
 * Owns the v2 request parser (`app.inferParser`) and ends its worker on close. It lives beside parser.ts, in
 * protocols/, since plugins/ may not import a protocol. Registered before the registry plugin, so that the
 * registry drains before the parser closes.
 */

declare module 'fastify' {
  interface FastifyInstance {
    inferParser: InferParser;
  }
}

export const inferParserPlugin = fp<InferParserOptions>(
  async (app, opts) => {
    const parser = new InferParser(opts);
    app.decorate('inferParser', parser);
    app.addHook('onClose', async () => {
      await parser.close();
    });
  },
  { name: 'ocular-infer-parser', fastify: '5.x' },
);
