import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { extname, join } from 'node:path';

/** The real photos a load is made of, sent round-robin. */
export interface Photo {
  name: string;
  bytes: Buffer;
  contentType: string;
}

const TYPES: Record<string, string> = {
  '.jpg': 'image/jpeg',
  '.jpeg': 'image/jpeg',
  '.png': 'image/png',
  '.webp': 'image/webp',
};

/** Every JPEG, PNG and WebP file in `dir`, in name order. Throws when there is none. */
export function loadPhotos(dir: string): Photo[] {
  const photos = readdirSync(dir)
    .filter((f) => TYPES[extname(f).toLowerCase()] !== undefined)
    .sort()
    .map((name) => ({ name, bytes: readFileSync(join(dir, name)), contentType: TYPES[extname(name).toLowerCase()] as string }));
  if (photos.length === 0) throw new Error(`no .jpg, .png or .webp photos in ${dir}`);
  return photos;
}

export type BodyKind = 'raw' | 'multipart';

/** A request body ready to send: built once per photo, so the client does no work per request. */
export interface PreparedBody {
  body: Buffer;
  contentType: string;
}

/** One photo as a raw body, or as a one-file multipart/form-data body. */
export function prepareBody(photo: Photo, kind: BodyKind): PreparedBody {
  if (kind === 'raw') return { body: photo.bytes, contentType: photo.contentType };
  const boundary = `ocular-${randomBytes(8).toString('hex')}`;
  const head = Buffer.from(
    `--${boundary}\r\ncontent-disposition: form-data; name="image"; filename="${photo.name}"\r\n` +
      `content-type: ${photo.contentType}\r\n\r\n`,
  );
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`);
  return { body: Buffer.concat([head, photo.bytes, tail]), contentType: `multipart/form-data; boundary=${boundary}` };
}
