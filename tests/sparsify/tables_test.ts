// Partition tables: GPT and MBR disks made by sfdisk are read as sfdisk
// reads them (logical partitions included); tables that fail a check leave
// the whole disk as it is.

import assert from "node:assert";
import { join } from "node:path";
import { qemuCompareIdentical, tempDir } from "../_qemu.ts";
import { runCli } from "../writer/_cli.ts";
import { BytesSource } from "../../lib/io/source.ts";
import { FileSource } from "../../lib/host/file_source.ts";
import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import { crc32 } from "../../lib/bytes/crc.ts";
import {
  blank,
  diskTest,
  MiB,
  patch,
  readAt,
  sfdiskParts,
  sh,
  writeInto,
} from "./_disks.ts";

async function layoutOf(disk: string) {
  await using src = await FileSource.open(disk);
  return (await mapFreeSpace(src)).report;
}

async function sfdisk(disk: string, size: number, script: string) {
  await blank(disk, size);
  await sh("sfdisk", ["-q", disk], { stdin: script });
}

diskTest("a GPT made by sfdisk is read as sfdisk reads it", {
  tools: ["sfdisk"],
}, async () => {
  await using dir = await tempDir();
  const disk = join(dir.path, "gpt.img");
  await sfdisk(
    disk,
    64 * MiB,
    "label: gpt\n,8M,U\n,16M,L\n,8M,S\n,,H\n",
  );
  const report = await layoutOf(disk);
  assert.strictEqual(report.table, "gpt");
  assert.strictEqual(report.tableProblem, undefined);
  const parts = await sfdiskParts(disk);
  assert.deepStrictEqual(
    report.regions.map((r) => [r.partition, r.offset, r.length]),
    parts.map((p, i) => [i + 1, p.offset, p.length]),
  );
  assert.deepStrictEqual(report.regions.map((r) => r.type), [
    "EFI System",
    "Linux filesystem",
    "Linux swap",
    "Linux home",
  ]);
  // Nothing on the partitions: all left as they are.
  assert.ok(report.regions.every((r) => r.status === "untouched"));
  assert.ok(report.regions.every((r) => /no filesystem/.test(r.reason!)));
});

diskTest("an MBR with logical partitions is read as sfdisk reads it", {
  tools: ["sfdisk"],
}, async () => {
  await using dir = await tempDir();
  const disk = join(dir.path, "mbr.img");
  await sfdisk(
    disk,
    64 * MiB,
    "label: dos\n,8M,83\n,8M,82\n,,E\n,10M,83\n,10M,82\n,,7\n",
  );
  const report = await layoutOf(disk);
  assert.strictEqual(report.table, "mbr");
  const parts = (await sfdiskParts(disk)).filter((p) => p.type !== "5");
  assert.deepStrictEqual(
    report.regions.map((r) => [r.partition, r.offset, r.length, r.type]),
    [
      [1, parts[0].offset, parts[0].length, "Linux"],
      [2, parts[1].offset, parts[1].length, "Linux swap"],
      [5, parts[2].offset, parts[2].length, "Linux"],
      [6, parts[3].offset, parts[3].length, "Linux swap"],
      [7, parts[4].offset, parts[4].length, "NTFS/exFAT"],
    ],
  );
});

/** Flips one byte of a file. */
async function flip(path: string, at: number): Promise<void> {
  const [b] = await readAt(path, at, 1);
  await patch(path, at, Uint8Array.of(b ^ 0xff));
}

