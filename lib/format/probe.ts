/**
 * Format probing: which disk image format the first bytes of a file are,
 * by the signatures qemu-img 7.2 recognises. Probing every one of them
 * means that a file in a format qcow2pipe does not read (VMDK, VHDX...) is
 * named as such instead of being copied as a raw disk, container bytes and
 * all; the reader's registry of image types says which formats it reads.
 *
 * @module
 */

import { viewOf } from "../bytes/binary.ts";
import { QCOW2_MAGIC } from "./constants.ts";

/**
 * Bytes at the start of an image that probing looks at: QEMU's probe
 * buffer (`BLOCK_PROBE_BUF_SIZE`). A shorter file is probed on what it has.
 *
 * @example Read what probing needs
 * ```ts
 * import assert from "node:assert";
 * import { PROBE_BYTES, probeFormat } from "./probe.ts";
 * const head = new Uint8Array(PROBE_BYTES);
 * assert.strictEqual(probeFormat(head), "raw");
 * ```
 */
export const PROBE_BYTES = 2048;

/**
 * A format qemu-img 7.2 recognises by probing, named as qemu-img names it
 * (`vpc` is VHD). Which of them qcow2pipe reads is the reader's registry
 * of image types.
 *
 * @example Name what a file is
 * ```ts
 * import assert from "node:assert";
 * import { formatTitle, type ProbedFormat, probeFormat } from "./probe.ts";
 * const vhdx = new TextEncoder().encode("vhdxfile");
 * const format: ProbedFormat = probeFormat(vhdx);
 * assert.strictEqual(formatTitle(format), "VHDX (Hyper-V)");
 * ```
 */
export type ProbedFormat =
  | "qcow2"
  | "raw"
  | "qcow"
  | "qed"
  | "vdi"
  | "vmdk"
  | "vpc"
  | "vhdx"
  | "luks"
  | "bochs"
  | "cloop"
  | "dmg"
  | "parallels";

/** How each format is called in messages. */
const TITLES: Record<ProbedFormat, string> = {
  qcow2: "qcow2",
  raw: "raw",
  qcow: "qcow (version 1)",
  qed: "QED",
  vdi: "VDI (VirtualBox)",
  vmdk: "VMDK (VMware)",
  vpc: "VHD (Virtual PC, Hyper-V, Azure)",
  vhdx: "VHDX (Hyper-V)",
  luks: "LUKS (encrypted)",
  bochs: "Bochs",
  cloop: "cloop",
  dmg: "DMG (Apple disk image)",
  parallels: "Parallels",
};

/**
 * How a format is called in messages: `VMDK (VMware)`, `VHD (Virtual PC,
 * Hyper-V, Azure)`.
 *
 * @param format A probed format.
 * @returns Its name for people.
 *
 * @example Say what a file is
 * ```ts
 * import assert from "node:assert";
 * import { formatTitle, probeFormat } from "./probe.ts";
 * const head = new TextEncoder().encode("conectix");
 * assert.strictEqual(formatTitle(probeFormat(head)), "VHD (Virtual PC, Hyper-V, Azure)");
 * ```
 */
export function formatTitle(format: ProbedFormat): string {
  return TITLES[format];
}

const ascii = (text: string) => Uint8Array.from(text, (c) => c.charCodeAt(0));

/** VMDK sparse extents: `KDMV` (hosted) and `COWD` (ESX 2, VMFS sparse). */
const VMDK_MAGICS = [ascii("KDMV"), ascii("COWD")];
/** A VHD footer, which dynamic and differencing images copy to offset 0. */
const VHD_COOKIE = ascii("conectix");
/** The VHDX file type identifier at offset 0. */
const VHDX_SIGNATURE = ascii("vhdxfile");
/** `QED\0`, read little-endian. */
const QED_MAGIC = ascii("QED\0");
/**
 * The LUKS magic, then the version as a big-endian u16: qemu-img 7.2 reads
 * LUKS version 1 only, and probes a LUKS2 header as raw.
 */
const LUKS_MAGIC = Uint8Array.of(0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe);
/** The VDI signature, a little-endian u32 at offset 64 of the header. */
const VDI_SIGNATURE = 0xbeda107f;
const VDI_SIGNATURE_AT = 64;
/** Parallels: 16 magic bytes, then version 2 (a little-endian u32). */
const PARALLELS_MAGICS = [ascii("WithoutFreeSpace"), ascii("WithouFreSpacExt")];
const PARALLELS_VERSION = 2;
/**
 * Bochs growing images: NUL-terminated magic, type and subtype strings in
 * fields of 32, 16 and 16 bytes, then the version (LE u32) at 64.
 */
const BOCHS = {
  magic: "Bochs Virtual HD Image",
  type: "Redolog",
  subtype: "Growing",
  versions: [0x00020000, 0x00010000],
};
/** cloop version 2.0 images start with this shell preamble. */
const CLOOP_PREAMBLE = ascii(
  "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n",
);

