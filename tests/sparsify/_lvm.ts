// Building real LVM2 physical volumes for the --sparsify tests (not a test
// file). This kernel cannot activate LVs, so the PVs are made by LVM2's own
// tools on loop devices over a disk image's partitions (pvcreate, vgcreate)
// and their volume groups written with vgcfgrestore from metadata text the
// test writes: linear LVs whose data then sits at plain offsets of the PV,
// where the filesystems are written as files. LVM2's reports (pvs --segments,
// lvs --segments) judge what the metadata says. An attacker's writer puts
// metadata text straight into a PV's metadata area, CRCs recomputed.

import assert from "node:assert";
import { join } from "node:path";
import { lvmCrc } from "../../lib/sparsify/lvm/label.ts";
import type { FreeRange } from "../../lib/sparsify/report.ts";
import { canLoop, diskTest, merge, MiB, patch, readAt, sh } from "./_disks.ts";

/** The LVM2 tools the tests run (Debian package lvm2). */
export const LVM_TOOLS = ["pvcreate", "vgcreate", "vgcfgrestore", "pvs", "lvs"];

/**
 * Registers a test needing the LVM2 tools, `tools`, root and loop devices:
 * skipped with a message when they are missing, failed under CI.
 */
export function lvmTest(
  name: string,
  tools: string[],
  fn: (t: Deno.TestContext) => Promise<void>,
): void {
  diskTest(name, { tools: [...LVM_TOOLS, ...tools], loop: true }, fn);
}

const ENV = { LVM_SUPPRESS_FD_WARNINGS: "1" };

/** An LVM2 configuration that sees only `devices` and writes no backups. */
function lvmConfig(devices: string[]): string {
  const accept = devices.map((d) => `"a|^${d}$|"`).join(", ");
  return `devices { filter = [${accept}, "r|.*|"] global_filter = [${accept}, "r|.*|"] use_devicesfile = 0 obtain_device_list_from_udev = 0 } backup { backup = 0 archive = 0 } activation { udev_sync = 0 udev_rules = 0 }`;
}

/** A PV as LVM2 reports it. */
export interface PvInfo {
  /** The loop device it was made on. */
  device: string;
  /** Its key in the metadata (`pv0`). */
  key: string;
  uuid: string;
  /** Disk offset of the partition (or 0 for a bare disk). */
  offset: number;
  /** Bytes of the device. */
  devSize: number;
  /** PV offset of the first extent, in bytes. */
  peStart: number;
  /** Extents. */
  peCount: number;
}

/** A segment of an LV spec: extents on a PV (by its key). */
export interface SegmentSpec {
  pv: string;
  pe: number;
  count: number;
}

/** An LV as the test writes it: linear segments, or raw text for others. */
export interface LvSpec {
  name: string;
  segments?: SegmentSpec[];
  status?: string[];
  /** The LV's whole section body instead, for non-linear kinds. */
  raw?: string;
}

/** A volume group as the test writes it. */
export interface VgSpec {
  name: string;
  id: string;
  seqno: number;
  /** Bytes per extent. */
  extentBytes: number;
  pvs: PvInfo[];
  lvs: LvSpec[];
  /** Text added to the VG section (tags and such). */
  extra?: string;
}

/** The LV's pieces: LV byte offset → PV byte offset, in LV order. */
export function piecesOf(
  vg: VgSpec,
  lv: LvSpec,
): Array<{ at: number; length: number; pv: PvInfo; to: number }> {
  let at = 0;
  return (lv.segments ?? []).map((s) => {
    const pv = vg.pvs.find((p) => p.key === s.pv)!;
    const piece = {
      at,
      length: s.count * vg.extentBytes,
      pv,
      to: pv.peStart + s.pe * vg.extentBytes,
    };
    at += piece.length;
    return piece;
  });
}

