import t from 'tap';
import {
  detectVulkanDriver,
  icdManifestPaths,
  isSoftwareDriver,
  parseIcdManifest,
  type VulkanProbe,
} from '../../../src/core/runner/vulkan-driver.js';

/** A machine described by its files: folder -> entries, file -> text, plus the libraries mapped in. */
function fakeProbe(opts: {
  env?: Record<string, string>;
  files?: Record<string, string>;
  dirs?: Record<string, string[]>;
  loaded?: string[] | undefined;
}): VulkanProbe {
  const files = opts.files ?? {};
  const dirs = opts.dirs ?? {};
  return {
    env: opts.env ?? {},
    listDir: (p) => dirs[p] ?? [],
    isDir: (p) => p in dirs,
    readText: (p) => files[p],
    loadedLibraries: () => opts.loaded,
  };
}

const icd = (library: string): string => JSON.stringify({ file_format_version: '1.0.0', ICD: { library_path: library, api_version: '1.4.305' } });
const MESA = {
  '/usr/share/vulkan/icd.d/lvp_icd.json': icd('libvulkan_lvp.so'),
  '/usr/share/vulkan/icd.d/radeon_icd.json': icd('libvulkan_radeon.so'),
  '/usr/share/vulkan/icd.d/intel_icd.json': icd('libvulkan_intel.so'),
};
const MESA_DIRS = { '/usr/share/vulkan/icd.d': ['lvp_icd.json', 'radeon_icd.json', 'intel_icd.json', 'README'] };
const LOADED = ['/usr/lib/x86_64-linux-gnu/libvulkan.so.1.3.239', '/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so', '/usr/lib/x86_64-linux-gnu/libvulkan_radeon.so', '/usr/lib/x86_64-linux-gnu/libvulkan_intel.so'];

t.test('lavapipe, llvmpipe and SwiftShader are software drivers; GPU vendors are not', async (t) => {
  t.ok(isSoftwareDriver('libvulkan_lvp.so'));
  t.ok(isSoftwareDriver('/opt/swiftshader/libvk_swiftshader.so'));
  t.notOk(isSoftwareDriver('libvulkan_radeon.so'));
  t.notOk(isSoftwareDriver('libGLX_nvidia.so.0'));
});

t.test('an ICD manifest gives its library; anything else gives nothing', async (t) => {
  t.equal(parseIcdManifest(icd('libvulkan_lvp.so')), 'libvulkan_lvp.so');
  t.equal(parseIcdManifest('{"ICD": {}}'), undefined);
  t.equal(parseIcdManifest('not json'), undefined);
  t.equal(parseIcdManifest(`{"ICD":{"library_path":"${'x'.repeat(70_000)}"}}`), undefined, 'an oversized file is not read');
});

t.test("the loader's search folders are used unless VK_DRIVER_FILES or VK_ICD_FILENAMES names the manifests", async (t) => {
  t.same(icdManifestPaths(fakeProbe({ dirs: MESA_DIRS })), [
    '/usr/share/vulkan/icd.d/intel_icd.json',
    '/usr/share/vulkan/icd.d/lvp_icd.json',
    '/usr/share/vulkan/icd.d/radeon_icd.json',
  ]);
  t.same(icdManifestPaths(fakeProbe({ env: { VK_ICD_FILENAMES: '/a.json:/b.json' }, dirs: MESA_DIRS })), ['/a.json', '/b.json']);
  t.same(
    icdManifestPaths(fakeProbe({ env: { VK_DRIVER_FILES: '/d', VK_ICD_FILENAMES: '/ignored.json' }, dirs: { '/d': ['x.json'] } })),
    ['/d/x.json'],
    'VK_DRIVER_FILES wins, and a folder in it is read',
  );
});

t.test('Mesa with no GPU device node: the adapter can only be lavapipe', async (t) => {
  const report = detectVulkanDriver(fakeProbe({ files: MESA, dirs: MESA_DIRS, loaded: LOADED }));
  t.equal(report.icds.length, 3);
  t.equal(report.software, true);
  t.same(report.deviceNodes, []);
});

t.test('Mesa with a render node: a GPU driver is there, no warning', async (t) => {
  const dirs = { ...MESA_DIRS, '/dev/dri': ['card0', 'renderD128'] };
  const report = detectVulkanDriver(fakeProbe({ files: MESA, dirs, loaded: LOADED }));
  t.equal(report.software, false);
  t.same(report.deviceNodes, ['/dev/dri/renderD128']);
});

t.test('VK_ICD_FILENAMES naming lavapipe alone is software even beside a GPU', async (t) => {
  const dirs = { ...MESA_DIRS, '/dev/dri': ['renderD128'] };
  const report = detectVulkanDriver(
    fakeProbe({ env: { VK_ICD_FILENAMES: '/usr/share/vulkan/icd.d/lvp_icd.json' }, files: MESA, dirs, loaded: LOADED.slice(0, 2) }),
  );
  t.same(report.active.map((i) => i.library), ['libvulkan_lvp.so']);
  t.equal(report.software, true);
});

t.test('only the drivers mapped into the process count, where the maps show the loader', async (t) => {
  const dirs = { ...MESA_DIRS, '/dev/dri': ['renderD128'] };
  const report = detectVulkanDriver(fakeProbe({ files: MESA, dirs, loaded: LOADED.slice(0, 2) }));
  t.same(report.active.map((i) => i.library), ['libvulkan_lvp.so'], 'radeon and intel failed to load');
  t.equal(report.software, true);
  const unknown = detectVulkanDriver(fakeProbe({ files: MESA, dirs, loaded: undefined }));
  t.equal(unknown.active.length, 3, 'without the maps every ICD counts');
  t.equal(unknown.software, false);
});

t.test('the NVIDIA driver with its device node is hardware', async (t) => {
  const files = { '/etc/vulkan/icd.d/nvidia_icd.json': icd('libGLX_nvidia.so.0') };
  const dirs = { '/etc/vulkan/icd.d': ['nvidia_icd.json'], '/dev': ['nvidia0', 'nvidiactl'] };
  const report = detectVulkanDriver(fakeProbe({ files, dirs, loaded: ['/usr/lib/libvulkan.so.1', '/usr/lib/libGLX_nvidia.so.0'] }));
  t.equal(report.software, false);
  t.same(report.deviceNodes, ['/dev/nvidia0']);
});
