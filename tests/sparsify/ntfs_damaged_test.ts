// Damaged, unclean and hostile NTFS volumes are left exactly as they are.
// Each case starts from one real volume (mkntfs, filled and with files
// deleted through ntfs-3g, so that free clusters hold old bytes) and
// changes one thing, as an attacker who has read the module would: the
// locations come from ntfs-3g's own tools (ntfsinfo), and record edits keep
// the update sequence fixups consistent. `convert --sparsify` must
// succeed, say why on one stderr line, and write an image that qemu-img
// finds identical to the input.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { runCli } from "../writer/_cli.ts";
import { expectUntouched, MiB, patch, readAt, sh } from "./_disks.ts";
import {
  attributeAt,
  inodeOf,
  makeNtfs,
  type NtfsContent,
  ntfsGeometry,
  ntfsInfo,
  ntfsTest,
  patchRecord,
  readRecord,
  recordOffset,
  runsIn,
} from "./_ntfs.ts";

const SIZE = 64 * MiB;

/** What a case knows of the volume it damages. */
interface Volume {
  image: string;
  dir: string;
  content: NtfsContent;
  clusterSize: number;
  recordSize: number;
}

/** A kept file of the volume: its inode and its data runs by ntfsinfo. */
async function keptFile(v: Volume) {
  const dump = await ntfsInfo(v.image, `/${v.content.kept[1]}`);
  return { inode: inodeOf(dump), runs: runsIn(dump, "$DATA") };
}

/**
 * Sets `$VOLUME_INFORMATION`'s version and flags in record 3 and in its
 * copy in `$MFTMirr`, as Windows and ntfs-3g write them.
 */
async function setVolumeInfo(
  v: Volume,
  change: (info: Uint8Array) => void,
): Promise<void> {
  const at = await recordOffset(v.image, 3);
  const rec = await readRecord(v.image, at, v.recordSize);
  const attr = attributeAt(rec, 0x70);
  const value = attr + (rec[attr + 0x14] | (rec[attr + 0x15] << 8));
  const info = rec.slice(value, value + 12);
  change(info);
  const [mirror] = runsIn(await ntfsInfo(v.image, 1), "$DATA");
  const copy = mirror.lcn * v.clusterSize + 3 * v.recordSize;
  for (const record of [at, copy]) {
    await patchRecord(v.image, record, value, info);
  }
}

function le(value: number, size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = Math.floor(value / 256 ** i) % 256;
  return out;
}

