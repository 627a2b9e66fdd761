/**
 * Which Vulkan driver the WebGPU provider (Dawn over Vulkan) runs on: a GPU's, or a software one (Mesa's lavapipe,
 * Google's SwiftShader), which is tens of times slower than onnxruntime's CPU provider and must not go unnoticed.
 *
 * Dawn does not tell onnxruntime-node which adapter it took, so this reads what the Vulkan loader reads: the ICD
 * manifests it would load (VK_DRIVER_FILES / VK_ICD_FILENAMES, else its search folders), the libraries actually
 * mapped into this process once a WebGPU session exists (/proc/self/maps), and whether any GPU device node exists
 * for a hardware driver to open (/dev/dri/renderD*, /dev/nvidia0, /dev/dxg). A hardware ICD without a device node
 * enumerates no adapter; Dawn prefers a GPU adapter to a CPU one, so the driver is a software one exactly when no
 * usable hardware ICD is active and a software one is. Needs no vulkan-tools.
 *
 * The environment read here is the Vulkan loader's, not Ocular's configuration (src/config/config.ts).
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';

export interface VulkanIcd {
  /** The ICD manifest (JSON) that names the driver. */
  manifest: string;
  /** Its `ICD.library_path`. */
  library: string;
  /** lavapipe (llvmpipe) or SwiftShader: a driver that renders on the CPU. */
  software: boolean;
}

export interface VulkanDriverReport {
  /** Every ICD the loader would consider. */
  icds: VulkanIcd[];
  /** Those whose library is mapped into this process (every one, where the maps cannot be read). */
  active: VulkanIcd[];
  /** GPU device nodes present (for the hardware drivers to open). */
  deviceNodes: string[];
  /** True when only a software driver can have given WebGPU its adapter. */
  software: boolean;
}

/** What detection reads; `nodeVulkanProbe` reads the real system, tests pass their own. */
export interface VulkanProbe {
  env: Readonly<Record<string, string | undefined>>;
  /** Entries of a folder, [] when absent. */
  listDir(path: string): string[];
  isDir(path: string): boolean;
  /** A file's text, undefined when unreadable. */
  readText(path: string): string | undefined;
  /** Paths of the shared libraries mapped into this process, undefined when unknown. */
  loadedLibraries(): string[] | undefined;
}

const SOFTWARE_DRIVER = /lvp|llvmpipe|swiftshader/i;
const MAX_MANIFEST_BYTES = 64 * 1024;

export function isSoftwareDriver(library: string): boolean {
  return SOFTWARE_DRIVER.test(basename(library));
}

/** The ICD manifests the Vulkan loader would read, in its order (its documented variables and search folders). */
export function icdManifestPaths(probe: VulkanProbe): string[] {
  const { env } = probe;
  const split = (v: string | undefined): string[] => (v ?? '').split(':').filter((p) => p.length > 0);
  const expand = (p: string): string[] =>
    probe.isDir(p) ? probe.listDir(p).filter((f) => f.endsWith('.json')).sort().map((f) => join(p, f)) : [p];
  const override = split(env['VK_DRIVER_FILES']).length > 0 ? split(env['VK_DRIVER_FILES']) : split(env['VK_ICD_FILENAMES']);
  const added = split(env['VK_ADD_DRIVER_FILES']);
  if (override.length > 0) return [...override, ...added].flatMap(expand);
  const home = env['HOME'];
  const configHome = env['XDG_CONFIG_HOME'] ?? (home !== undefined ? join(home, '.config') : undefined);
  const dataHome = env['XDG_DATA_HOME'] ?? (home !== undefined ? join(home, '.local', 'share') : undefined);
  const configDirs = split(env['XDG_CONFIG_DIRS']).length > 0 ? split(env['XDG_CONFIG_DIRS']) : ['/etc/xdg'];
  const dataDirs = split(env['XDG_DATA_DIRS']).length > 0 ? split(env['XDG_DATA_DIRS']) : ['/usr/local/share', '/usr/share'];
  const roots = [
    ...(configHome !== undefined ? [configHome] : []),
    ...configDirs,
    '/etc',
    ...(dataHome !== undefined ? [dataHome] : []),
    ...dataDirs,
  ];
  const dirs = [...new Set(roots.map((r) => join(r, 'vulkan', 'icd.d')))];
  return [...added.flatMap(expand), ...dirs.flatMap((d) => probe.listDir(d).filter((f) => f.endsWith('.json')).sort().map((f) => join(d, f)))];
}

/** One manifest's driver library, or undefined when the file is unreadable or not an ICD manifest. */
export function parseIcdManifest(text: string): string | undefined {
  if (text.length > MAX_MANIFEST_BYTES) return undefined;
  try {
    const json: unknown = JSON.parse(text);
    const icd = typeof json === 'object' && json !== null ? (json as { ICD?: unknown }).ICD : undefined;
    const library = typeof icd === 'object' && icd !== null ? (icd as { library_path?: unknown }).library_path : undefined;
    return typeof library === 'string' && library.length > 0 ? library : undefined;
  } catch {
    return undefined;
  }
}

export function detectVulkanDriver(probe: VulkanProbe = nodeVulkanProbe()): VulkanDriverReport {
  const icds: VulkanIcd[] = [];
  for (const manifest of icdManifestPaths(probe)) {
    const text = probe.readText(manifest);
    const library = text !== undefined ? parseIcdManifest(text) : undefined;
    if (library !== undefined) icds.push({ manifest, library, software: isSoftwareDriver(library) });
  }
  const loaded = probe.loadedLibraries();
  const loadedNames = loaded?.filter((p) => basename(p).startsWith('libvulkan.so')).length ? new Set(loaded.map((p) => basename(p))) : undefined;
  const active = loadedNames === undefined ? icds : icds.filter((icd) => loadedNames.has(basename(icd.library)));
  const deviceNodes = [
    ...probe.listDir('/dev/dri').filter((f) => f.startsWith('renderD')).map((f) => `/dev/dri/${f}`),
    ...probe.listDir('/dev').filter((f) => /^nvidia\d+$/.test(f) || f === 'dxg').map((f) => `/dev/${f}`),
  ];
  const hardware = active.some((icd) => !icd.software) && deviceNodes.length > 0;
  return { icds, active, deviceNodes, software: !hardware && active.some((icd) => icd.software) };
}

/** The probe of this process and machine. */
export function nodeVulkanProbe(env: Readonly<Record<string, string | undefined>> = process.env): VulkanProbe {
  return {
    env,
    listDir(path) {
      try {
        return readdirSync(path);
      } catch {
        return [];
      }
    },
    isDir(path) {
      try {
        return statSync(path).isDirectory();
      } catch {
        return false;
      }
    },
    readText(path) {
      try {
        return readFileSync(path, 'utf8');
      } catch {
        return undefined;
      }
    },
    loadedLibraries() {
      let maps: string;
      try {
        maps = readFileSync('/proc/self/maps', 'utf8');
      } catch {
        return undefined;
      }
      const paths = new Set<string>();
      for (const line of maps.split('\n')) {
        const at = line.indexOf('/');
        if (at >= 0 && line.includes('.so')) paths.add(line.slice(at).trim());
      }
      return [...paths];
    },
  };
}