function startsWith(head: Uint8Array, magic: Uint8Array, at = 0): boolean {
  if (head.length < at + magic.length) return false;
  for (let i = 0; i < magic.length; i++) {
    if (head[at + i] !== magic[i]) return false;
  }
  return true;
}

/** A NUL-terminated string field equals `text`. */
function cString(head: Uint8Array, at: number, size: number, text: string) {
  const want = ascii(text);
  return want.length < size && startsWith(head, want, at) &&
    head[at + want.length] === 0;
}

/**
 * A VMDK text descriptor: after comment lines and blank lines, a first
 * line that is `version=1`, `2` or `3` (LF or CRLF), as qemu-img decides.
 */
function isVmdkDescriptor(head: Uint8Array): boolean {
  const NL = 0x0a, CR = 0x0d, SPACE = 0x20, HASH = 0x23;
  let p = 0;
  while (p < head.length) {
    if (head[p] === HASH) {
      while (p < head.length && head[p] !== NL) p++;
      p++;
      continue;
    }
    if (head[p] === SPACE) {
      while (p < head.length && head[p] === SPACE) p++;
      if (p < head.length && head[p] === CR) p++;
      if (p === head.length || head[p] !== NL) return false;
      p++;
      continue;
    }
    for (const version of ["1", "2", "3"]) {
      if (
        startsWith(head, ascii(`version=${version}\n`), p) ||
        startsWith(head, ascii(`version=${version}\r\n`), p)
      ) {
        return true;
      }
    }
    return false;
  }
  return false;
}

/**
 * The format of an image by its first bytes, as qemu-img 7.2 probes it:
 * the signature of qcow2 (versions 2 and up), qcow (version 1), QED, VDI,
 * VMDK (sparse extents and text descriptors), VHD (a copy of the footer at
 * offset 0: dynamic and differencing images; a fixed VHD has its footer
 * only at the end and probes as raw, in qemu-img too), VHDX, LUKS (version 1), Bochs,
 * cloop and Parallels, DMG by its name ending with `.dmg` (qemu-img's only
 * test for it), and `raw` for anything else.
 *
 * @param bytes The first {@linkcode PROBE_BYTES} bytes of the image (fewer
 * when the image is shorter).
 * @param name The image's file name, when it has one (for DMG).
 * @returns The format.
 *
 * @example Probe a VMDK descriptor and a qcow2 header
 * ```ts
 * import assert from "node:assert";
 * import { probeFormat } from "./probe.ts";
 * import { defaultHeader, serializeHeader } from "./header.ts";
 * const descriptor = new TextEncoder().encode("# Disk DescriptorFile\nversion=1\nCID=fffffffe\n");
 * assert.strictEqual(probeFormat(descriptor), "vmdk");
 * assert.strictEqual(probeFormat(serializeHeader(defaultHeader({ size: 512 }))), "qcow2");
 * assert.strictEqual(probeFormat(new Uint8Array(512), "disk.raw"), "raw");
 * ```
 */
export function probeFormat(bytes: Uint8Array, name?: string): ProbedFormat {
  // qemu-img probes a buffer of PROBE_BYTES, zero-filled past the end of a
  // shorter file: a 4-byte file holding the qcow2 magic has version 0, and
  // is raw.
  const head = new Uint8Array(PROBE_BYTES);
  head.set(bytes.subarray(0, PROBE_BYTES));
  const view = viewOf(head);
  if (view.getUint32(0) === QCOW2_MAGIC) {
    const version = view.getUint32(4);
    if (version === 1) return "qcow";
    if (version >= 2) return "qcow2";
  }
  if (VMDK_MAGICS.some((m) => startsWith(head, m))) return "vmdk";
  if (startsWith(head, QED_MAGIC)) return "qed";
  if (startsWith(head, VHD_COOKIE)) return "vpc";
  if (startsWith(head, VHDX_SIGNATURE)) return "vhdx";
  if (startsWith(head, LUKS_MAGIC)) {
    if (view.getUint16(6) === 1) return "luks";
  }
  if (view.getUint32(VDI_SIGNATURE_AT, true) === VDI_SIGNATURE) {
    return "vdi";
  }
  if (
    PARALLELS_MAGICS.some((m) => startsWith(head, m)) &&
    view.getUint32(16, true) === PARALLELS_VERSION
  ) {
    return "parallels";
  }
  if (
    cString(head, 0, 32, BOCHS.magic) &&
    cString(head, 32, 16, BOCHS.type) && cString(head, 48, 16, BOCHS.subtype) &&
    BOCHS.versions.includes(view.getUint32(64, true))
  ) {
    return "bochs";
  }
  if (isVmdkDescriptor(head)) return "vmdk";
  // The two formats qemu-img scores below a signature: a cloop preamble,
  // and a name ending with .dmg.
  if (startsWith(head, CLOOP_PREAMBLE)) return "cloop";
  if (name !== undefined && name.length > 4 && name.endsWith(".dmg")) {
    return "dmg";
  }
  return "raw";
}