const CASES: Array<{
  name: string;
  reason: (v: Volume) => Promise<RegExp> | RegExp;
  damage: (v: Volume) => Promise<void>;
}> = [
  {
    name: "a $Bitmap edited to call a live file's cluster free",
    reason: async (v) => {
      const f = await keptFile(v);
      return new RegExp(
        `MFT record ${f.inode} \\$DATA \\(in use\\) has data on cluster ${
          f.runs[0].lcn
        }, which \\$Bitmap calls free`,
      );
    },
    damage: async (v) => {
      const lcn = (await keptFile(v)).runs[0].lcn;
      const [bitmap] = runsIn(await ntfsInfo(v.image, 6), "$DATA");
      const at = bitmap.lcn * v.clusterSize + (lcn >> 3);
      const [b] = await readAt(v.image, at, 1);
      await patch(v.image, at, Uint8Array.of(b & ~(1 << (lcn & 7))));
    },
  },
  {
    name: "an MFT record with a broken update sequence (a torn write)",
    reason: async (v) =>
      new RegExp(
        `MFT record ${
          (await keptFile(v)).inode
        }: bytes 1022-1023 hold 0x[0-9a-f]+, not the update sequence number 0x[0-9a-f]+ \\(a torn write\\)`,
      ),
    damage: async (v) => {
      const at = await recordOffset(v.image, (await keptFile(v)).inode);
      const [lo, hi] = await readAt(v.image, at + 1022, 2);
      await patch(v.image, at + 1022, Uint8Array.of(lo ^ 1, hi));
    },
  },
  {
    name: "an MFT record marked BAAD",
    reason: async (v) =>
      new RegExp(
        `MFT record ${(await keptFile(v)).inode} has magic "BAAD", not "FILE"`,
      ),
    damage: async (v) => {
      const at = await recordOffset(v.image, (await keptFile(v)).inode);
      await patch(v.image, at, new TextEncoder().encode("BAAD"));
    },
  },
  {
    name: "a volume marked dirty",
    reason: () => /volume is marked dirty \(\$Volume flags 0x0001\)/,
    damage: (v) => setVolumeInfo(v, (i) => (i[10] |= 1)),
  },
  {
    name: "a volume with chkdsk under way",
    reason: () => /chkdsk is under way on the volume \(\$Volume flags 0x4000\)/,
    damage: (v) => setVolumeInfo(v, (i) => (i[11] |= 0x40)),
  },
  {
    name: "a volume with an unknown flag",
    reason: () => /\$Volume has unknown flags 0x0100/,
    damage: (v) => setVolumeInfo(v, (i) => (i[11] |= 0x01)),
  },
  {
    name: "an NTFS 1.2 volume",
    reason: () => /NTFS version 1\.2 is not handled/,
    damage: (v) => setVolumeInfo(v, (i) => i.set([1, 2], 8)),
  },
  {
    name: "a journal with transactions to replay",
    reason: () =>
      /\$LogFile says the volume was not cleanly shut down \(restart page at byte 0: a client in use, flags 0x0\)/,
    damage: async (v) => {
      const [log] = runsIn(await ntfsInfo(v.image, 2), "$DATA");
      const page = new Uint8Array(4096).fill(0xff);
      const view = new DataView(page.buffer);
      view.setUint32(0, 0x52545352, true); // "RSTR"
      view.setUint16(4, 0x1e, true); // update sequence array
      view.setUint16(6, 9, true);
      view.setUint16(0x1e, 1, true);
      for (let i = 0; i < 8; i++) view.setUint16(i * 512 + 510, 1, true);
      view.setUint32(0x10, 4096, true); // system page size
      view.setUint32(0x14, 4096, true); // log page size
      view.setUint16(0x18, 0x40, true); // restart area
      view.setInt16(0x1a, 1, true);
      view.setInt16(0x1c, 1, true);
      view.setBigUint64(0x40, 0x1234n, true); // current LSN
      view.setUint16(0x48, 1, true); // one client
      view.setUint16(0x4a, 0xffff, true); // none free
      view.setUint16(0x4c, 0, true); // client 0 in use
      view.setUint16(0x4e, 0, true); // not clean
      await patch(v.image, log.lcn * v.clusterSize, page);
    },
  },
  {
    name: "a hibernated Windows (hiberfil.sys begins with HIBR)",
    reason: () =>
      /Windows is hibernated on this volume \(hiberfil\.sys, MFT record \d+, begins with "HIBR"\)/,
    damage: async (v) => {
      const local = join(v.dir, "hiberfil.sys");
      const bytes = new Uint8Array(256 * 1024);
      bytes.set(new TextEncoder().encode("HIBR"));
      await Deno.writeFile(local, bytes);
      await sh("ntfscp", ["-q", v.image, local, "hiberfil.sys"]);
    },
  },
  {
    name: "a $MFTMirr that disagrees with $MFT",
    reason: () => /\$MFTMirr's copy of MFT record 2 differs from \$MFT's/,
    damage: async (v) => {
      const [mirror] = runsIn(await ntfsInfo(v.image, 1), "$DATA");
      const at = mirror.lcn * v.clusterSize + 2 * v.recordSize + 0x08; // LSN
      const [b] = await readAt(v.image, at, 1);
      await patch(v.image, at, Uint8Array.of(b ^ 0xff));
    },
  },
  {
    name: "a data run pointing past the volume",
    reason: async (v) =>
      new RegExp(
        `MFT record ${
          (await keptFile(v)).inode
        } \\$DATA: data run at VCN 0: LCNs \\d+-\\d+ lie outside the volume's 16383 clusters`,
      ),
    damage: async (v) => {
      const at = await recordOffset(v.image, (await keptFile(v)).inode);
      const rec = await readRecord(v.image, at, v.recordSize);
      const data = attributeAt(rec, 0x80);
      assert.strictEqual(rec[data + 8], 1, "the file's $DATA is non-resident");
      const pairs = data + (rec[data + 0x20] | (rec[data + 0x21] << 8));
      const lenBytes = rec[pairs] & 0x0f;
      const offBytes = rec[pairs] >> 4;
      const largest = le(2 ** (8 * offBytes - 1) - 1, offBytes);
      await patchRecord(v.image, at, pairs + 1 + lenBytes, largest);
    },
  },
  {
    name: "an attribute list naming a record that is not in use",
    reason: async (v) => {
      const dump = await ntfsInfo(v.image, `/${v.content.linked}`);
      return new RegExp(
        `MFT record ${
          inodeOf(dump)
        }'s attribute list names record \\d+, which is not in use`,
      );
    },
    damage: async (v) => {
      const dump = await ntfsInfo(v.image, `/${v.content.linked}`);
      const inode = inodeOf(dump);
      const other = [...dump.matchAll(/MFT reference:\s+(\d+)/g)]
        .map((m) => Number(m[1])).find((n) => n !== inode);
      assert.ok(other !== undefined, "the attribute list names an extension");
      const at = await recordOffset(v.image, other);
      const rec = await readRecord(v.image, at, v.recordSize);
      await patchRecord(v.image, at, 0x16, Uint8Array.of(rec[0x16] & ~1, 0));
    },
  },
  {
    name: "a boot sector counting more sectors than the partition holds",
    reason: () =>
      /volume of 131172 sectors \(67160064 bytes\) does not fit its partition of 67108864 bytes/,
    damage: (v) => patch(v.image, 0x28, le(SIZE / 512 + 100, 8)),
  },
  {
    name: "a boot sector counting fewer sectors than $Bitmap describes",
    reason: () =>
      /\$Bitmap calls cluster \d+ free, past the volume's 16255 clusters/,
    damage: (v) => patch(v.image, 0x28, le(SIZE / 512 - 1 - 1024, 8)),
  },
  {
    name: "a boot sector with 3 sectors per cluster",
    reason: () => /boot sector sectors per cluster 3 gives no cluster size/,
    damage: (v) => patch(v.image, 0x0d, Uint8Array.of(3)),
  },
  {
    name: "a boot sector pointing $MFT at another cluster",
    reason: () => /MFT record 0 \(in use\) says it is record 4/,
    damage: async (v) => {
      const [mft] = runsIn(await ntfsInfo(v.image, 0), "$DATA");
      await patch(v.image, 0x30, le(mft.lcn + 1, 8));
    },
  },
  {
    name: "a boot sector pointing $MFTMirr at another cluster",
    reason: () =>
      /\$MFTMirr data starts at LCN 8191, the boot sector says 8190/,
    damage: (v) => patch(v.image, 0x38, le(8190, 8)),
  },
];