/** The metadata text of `vg`, as vgcfgrestore takes it. */
export function vgText(vg: VgSpec): string {
  const sectors = (n: number) => n / 512;
  const pvs = vg.pvs.map((p) =>
    `${p.key} {
id = "${p.uuid}"
device = "${p.device}"
status = ["ALLOCATABLE"]
flags = []
dev_size = ${sectors(p.devSize)}
pe_start = ${sectors(p.peStart)}
pe_count = ${p.peCount}
}`
  ).join("\n");
  const lvs = vg.lvs.map((lv, i) => {
    const id = `lvlvlv-${
      String(i).padStart(4, "0")
    }-aaaa-aaaa-aaaa-aaaa-aaaaaa`;
    if (lv.raw !== undefined) return `${lv.name} {\nid = "${id}"\n${lv.raw}\n}`;
    let start = 0;
    const segs = lv.segments!.map((s, k) => {
      const text = `segment${k + 1} {
start_extent = ${start}
extent_count = ${s.count}
type = "striped"
stripe_count = 1
stripes = [
"${s.pv}", ${s.pe}
]
}`;
      start += s.count;
      return text;
    }).join("\n");
    return `${lv.name} {
id = "${id}"
status = [${
      (lv.status ?? ["READ", "WRITE", "VISIBLE"]).map((s) => `"${s}"`).join(
        ", ",
      )
    }]
flags = []
creation_host = "test"
creation_time = 1700000000
segment_count = ${lv.segments!.length}
${segs}
}`;
  }).join("\n");
  return `${vg.name} {
id = "${vg.id}"
seqno = ${vg.seqno}
format = "lvm2"
status = ["RESIZEABLE", "READ", "WRITE"]
flags = []
extent_size = ${sectors(vg.extentBytes)}
max_lv = 0
max_pv = 0
metadata_copies = 0
${vg.extra ?? ""}
physical_volumes {
${pvs}
}
logical_volumes {
${lvs}
}
}
# written by the qcow2pipe tests
contents = "Text Format Volume Group"
version = 1
description = ""
creation_host = "test"
creation_time = 1700000000
`;
}

/**
 * Loop devices over parts of disk images, and LVM2 commands that see only
 * them; the devices are detached on dispose.
 */
export class LvmSession implements AsyncDisposable {
  readonly devices: string[] = [];

  /** Attaches `length` bytes of `image` at `offset` as a loop device. */
  async attach(image: string, offset: number, length: number): Promise<string> {
    assert.ok(canLoop(), "loop devices need root");
    const dev = (await sh("losetup", [
      "-f",
      "--show",
      "--offset",
      String(offset),
      "--sizelimit",
      String(length),
      image,
    ])).trim();
    this.devices.push(dev);
    return dev;
  }

  /** Runs an LVM2 command with the session's configuration. */
  run(cmd: string, ...args: string[]): Promise<string> {
    return sh(cmd, ["--config", lvmConfig(this.devices), ...args], {
      env: ENV,
    });
  }

  /** Runs an LVM2 report command with JSON output; returns its rows. */
  async report(
    cmd: string,
    key: string,
    ...args: string[]
  ): Promise<Array<Record<string, string>>> {
    const out = await this.run(
      cmd,
      "--reportformat",
      "json",
      "--units",
      "b",
      "--nosuffix",
      ...args,
    );
    return JSON.parse(out).report[0][key];
  }

  /**
   * Makes a PV on `dev` (pvcreate with `args`) in a VG of its own
   * (vgcreate, for the extent count), and reports it.
   */
  async pv(
    dev: string,
    offset: number,
    key: string,
    extentBytes: number,
    args: string[] = [],
  ): Promise<PvInfo> {
    await this.run("pvcreate", "-ff", "-y", ...args, dev);
    const vg = `qtmp${Math.random().toString(36).slice(2, 10)}`;
    await this.run("vgcreate", "-s", `${extentBytes / 1024}k`, vg, dev);
    const [row] = await this.report(
      "pvs",
      "pv",
      "-o",
      "pv_uuid,pe_start,dev_size,pv_pe_count",
      dev,
    );
    await this.run("vgremove", "-f", vg);
    return {
      device: dev,
      key,
      uuid: row.pv_uuid,
      offset,
      devSize: Number(row.dev_size),
      peStart: Number(row.pe_start),
      peCount: Number(row.pv_pe_count),
    };
  }

  /** Writes `vg`'s metadata with vgcfgrestore (`--force` for thin pools). */
  async restore(vg: VgSpec, force = false): Promise<void> {
    const file = await Deno.makeTempFile({ suffix: ".vg" });
    try {
      await Deno.writeTextFile(file, vgText(vg));
      await this.run(
        "vgcfgrestore",
        ...(force ? ["--force"] : []),
        "-f",
        file,
        vg.name,
      );
    } finally {
      await Deno.remove(file);
    }
  }

  /**
   * The free extents of `pv` as LVM2 reports them (pvs --segments), as
   * disk byte ranges.
   */
  async freeExtents(pv: PvInfo, extentBytes: number): Promise<FreeRange[]> {
    const rows = await this.report(
      "pvs",
      "pvseg",
      "--segments",
      "-o",
      "pvseg_start,pvseg_size,lv_name",
      pv.device,
    );
    return rows.filter((r) => r.lv_name === "").map((r) => ({
      offset: pv.offset + pv.peStart + Number(r.pvseg_start) * extentBytes,
      length: Number(r.pvseg_size) * extentBytes,
    }));
  }

