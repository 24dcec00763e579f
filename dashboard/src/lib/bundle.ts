// Just enough of the bundle format (docs/bundle-format.md) to read the plaintext header of a sealed
// bundle: which keys it needs. The payload stays encrypted; only the agent opens it.

export interface BundleHeader {
  bundle_id: string;
  signing_key_id: string;
  recipient_key_id: string;
  created_at: string;
  [key: string]: unknown;
}

export function bundleHeader(bytes: Uint8Array): BundleHeader {
  const magic = String.fromCharCode(...bytes.subarray(0, 4));
  // v2 adds the project to the header; both keep magic, version and the header's length in front.
  if (magic !== "FLXR" || (bytes[4] !== 1 && bytes[4] !== 2)) throw new Error("not a FluxRun v1 or v2 bundle");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const length = view.getUint32(5);
  if (9 + length > bytes.length) throw new Error("truncated bundle header");
  return JSON.parse(new TextDecoder().decode(bytes.subarray(9, 9 + length)));
}

export function bundleBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}
