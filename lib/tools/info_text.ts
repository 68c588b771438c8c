/**
 * The two forms `qemu-img info` prints: `--output=json` (same keys, same
 * key order, same layout) and the human form.
 *
 * @module
 */

import { printable } from "../format/errors.ts";
import type { ImageInfo, SnapshotInfo } from "./info.ts";
import { qemuDump, qemuJson, type QValue, sizeToStr } from "./_qemu_text.ts";

type QObject = { [key: string]: QValue };

function snapshotJson(s: SnapshotInfo): QObject {
  // Keys in QAPI schema order (SnapshotInfo); printing reorders them.
  const o: QObject = {
    id: s.id,
    name: s.name,
    "vm-state-size": s.vmStateSize,
    "date-sec": s.dateSec,
    "date-nsec": s.dateNsec,
    "vm-clock-sec": Number(s.vmClockNsec / 1_000_000_000n),
    "vm-clock-nsec": Number(s.vmClockNsec % 1_000_000_000n),
  };
  if (s.icount !== undefined) o.icount = Number(s.icount);
  return o;
}

/**
 * The object `qemu-img info --output=json` prints for one image, with
 * QEMU's key names (`virtual-size`, `format-specific`, ...).
 *
 * @param info What {@linkcode imageInfo} returned.
 * @returns A plain object; `JSON.stringify` it, or use
 * {@linkcode formatImageInfoJson} for QEMU's exact text.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { imageInfoJson } from "./info_text.ts";
 * const json = imageInfoJson({ filename: "a.raw", format: "raw", virtualSize: 512, actualSize: 4096, dirty: false, snapshots: [] });
 * assert.deepStrictEqual(json, { filename: "a.raw", format: "raw", "dirty-flag": false, "actual-size": 4096, "virtual-size": 512 });
 * ```
 */
export function imageInfoJson(info: ImageInfo): Record<string, unknown> {
  // Keys in QAPI schema order (ImageInfo).
  const o: QObject = {
    filename: info.filename,
    format: info.format,
    "dirty-flag": info.dirty,
  };
  if (info.actualSize !== undefined) o["actual-size"] = info.actualSize;
  o["virtual-size"] = info.virtualSize;
  if (info.clusterSize !== undefined) o["cluster-size"] = info.clusterSize;
  if (info.encrypted) o.encrypted = true;
  if (info.backingFilename !== undefined) {
    o["backing-filename"] = info.backingFilename;
  }
  if (info.fullBackingFilename !== undefined) {
    o["full-backing-filename"] = info.fullBackingFilename;
  }
  if (info.backingFilenameFormat !== undefined) {
    o["backing-filename-format"] = info.backingFilenameFormat;
  }
  if (info.snapshots.length > 0) o.snapshots = info.snapshots.map(snapshotJson);
  if (info.formatSpecific !== undefined) {
    const { type, data } = info.formatSpecific;
    o["format-specific"] = { type, data };
  }
  return o;
}

/**
 * The exact text of `qemu-img info --output=json` (without the final
 * newline): one object, or with `chain` a list of the whole backing chain
 * as `--backing-chain` prints it.
 *
 * @param info What {@linkcode imageInfo} returned.
 * @param chain Print the list of the image and its `chain`.
 * @returns QEMU's pretty JSON, keys in QEMU's order.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { formatImageInfoJson } from "./info_text.ts";
 * const text = formatImageInfoJson({ filename: "a.raw", format: "raw", virtualSize: 512, dirty: false, snapshots: [] });
 * assert.strictEqual(text, '{\n    "virtual-size": 512,\n    "filename": "a.raw",\n    "format": "raw",\n    "dirty-flag": false\n}');
 * ```
 */
export function formatImageInfoJson(info: ImageInfo, chain = false): string {
  if (!chain) return qemuJson(imageInfoJson(info) as QObject);
  return qemuJson(
    [info, ...(info.chain ?? [])].map((i) => imageInfoJson(i) as QObject),
  );
}

function two(n: number): string {
  return String(n).padStart(2, "0");
}

