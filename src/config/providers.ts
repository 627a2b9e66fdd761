/** The onnxruntime execution providers Ocular can ask for, by the names the configuration and the manifest use. */
export const PROVIDER_NAMES = ['tensorrt', 'cuda', 'webgpu', 'cpu'] as const;

export type ProviderName = (typeof PROVIDER_NAMES)[number];

/**
 * What the operator asks for (OCULAR_DEVICE): `auto` prefers CUDA and falls back to CPU; `cuda` makes a CUDA failure
 * fatal; `webgpu` runs every stage on the WebGPU provider (Dawn over Vulkan: AMD, Intel or NVIDIA GPUs), failing
 * when no adapter is found, with the nodes it cannot take on the CPU.
 */
export const DEVICE_MODES = ['auto', 'cuda', 'webgpu', 'cpu'] as const;

export type DeviceMode = (typeof DEVICE_MODES)[number];
