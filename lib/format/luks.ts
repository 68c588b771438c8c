/**
 * The LUKS1 header (of an encrypted qcow2 image, or a LUKS volume),
 * decoded into what `qemu-img info` reports about it (no key needed: only
 * public fields).
 *
 * ```text
 * Layout (big endian), 592 bytes:
 *   0 magic "LUKS\xba\xbe"  6 version u16  8 cipher_name[32]
 *  40 cipher_mode[32]  72 hash_spec[32]  104 payload_offset (sectors)
 * 108 key_bytes  112 mk_digest[20]  132 mk_digest_salt[32]
 * 164 mk_digest_iterations  168 uuid[40]
 * 208 eight key slots of 48 bytes: active, iterations, salt[32],
 *     key_material_offset (sectors), stripes
 * ```
 *
 * @module
 */

import { Qcow2Error } from "./errors.ts";

/** Length of a LUKS1 header. */
export const LUKS_HEADER_LENGTH = 592;

const MAGIC = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe];
const SLOT_ACTIVE = 0x00ac71f3;
const SECTOR = 512;

/**
 * One LUKS key slot as `qemu-img info` lists it.
 */
export interface LuksSlotInfo {
  /** Whether the slot holds a key. */
  active: boolean;
  /** PBKDF2 iterations (active slots). */
  iters?: number;
  /** Anti-forensic stripes (active slots). */
  stripes?: number;
  /** Byte offset of the key material. */
  keyOffset: number;
}

/**
 * The LUKS header fields `qemu-img info` shows for an encrypted image.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import type { LuksInfo } from "./luks.ts";
 * const luks: LuksInfo = {
 *   cipherAlg: "aes-256", cipherMode: "xts", ivgenAlg: "plain64", hashAlg: "sha256",
 *   payloadOffset: 2068480, masterKeyIters: 1000, uuid: "d094ec27-60ad-4d55-95da-ef707f7c4b19", slots: [],
 * };
 * assert.strictEqual(luks.cipherAlg, "aes-256");
 * ```
 */
export interface LuksInfo {
  /** QEMU's cipher algorithm name, e.g. `aes-256`. */
  cipherAlg: string;
  /** `xts`, `cbc`, `ecb` or `ctr`. */
  cipherMode: string;
  /** IV generator: `plain`, `plain64` or `essiv`. */
  ivgenAlg: string;
  /** Hash of the ESSIV generator. */
  ivgenHashAlg?: string;
  /** Hash of the key derivation. */
  hashAlg: string;
  /** Byte offset of the encrypted payload. */
  payloadOffset: number;
  /** Master key digest iterations. */
  masterKeyIters: number;
  /** Volume UUID. */
  uuid: string;
  /** The eight key slots. */
  slots: LuksSlotInfo[];
}

function text(bytes: Uint8Array): string {
  const nul = bytes.indexOf(0);
  return new TextDecoder().decode(nul < 0 ? bytes : bytes.subarray(0, nul));
}

const CIPHER_SIZES: Record<string, number[]> = {
  aes: [16, 24, 32],
  serpent: [16, 24, 32],
  twofish: [16, 24, 32],
  cast5: [16],
  sm4: [16],
};

function cipherAlg(name: string, mode: string, keyBytes: number): string {
  const bytes = mode === "xts" ? keyBytes / 2 : keyBytes;
  const sizes = CIPHER_SIZES[name];
  if (!sizes || !sizes.includes(bytes)) {
    throw new Qcow2Error(
      "UNSUPPORTED_FEATURE",
      `Cannot read LUKS header: cipher ${name} with ${bytes}-byte keys is not known`,
    );
  }
  return name === "sm4" ? "sm4" : `${name}-${bytes * 8}`;
}

/**
 * Decodes a LUKS1 header.
 *
 * @throws {Qcow2Error} When the bytes are not a LUKS1 header QEMU knows.
 */
export function parseLuksHeader(bytes: Uint8Array): LuksInfo {
  if (
    bytes.length < LUKS_HEADER_LENGTH ||
    MAGIC.some((b, i) => bytes[i] !== b)
  ) {
    throw new Qcow2Error(
      "BAD_EXTENSION",
      "Cannot read LUKS header: the crypto header does not start with the LUKS magic",
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint16(6);
  if (version !== 1) {
    throw new Qcow2Error(
      "UNSUPPORTED_VERSION",
      `Cannot read LUKS header: version ${version} is not supported (expected 1)`,
    );
  }
  const cipherName = text(bytes.subarray(8, 40));
  const [modeName, ivSpec = ""] = text(bytes.subarray(40, 72)).split(/-(.*)/s);
  const [ivgenAlg, ivgenHashAlg] = ivSpec.split(":");
  const info: LuksInfo = {
    cipherAlg: cipherAlg(cipherName, modeName, view.getUint32(108)),
    cipherMode: modeName,
    ivgenAlg,
    hashAlg: text(bytes.subarray(72, 104)),
    payloadOffset: view.getUint32(104) * SECTOR,
    masterKeyIters: view.getUint32(164),
    uuid: text(bytes.subarray(168, 208)),
    slots: [],
  };
  if (ivgenAlg === "essiv" && ivgenHashAlg !== undefined) {
    info.ivgenHashAlg = ivgenHashAlg;
  }
  for (let i = 0; i < 8; i++) {
    const at = 208 + i * 48;
    const slot: LuksSlotInfo = {
      active: view.getUint32(at) === SLOT_ACTIVE,
      keyOffset: view.getUint32(at + 40) * SECTOR,
    };
    if (slot.active) {
      slot.iters = view.getUint32(at + 4);
      slot.stripes = view.getUint32(at + 44);
    }
    info.slots.push(slot);
  }
  return info;
}