const BROKEN: Array<{
  name: string;
  script: string;
  damage: (disk: string) => Promise<void>;
  problem: RegExp;
}> = [
  {
    name: "a GPT header whose CRC32 does not match",
    script: "label: gpt\n,16M,L\n",
    damage: (disk) => flip(disk, 512 + 60), // in the disk GUID
    problem: /^GPT header CRC32 0x[0-9a-f]+ does not match its contents/,
  },
  {
    name: "a GPT entry array whose CRC32 does not match",
    script: "label: gpt\n,16M,L\n",
    damage: (disk) => flip(disk, 1024 + 56), // first entry's name
    problem: /^GPT entry array CRC32 0x[0-9a-f]+ does not match its contents/,
  },
  {
    name: "a protective MBR without a GPT header",
    script: "label: gpt\n,16M,L\n",
    damage: (disk) => patch(disk, 512, new Uint8Array(8)),
    problem: /^GPT header in LBA 1 has no "EFI PART" signature$/,
  },
  {
    name: "a GPT partition over the backup entry array (CRCs fixed up)",
    script: "label: gpt\n,16M,L\n",
    damage: async (disk) => {
      const header = await readAt(disk, 512, 92);
      const hv = new DataView(header.buffer);
      const alt = Number(hv.getBigUint64(32, true));
      hv.setBigUint64(48, BigInt(alt - 1), true); // last usable LBA
      const entries = await readAt(disk, 1024, 128 * 128);
      new DataView(entries.buffer).setBigUint64(40, BigInt(alt - 1), true);
      hv.setUint32(88, crc32(entries), true);
      hv.setUint32(16, 0, true);
      hv.setUint32(16, crc32(header), true);
      await patch(disk, 1024, entries);
      await patch(disk, 512, header);
    },
    problem: /^partition 1 \(bytes \d+-\d+\) covers the partition table/,
  },
  {
    name: "overlapping MBR partitions",
    script: "label: dos\n,16M,83\n,16M,83\n",
    // Partition 2 starts inside partition 1.
    damage: (disk) => patch(disk, 446 + 16 + 8, Uint8Array.of(0, 0x10, 0, 0)),
    problem: /^partitions 1 \(bytes \d+-\d+\) and 2 \(bytes \d+-\d+\) overlap$/,
  },
  {
    name: "an MBR partition starting at sector 0",
    script: "label: dos\n,16M,83\n",
    damage: (disk) => patch(disk, 446 + 8, new Uint8Array(4)),
    problem:
      /^MBR entry 1 \(type 0x83\) starts at sector 0, over the table itself$/,
  },
  {
    name: "an EBR chain that loops",
    script: "label: dos\n,,E\n,8M,83\n,8M,83\n",
    // The second EBR links to itself.
    damage: async (disk) => {
      const ext = (await sfdiskParts(disk)).find((p) => p.type === "5")!;
      const first = await readAt(disk, ext.offset, 512);
      const rel = new DataView(first.buffer).getUint32(446 + 16 + 8, true);
      const second = ext.offset + rel * 512;
      const link = new Uint8Array(16); // entry 1: type 5, first LBA, sectors
      link[4] = 0x05;
      new DataView(link.buffer).setUint32(8, rel, true);
      new DataView(link.buffer).setUint32(12, 2048, true);
      await patch(disk, second + 446 + 16, link);
    },
    problem: /^MBR EBR chain loops back to sector \d+$/,
  },
];

for (const c of BROKEN) {
  diskTest(`${c.name} leaves the whole disk as it is`, {
    tools: ["sfdisk"],
  }, async () => {
    await using dir = await tempDir();
    const disk = join(dir.path, "disk.img");
    await sfdisk(disk, 48 * MiB, c.script);
    await c.damage(disk);
    const report = await layoutOf(disk);
    assert.match(report.tableProblem ?? "", c.problem);
    assert.deepStrictEqual(report.regions, []);
    assert.strictEqual(report.freeBytes, 0);
  });
}