  /** Each LV's segments as LVM2 reports them: `name: [[device, first, last]...]`. */
  async lvSegments(vg: string): Promise<Record<string, string[]>> {
    const rows = await this.report(
      "lvs",
      "seg",
      "-a",
      "--segments",
      "-o",
      "lv_name,seg_pe_ranges,segtype",
      vg,
    );
    const out: Record<string, string[]> = {};
    for (const r of rows) {
      (out[r.lv_name] ??= []).push(`${r.segtype} ${r.seg_pe_ranges}`);
    }
    return out;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const dev of this.devices.splice(0).reverse()) {
      await sh("losetup", ["-d", dev]).catch(() => {});
    }
  }
}

/** Copies `length` bytes of file `src` at `from` to file `dst` at `to`. */
export async function copyRange(
  src: string,
  from: number,
  dst: string,
  to: number,
  length: number,
): Promise<void> {
  using a = await Deno.open(src, { read: true });
  using b = await Deno.open(dst, { write: true });
  await a.seek(from, Deno.SeekMode.Start);
  await b.seek(to, Deno.SeekMode.Start);
  const buf = new Uint8Array(4 * MiB);
  for (let left = length; left > 0;) {
    const n = await a.read(buf.subarray(0, Math.min(left, buf.length)));
    assert.ok(n !== null && n > 0, `short read of ${src}`);
    for (let done = 0; done < n;) {
      done += await b.write(buf.subarray(done, n));
    }
    left -= n;
  }
}

/** Writes the LV image `lvImage` into `disk` through its pieces. */
export async function writeLv(
  disk: string,
  vg: VgSpec,
  lv: LvSpec,
  lvImage: string,
): Promise<void> {
  for (const p of piecesOf(vg, lv)) {
    await copyRange(lvImage, p.at, disk, p.pv.offset + p.to, p.length);
  }
}

/** Reads an LV out of `disk` through its pieces into the file `to`. */
export async function readLv(
  disk: string,
  vg: VgSpec,
  lv: LvSpec,
  to: string,
): Promise<void> {
  await Deno.writeFile(to, new Uint8Array(0));
  for (const p of piecesOf(vg, lv)) {
    await copyRange(disk, p.pv.offset + p.to, to, p.at, p.length);
  }
}

/** LV-relative ranges as disk ranges, through the LV's pieces. */
export function lvToDisk(
  vg: VgSpec,
  lv: LvSpec,
  ranges: FreeRange[],
): FreeRange[] {
  const out: FreeRange[] = [];
  for (const r of ranges) {
    for (const p of piecesOf(vg, lv)) {
      const a = Math.max(r.offset, p.at);
      const b = Math.min(r.offset + r.length, p.at + p.length);
      if (a < b) {
        out.push({ offset: p.pv.offset + p.to + a - p.at, length: b - a });
      }
    }
  }
  return merge(out);
}

/** Where a PV's label and metadata areas are, read from its first sectors. */
export interface PvAreas {
  /** Disk offset of the label sector. */
  label: number;
  /** Disk offsets and sizes of the metadata areas. */
  mdas: Array<{ offset: number; size: number }>;
}

/** Finds the label of the PV at disk offset `pv` and its metadata areas. */
export async function pvAreas(disk: string, pv: number): Promise<PvAreas> {
  const head = await readAt(disk, pv, 2048);
  for (let s = 0; s < 4; s++) {
    const sector = head.subarray(s * 512, (s + 1) * 512);
    if (new TextDecoder().decode(sector.subarray(0, 8)) !== "LABELONE") {
      continue;
    }
    const v = new DataView(sector.buffer, sector.byteOffset, 512);
    let at = v.getUint32(20, true) + 40;
    while (v.getBigUint64(at, true) !== 0n) at += 16; // data areas
    at += 16;
    const mdas = [];
    while (v.getBigUint64(at, true) !== 0n) {
      mdas.push({
        offset: pv + Number(v.getBigUint64(at, true)),
        size: Number(v.getBigUint64(at + 8, true)),
      });
      at += 16;
    }
    return { label: pv + s * 512, mdas };
  }
  throw new Error(`no LVM2 label at byte ${pv}`);
}

/** Recomputes the CRC of the label sector at disk offset `at`. */
export async function fixLabelCrc(disk: string, at: number): Promise<void> {
  const s = await readAt(disk, at, 512);
  const crc = new Uint8Array(4);
  new DataView(crc.buffer).setUint32(0, lvmCrc(s.subarray(20)), true);
  await patch(disk, at + 16, crc);
}

