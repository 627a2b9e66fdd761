/** The image formats the server can decode; which of them it accepts is configuration (OCULAR_IMAGE_FORMATS). */
export const IMAGE_FORMATS = ['jpeg', 'png', 'webp', 'gif', 'tiff', 'avif'] as const;

export type ImageFormat = (typeof IMAGE_FORMATS)[number];

/** Formats accepted when the configuration names none. GIF, TIFF and AVIF are opt-in; SVG is never accepted. */
export const DEFAULT_IMAGE_FORMATS: readonly ImageFormat[] = ['jpeg', 'png', 'webp'];