ntfsTest(
  "convert --sparsify leaves damaged, unclean and hostile NTFS volumes as they are",
  ["qemu-img"],
  async (t) => {
    await using dir = await tempDir();
    const base = join(dir.path, "base.img");
    const content = await makeNtfs(base, SIZE, { seed: 13, bytes: 24 * MiB });
    const { clusterSize, recordSize } = await ntfsGeometry(base);
    // The undamaged volume is mapped: what the cases change is what stops it.
    {
      const r = await runCli([
        "convert",
        "--sparsify",
        base,
        join(dir.path, "ok.qcow2"),
      ]);
      assert.strictEqual(r.code, 0, r.stderr);
      assert.match(r.stderr, /: ntfs \(.*\): [\d.]+ MiB free, dropped\n/);
    }
    for (const c of CASES) {
      await t.step(c.name, async () => {
        const caseDir = join(dir.path, c.name.replace(/\W+/g, "-"));
        await Deno.mkdir(caseDir);
        const image = join(caseDir, "ntfs.img");
        await Deno.copyFile(base, image);
        const v = { image, dir: caseDir, content, clusterSize, recordSize };
        const reason = await c.reason(v);
        await c.damage(v);
        await expectUntouched(caseDir, image, reason, "ntfs");
        await Deno.remove(caseDir, { recursive: true });
      });
    }
  },
);