/** Recomputes the CRC of the metadata area header at disk offset `at`. */
export async function fixMdaCrc(disk: string, at: number): Promise<void> {
  const h = await readAt(disk, at, 512);
  const crc = new Uint8Array(4);
  new DataView(crc.buffer).setUint32(0, lvmCrc(h.subarray(4)), true);
  await patch(disk, at, crc);
}

/**
 * The attacker's writer: puts `text` (a NUL is added) as the committed
 * metadata of the metadata area at disk offset `mda` (of `size` bytes), at
 * `offset` in the area (wrapping past its end to byte 512 when it does not
 * fit), and recomputes the text and header CRCs.
 */
export async function writeMetadataText(
  disk: string,
  mda: { offset: number; size: number },
  text: string | Uint8Array,
  offset = 512,
): Promise<void> {
  const body = typeof text === "string" ? new TextEncoder().encode(text) : text;
  const bytes = new Uint8Array(body.length + 1);
  bytes.set(body);
  const first = Math.min(bytes.length, mda.size - offset);
  await patch(disk, mda.offset + offset, bytes.subarray(0, first));
  if (first < bytes.length) {
    await patch(disk, mda.offset + 512, bytes.subarray(first));
  }
  const slot = new Uint8Array(24);
  const v = new DataView(slot.buffer);
  v.setBigUint64(0, BigInt(offset), true);
  v.setBigUint64(8, BigInt(bytes.length), true);
  v.setUint32(16, lvmCrc(bytes), true);
  await patch(disk, mda.offset + 40, slot);
  await fixMdaCrc(disk, mda.offset);
}

/** The committed metadata text of the metadata area at disk offset `mda`. */
export async function readMetadataText(
  disk: string,
  mda: { offset: number; size: number },
): Promise<string> {
  const h = await readAt(disk, mda.offset, 512);
  const v = new DataView(h.buffer, h.byteOffset, 512);
  const offset = Number(v.getBigUint64(40, true));
  const size = Number(v.getBigUint64(48, true));
  const first = Math.min(size, mda.size - offset);
  const a = await readAt(disk, mda.offset + offset, first);
  const b = await readAt(disk, mda.offset + 512, size - first);
  const all = new Uint8Array(size);
  all.set(a);
  all.set(b, first);
  return new TextDecoder().decode(all.subarray(0, size - 1));
}

/** A temporary directory path helper. */
export function inDir(dir: string): (f: string) => string {
  return (f: string) => join(dir, f);
}

/**
 * A PV built in memory, without LVM2: a label in sector 1 (UUID `uuid`),
 * one metadata area of `mdaSize` bytes at 4 KiB holding `text`, extents
 * from `peStart`; CRCs computed. For tests that run without root.
 */
export function pvBytes(
  size: number,
  text: string,
  options: { uuid?: string; peStart?: number; mdaSize?: number } = {},
): Uint8Array {
  const uuid = options.uuid ?? "zGhZhnYzF8Ue3gMf0fbXQaoUr8af1KEE";
  const peStart = options.peStart ?? MiB;
  const mdaSize = options.mdaSize ?? peStart - 4096;
  const disk = new Uint8Array(size);
  const v = new DataView(disk.buffer);
  const enc = new TextEncoder();
  const L = 512;
  disk.set(enc.encode("LABELONE"), L);
  v.setBigUint64(L + 8, 1n, true);
  v.setUint32(L + 20, 32, true);
  disk.set(enc.encode("LVM2 001"), L + 24);
  disk.set(enc.encode(uuid), L + 32);
  v.setBigUint64(L + 64, BigInt(size), true);
  v.setBigUint64(L + 72, BigInt(peStart), true); // data area, to the end
  v.setBigUint64(L + 104, 4096n, true); // metadata area
  v.setBigUint64(L + 112, BigInt(mdaSize), true);
  v.setUint32(L + 136, 2, true); // extension version 2, no bootloader area
  v.setUint32(L + 16, lvmCrc(disk.subarray(L + 20, L + 512)), true);
  const M = 4096;
  const bytes = enc.encode(text + "\0");
  disk.set(enc.encode(" LVM2 x[5A%r0N*>"), M + 4);
  v.setUint32(M + 20, 1, true);
  v.setBigUint64(M + 24, 4096n, true);
  v.setBigUint64(M + 32, BigInt(mdaSize), true);
  v.setBigUint64(M + 40, 512n, true);
  v.setBigUint64(M + 48, BigInt(bytes.length), true);
  v.setUint32(M + 56, lvmCrc(bytes), true);
  v.setUint32(M, lvmCrc(disk.subarray(M + 4, M + 512)), true);
  disk.set(bytes, M + 512);
  return disk;
}
