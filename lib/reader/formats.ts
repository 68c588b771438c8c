/**
 * The image formats the reader opens, by the name qemu-img gives them: the
 * one registry that opening, `info`, `map`, `check` and `compare` consult.
 * A format's signature is recognised by `probeFormat` (lib/format/probe.ts,
 * which knows every format qemu-img probes); registering its
 * {@linkcode ImageType} here is what makes it readable.
 *
 * @module
 */

import { Qcow2Error } from "../format/errors.ts";
import {
  formatTitle,
  PROBE_BYTES,
  type ProbedFormat,
  probeFormat,
} from "../format/probe.ts";
import type { RandomAccessSource } from "../io/source.ts";
import type { ImageType } from "./image_type.ts";

/**
 * The formats read, in the order messages list them: one line each, a
 * loader of the format's {@linkcode ImageType}. A format's code loads when
 * an image of it is opened, so a command pays only for the formats it
 * meets.
 *
 * @example The formats qcow2pipe reads
 * ```ts
 * import assert from "node:assert";
 * import { IMAGE_TYPES } from "./formats.ts";
 * const names = Object.keys(IMAGE_TYPES);
 * assert.deepStrictEqual(names.slice(0, 2), ["raw", "qcow2"]);
 * assert.ok(names.includes("vmdk") && !names.includes("qed"));
 * ```
 */
export const IMAGE_TYPES: Readonly<
  Record<FormatName, () => Promise<ImageType>>
> = {
  raw: async () => (await import("./raw/type.ts")).rawType,
  qcow2: async () => (await import("./qcow2/type.ts")).qcow2Type,
  qcow: async () => (await import("./qcow/type.ts")).qcowType,
  vdi: async () => (await import("./vdi/type.ts")).vdiType,
  vmdk: async () => (await import("./vmdk/type.ts")).vmdkType,
  vpc: async () => (await import("./vpc/type.ts")).vpcType,
  vhdx: async () => (await import("./vhdx/type.ts")).vhdxType,
};

/**
 * The name of a format the reader opens, as qemu-img names it: the keys of
 * the registry (the compiler holds the two to each other).
 */
export type FormatName =
  | "raw"
  | "qcow2"
  | "qcow"
  | "vdi"
  | "vmdk"
  | "vpc"
  | "vhdx";

/**
 * Whether a format name is one the reader opens.
 *
 * @param name A format name (`-f`, `backing_fmt`, a probe's answer).
 * @returns Whether it is registered.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { isReadFormat } from "./formats.ts";
 * assert.ok(isReadFormat("qcow2"));
 * assert.ok(isReadFormat("vmdk"));
 * assert.ok(!isReadFormat("qed"));
 * ```
 */
export function isReadFormat(name: string): name is FormatName {
  return Object.hasOwn(IMAGE_TYPES, name);
}

/**
 * The formats read, for messages: `raw, qcow2, ... and vhdx`, `raw, qcow2,
 * ... or vhdx`, or with one of them named first (`qcow2, raw, ...`, where a
 * backing file is meant).
 *
 * @param conjunction The word before the last name.
 * @param first A format to list first (default: registry order).
 * @returns The names.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { readFormatsText } from "./formats.ts";
 * assert.match(readFormatsText("or"), /^raw, qcow2, (\w+, )*\w+ or \w+$/);
 * assert.match(readFormatsText("and", "qcow2"), /^qcow2, raw, .* and \w+$/);
 * ```
 */
export function readFormatsText(
  conjunction: "and" | "or",
  first?: FormatName,
): string {
  const registered: string[] = Object.keys(IMAGE_TYPES);
  const names = first === undefined
    ? registered
    : [first, ...registered.filter((n) => n !== first)];
  return names.length === 1
    ? names[0]
    : `${names.slice(0, -1).join(", ")} ${conjunction} ${names.at(-1)}`;
}

/**
 * The image type of a registered format, its code loaded on first use.
 *
 * @param name A registered format name.
 * @returns Its image type.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { imageType } from "./formats.ts";
 * assert.strictEqual((await imageType("vdi")).name, "vdi");
 * ```
 */
export function imageType(name: FormatName): Promise<ImageType> {
  return IMAGE_TYPES[name]();
}

/**
 * A probed format the reader opens, or the one-line refusal naming what
 * the image is: where a signature says VMDK, reading the file as a raw
 * disk would copy the container's bytes as the guest's.
 *
 * @param format What `probeFormat` found.
 * @param name The image, for the message.
 * @returns The format.
 * @throws {Qcow2Error} With code `UNSUPPORTED_FORMAT` for a format that is
 * not registered.
 *
 * @example Refuse a QED image, read a raw disk
 * ```ts
 * import assert from "node:assert";
 * import { probeFormat } from "../format/probe.ts";
 * import { readableFormat } from "./formats.ts";
 * const qed = new TextEncoder().encode("QED\0");
 * assert.throws(
 *   () => readableFormat(probeFormat(qed), "vm.qed"),
 *   /vm.qed is a QED image; qcow2pipe reads raw, qcow2, /,
 * );
 * assert.strictEqual(readableFormat(probeFormat(new Uint8Array(512)), "disk.img"), "raw");
 * ```
 */
export function readableFormat(
  format: ProbedFormat,
  name: string,
): FormatName {
  if (isReadFormat(format)) return format;
  throw new Qcow2Error(
    "UNSUPPORTED_FORMAT",
    `Cannot open image: ${name} is a ${
      formatTitle(format)
    } image; qcow2pipe reads ${
      readFormatsText("and")
    } (-f raw reads its bytes as a raw disk)`,
    { offset: 0 },
  );
}

/**
 * The format of an image by its first bytes, as qemu-img probes it, when
 * the reader opens that format; a {@linkcode Qcow2Error}
 * (`UNSUPPORTED_FORMAT`) naming any other format qemu-img would have read
 * it as.
 *
 * @param source The image file.
 * @param name The image, for the message (default: the source's name).
 * @returns The format.
 * @throws {Qcow2Error} With code `UNSUPPORTED_FORMAT`.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { BytesSource } from "../io/source.ts";
 * import { detectFormat } from "./formats.ts";
 * assert.strictEqual(await detectFormat(new BytesSource(new Uint8Array(512))), "raw");
 * ```
 */
export async function detectFormat(
  source: RandomAccessSource,
  name: string | undefined = source.name,
): Promise<FormatName> {
  return readableFormat(
    probeFormat(await source.read(0, PROBE_BYTES), name),
    name ?? "the image",
  );
}