diskTest(
  "convert --sparsify copies a disk whose GPT fails its CRC32 unchanged",
  { tools: ["sfdisk", "mkswap", "qemu-img"] },
  async () => {
    await using dir = await tempDir();
    const disk = join(dir.path, "disk.img");
    await Deno.writeFile(disk, new Uint8Array(24 * MiB).fill(0x77));
    await sh("sfdisk", ["-q", disk], { stdin: "label: gpt\n,16M,S\n" });
    const swap = join(dir.path, "swap.img");
    await Deno.writeFile(swap, new Uint8Array(16 * MiB).fill(0x77));
    await sh("mkswap", ["-q", swap]);
    await writeInto(disk, MiB, swap);
    await flip(disk, 512 + 60);
    const dst = join(dir.path, "out.qcow2");
    const r = await runCli([
      "convert",
      "--verbose",
      "--sparsify",
      "--compress",
      "zstd",
      disk,
      dst,
    ]);
    assert.strictEqual(r.code, 0, r.stderr);
    assert.match(
      r.stderr,
      /^qcow2pipe: sparsify: GPT left as it is: GPT header CRC32 0x[0-9a-f]+ does not match its contents \(0x[0-9a-f]+\)\nqcow2pipe: sparsify: 0 B dropped as free space\nqcow2pipe: wrote [^\n]+\n$/,
    );
    await qemuCompareIdentical(disk, dst);
  },
);

diskTest("a partition past the end of the disk is left as it is", {
  tools: ["sfdisk"],
}, async () => {
  await using dir = await tempDir();
  const disk = join(dir.path, "disk.img");
  await sfdisk(disk, 48 * MiB, "label: dos\n,16M,83\n,,82\n");
  using f = await Deno.open(disk, { write: true });
  await f.truncate(40 * MiB);
  const report = await layoutOf(disk);
  assert.strictEqual(report.regions[1].status, "untouched");
  assert.match(
    report.regions[1].reason!,
    /^partition ends at byte 50331648, past the end of the disk \(41943040 bytes\): truncated$/,
  );
});

/** A GPT disk with 4096-byte sectors, built here (sfdisk needs a 4Kn device). */
function gpt4k(): Uint8Array {
  const ss = 4096;
  const disk = new Uint8Array(64 * ss);
  const view = new DataView(disk.buffer);
  disk[446 + 4] = 0xee;
  view.setUint32(446 + 8, 1, true);
  view.setUint32(446 + 12, 63, true);
  disk.set([0x55, 0xaa], 510);
  const entries = disk.subarray(2 * ss, 3 * ss);
  // Linux swap type GUID, sectors 6-9.
  entries.set([
    0x6d,
    0xfd,
    0x57,
    0x06,
    0xab,
    0xa4,
    0xc4,
    0x43,
    0x84,
    0xe5,
    0x09,
    0x33,
    0xc8,
    0x4b,
    0x4f,
    0x4f,
  ]);
  const ev = new DataView(entries.buffer, entries.byteOffset);
  ev.setBigUint64(32, 6n, true);
  ev.setBigUint64(40, 9n, true);
  const h = disk.subarray(ss, ss + 92);
  const hv = new DataView(h.buffer, h.byteOffset);
  h.set(new TextEncoder().encode("EFI PART"));
  hv.setUint32(8, 0x10000, true);
  hv.setUint32(12, 92, true);
  hv.setBigUint64(24, 1n, true);
  hv.setBigUint64(32, 63n, true);
  hv.setBigUint64(40, 6n, true);
  hv.setBigUint64(48, 58n, true);
  hv.setBigUint64(72, 2n, true);
  hv.setUint32(80, 32, true);
  hv.setUint32(84, 128, true);
  hv.setUint32(88, crc32(entries.subarray(0, 32 * 128)), true);
  hv.setUint32(16, crc32(h), true);
  // A swap area with 4 KiB pages in the partition.
  const swap = disk.subarray(6 * ss, 10 * ss);
  const sv = new DataView(swap.buffer, swap.byteOffset);
  sv.setUint32(1024, 1, true);
  sv.setUint32(1028, 3, true);
  swap.set(new TextEncoder().encode("SWAPSPACE2"), ss - 10);
  return disk;
}

Deno.test("a GPT with 4096-byte sectors is found in LBA 1", async () => {
  const { report } = await mapFreeSpace(new BytesSource(gpt4k()));
  assert.strictEqual(report.table, "gpt");
  assert.deepStrictEqual(
    report.regions.map((r) => [r.offset, r.length, r.found, r.freeBytes]),
    [
      [6 * 4096, 4 * 4096, "swap", 3 * 4096],
    ],
  );
});
