// A streamOptimized VMDK in VMware's layout (what ovftool and ESXi exports
// write; qemu-img writes its tables first and no footer): the header's
// gd_offset says "at the end", each grain table follows its grains, then
// the grain directory, the footer and end-of-stream, all behind markers.
// qemu-img reads it (through the footer): the tests judge it by qemu-img.

import { deflateSync } from "node:zlib";

const SECTOR = 512;
const GTES = 512;

/** Options of {@linkcode vmwareStream}. */
export interface VmwareStreamOptions {
  /** Sectors per grain. @default {128} */
  granularity?: number;
  /** Grains written in this order of their index (default: guest order). */
  order?: (grains: number[]) => number[];
}

/**
 * A streamOptimized VMDK of `raw` in VMware's layout: grains that are all
 * zeros are left out.
 */
export function vmwareStream(
  raw: Uint8Array,
  options: VmwareStreamOptions = {},
): Uint8Array {
  const granularity = options.granularity ?? 128;
  const gs = granularity * SECTOR;
  const capacity = Math.ceil(raw.length / SECTOR);
  const grainCount = Math.ceil(capacity / granularity);
  const gdEntries = Math.ceil(grainCount / GTES);
  const parts: Uint8Array[] = [];
  let at = 0;
  const put = (b: Uint8Array) => {
    const padded = new Uint8Array(Math.ceil(b.length / SECTOR) * SECTOR);
    padded.set(b);
    parts.push(padded);
    at += padded.length;
  };
  const header = (gdOffset: bigint) => {
    const h = new Uint8Array(SECTOR);
    const v = new DataView(h.buffer);
    v.setUint32(0, 0x4b444d56);
    v.setUint32(4, 3, true);
    v.setUint32(8, 0x30001, true); // NL_DETECT | COMPRESS | MARKER
    v.setBigUint64(12, BigInt(capacity), true);
    v.setBigUint64(20, BigInt(granularity), true);
    v.setBigUint64(28, 1n, true);
    v.setBigUint64(36, 20n, true);
    v.setUint32(44, GTES, true);
    v.setBigUint64(56, gdOffset, true);
    v.setBigUint64(64, 128n, true);
    h.set([0x0a, 0x20, 0x0d, 0x0a], 73);
    v.setUint16(77, 1, true);
    return h;
  };
  const marker = (sectors: number, type: number) => {
    const m = new Uint8Array(SECTOR);
    const v = new DataView(m.buffer);
    v.setBigUint64(0, BigInt(sectors), true);
    v.setUint32(12, type, true);
    return m;
  };
  put(header(0xffffffffffffffffn));
  const desc = new TextEncoder().encode(
    `# Disk DescriptorFile\nversion=1\nCID=2a3b4c5d\nparentCID=ffffffff\ncreateType="streamOptimized"\n\nRW ${capacity} SPARSE "disk.vmdk"\n\nddb.adapterType = "lsilogic"\n`,
  );
  const descSector = new Uint8Array(20 * SECTOR);
  descSector.set(desc);
  put(descSector);
  put(new Uint8Array(128 * SECTOR - at));
  const present: number[] = [];
  for (let g = 0; g < grainCount; g++) {
    const bytes = raw.subarray(g * gs, Math.min((g + 1) * gs, raw.length));
    if (bytes.some((b) => b !== 0)) present.push(g);
  }
  const order = options.order?.(present) ?? present;
  const tables = new Map<number, Uint32Array>();
  const gd = new Uint32Array(gdEntries);
  const flushTable = (t: number) => {
    const table = tables.get(t)!;
    put(marker(4, 1));
    gd[t] = at / SECTOR;
    put(new Uint8Array(table.buffer));
    tables.delete(t);
  };
  for (let i = 0; i < order.length; i++) {
    const g = order[i];
    const grain = new Uint8Array(gs);
    grain.set(raw.subarray(g * gs, Math.min((g + 1) * gs, raw.length)));
    const z = deflateSync(grain);
    const m = new Uint8Array(12 + z.length);
    const v = new DataView(m.buffer);
    v.setBigUint64(0, BigInt(g * granularity), true);
    v.setUint32(8, z.length, true);
    m.set(z, 12);
    const t = Math.floor(g / GTES);
    if (!tables.has(t)) tables.set(t, new Uint32Array(GTES));
    tables.get(t)![g % GTES] = at / SECTOR;
    put(m);
    // A table goes out once no later grain falls in its range.
    if (!order.slice(i + 1).some((n) => Math.floor(n / GTES) === t)) {
      flushTable(t);
    }
  }
  put(marker(Math.ceil(gdEntries * 4 / SECTOR), 2));
  const gdAt = at / SECTOR;
  put(new Uint8Array(gd.buffer));
  put(marker(1, 3));
  put(header(BigInt(gdAt)));
  put(new Uint8Array(SECTOR)); // end-of-stream
  const out = new Uint8Array(at);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}