function snapshotLine(s: SnapshotInfo): string {
  const d = new Date(s.dateSec * 1000);
  const date = `${d.getFullYear()}-${two(d.getMonth() + 1)}-${
    two(d.getDate())
  } ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  const secs = s.vmClockNsec / 1_000_000_000n;
  const ms = Number((s.vmClockNsec / 1_000_000n) % 1000n);
  const clock = `${two(Number(secs / 3600n))}:${
    two(Number((secs / 60n) % 60n))
  }:${two(Number(secs % 60n))}.${String(ms).padStart(3, "0")}`;
  const icount = s.icount === undefined ? "" : String(s.icount);
  return `${printable(s.id).padEnd(9)} ${printable(s.name).padEnd(16)} ${
    sizeToStr(s.vmStateSize).padStart(8)
  }${date.padStart(20)}${clock.padStart(13)}${icount.padStart(11)}`;
}

/**
 * The snapshot table as `qemu-img snapshot -l` (and `qemu-img info`)
 * prints it: a title, the column heads, one line for each snapshot with
 * its date in local time; nothing when there are none.
 *
 * @param snapshots The snapshots, as {@linkcode imageInfo} lists them.
 * @returns The table, each line ending with a newline, or "".
 *
 * @example No snapshots, no table
 * ```ts
 * import assert from "node:assert";
 * import { convertToBytes } from "@qcow2pipe/qcow2pipe";
 * import { formatSnapshotList, imageInfo } from "@qcow2pipe/qcow2pipe/tools";
 * const info = await imageInfo(await convertToBytes(new Uint8Array(512), { workers: 1 }));
 * assert.strictEqual(formatSnapshotList(info.snapshots), "");
 * ```
 */
export function formatSnapshotList(snapshots: SnapshotInfo[]): string {
  if (snapshots.length === 0) return "";
  let out = "Snapshot list:\n";
  out += `${"ID".padEnd(10)}${"TAG".padEnd(17)}${"VM SIZE".padStart(8)}${
    "DATE".padStart(20)
  }${"VM CLOCK".padStart(13)}${"ICOUNT".padStart(11)}\n`;
  for (const s of snapshots) out += snapshotLine(s) + "\n";
  return out;
}

/**
 * The human form of `qemu-img info` for one image (or, with `chain`, the
 * image and its backing chain separated by blank lines).
 *
 * @param info What {@linkcode imageInfo} returned.
 * @param chain Print the images of `info.chain` too.
 * @returns The text, ending with a newline.
 *
 * @example
 * ```ts
 * import assert from "node:assert";
 * import { formatImageInfo } from "./info_text.ts";
 * const text = formatImageInfo({ filename: "a.raw", format: "raw", virtualSize: 1 << 20, actualSize: 4096, dirty: false, snapshots: [] });
 * assert.strictEqual(text, "image: a.raw\nfile format: raw\nvirtual size: 1 MiB (1048576 bytes)\ndisk size: 4 KiB\n");
 * ```
 */
export function formatImageInfo(info: ImageInfo, chain = false): string {
  if (chain) {
    return [info, ...(info.chain ?? [])].map((i) => formatImageInfo(i)).join(
      "\n",
    );
  }
  // Names come from the command line and the image: shown by printable(),
  // each stays on its line (qemu-img prints them as they are).
  let out = `image: ${printable(info.filename)}\n` +
    `file format: ${info.format}\n` +
    `virtual size: ${
      sizeToStr(info.virtualSize)
    } (${info.virtualSize} bytes)\n` +
    `disk size: ${
      info.actualSize === undefined ? "unavailable" : sizeToStr(info.actualSize)
    }\n`;
  if (info.encrypted) out += "encrypted: yes\n";
  if (info.clusterSize !== undefined) {
    out += `cluster_size: ${info.clusterSize}\n`;
  }
  if (info.dirty) out += "cleanly shut down: no\n";
  if (info.backingFilename !== undefined) {
    out += `backing file: ${printable(info.backingFilename)}`;
    if (info.fullBackingFilename === undefined) {
      out += " (cannot determine actual path)";
    } else if (info.fullBackingFilename !== info.backingFilename) {
      out += ` (actual path: ${printable(info.fullBackingFilename)})`;
    }
    out += "\n";
    if (info.backingFilenameFormat !== undefined) {
      out += `backing file format: ${printable(info.backingFilenameFormat)}\n`;
    }
  }
  out += formatSnapshotList(info.snapshots);
  if (info.formatSpecific !== undefined) {
    out += "Format specific information:\n";
    out += qemuDump(info.formatSpecific.data, 1);
  }
  return out;
}
