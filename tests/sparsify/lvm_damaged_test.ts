// The LVM2 module against damaged and hostile PVs, and against the kinds of
// LV it does not read. Real PVs (pvcreate on a loop device, metadata by
// vgcfgrestore) are edited as an attacker who has read the module would:
// label and metadata area fields with their CRCs recomputed, metadata text
// rewritten with its CRC recomputed (overlapping segments, extents past the
// PV's end, huge numbers, deep nesting, unknown kinds, ...). Each must be
// left exactly as it is, with its reason in the report. LVM2's own
// snapshots, thin pools and RAID volumes keep the whole PV; a VG over two
// PVs keeps the LV that spans them and maps the rest; metadata that wraps
// around its area's end, and two metadata areas, are read.

import assert from "node:assert";
import { join } from "node:path";
import { tempDir } from "../_qemu.ts";
import { FileSource } from "../../lib/host/file_source.ts";
import { mapFreeSpace } from "../../lib/sparsify/map.ts";
import type { FreeRange, RegionReport } from "../../lib/sparsify/report.ts";
import {
  blank,
  debugfsRm,
  dumpe2fsFree,
  fillNoise,
  merge,
  MiB,
  mkfs,
  patch,
  populate,
  readAt,
  sfdiskParts,
  sh,
} from "./_disks.ts";
import {
  fixLabelCrc,
  fixMdaCrc,
  LvmSession,
  lvmTest,
  lvToDisk,
  type PvAreas,
  pvAreas,
  type PvInfo,
  readMetadataText,
  type VgSpec,
  vgText,
  writeLv,
  writeMetadataText,
} from "./_lvm.ts";

const TOOLS = ["mke2fs", "debugfs", "dumpe2fs", "sfdisk"];

/** Writes an ext4 with files, part deleted, into `lv`; returns its free ranges on the disk. */
async function ext4Lv(
  dir: string,
  disk: string,
  vg: VgSpec,
  name: string,
  seed: number,
): Promise<FreeRange[]> {
  const lv = vg.lvs.find((l) => l.name === name)!;
  const length = lv.segments!.reduce((n, s) => n + s.count, 0) *
    vg.extentBytes;
  const tree = join(dir, `tree-${name}`);
  const files = await populate(tree, seed, length / 3);
  const img = join(dir, `${name}.img`);
  await mkfs(img, length, ["-t", "ext4"], tree);
  await debugfsRm(img, files.filter((_, i) => i % 2 === 1));
  await writeLv(disk, vg, lv, img);
  const free = lvToDisk(vg, lv, await dumpe2fsFree(img));
  await Deno.remove(img);
  await Deno.remove(tree, { recursive: true });
  return free;
}

/** A bare 64 MiB PV (1 MiB extents) with two ext4 LVs, one in two segments. */
interface Base {
  path: string;
  vg: VgSpec;
  pv: PvInfo;
  areas: PvAreas;
  free: FreeRange[];
}

async function makeBase(
  dir: string,
  pvArgs: string[] = [],
): Promise<Base> {
  const path = join(dir, "base.img");
  await blank(path, 64 * MiB);
  await fillNoise(path, 0, 64 * MiB, 9);
  let vg: VgSpec;
  let pv: PvInfo;
  const free: FreeRange[] = [];
  {
    await using lvm = new LvmSession();
    const dev = await lvm.attach(path, 0, 64 * MiB);
    pv = await lvm.pv(dev, 0, "pv0", MiB, pvArgs);
    vg = {
      name: `vgbase${Date.now() % 100000}`,
      id: "vgvgvg-aaaa-bbbb-cccc-dddd-eeee-ffffff",
      seqno: 1,
      extentBytes: MiB,
      pvs: [pv],
      lvs: [
        { name: "a", segments: [{ pv: "pv0", pe: 4, count: 8 }] },
        {
          name: "b",
          segments: [{ pv: "pv0", pe: 30, count: 4 }, {
            pv: "pv0",
            pe: 20,
            count: 4,
          }],
        },
      ],
    };
    await lvm.restore(vg);
    free.push(...await lvm.freeExtents(pv, MiB));
  }
  free.push(...await ext4Lv(dir, path, vg, "a", 1));
  free.push(...await ext4Lv(dir, path, vg, "b", 2));
  return { path, vg, pv, areas: await pvAreas(path, 0), free: merge(free) };
}

async function mapOf(path: string) {
  await using src = await FileSource.open(path);
  const map = await mapFreeSpace(src);
  return { report: map.report, ranges: await Array.fromAsync(map.ranges()) };
}

/** The PV's report line, which must be the only region of a bare disk. */
async function pvReport(path: string): Promise<RegionReport> {
  const { report, ranges } = await mapOf(path);
  const [region] = report.regions;
  if (region.status === "untouched") {
    assert.deepStrictEqual(ranges, [], "nothing dropped when untouched");
    assert.strictEqual(report.freeBytes, 0);
  }
  return region;
}

function u64(v: number): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(v), true);
  return b;
}

function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, true);
  return b;
}

lvmTest(
  "a real PV is mapped exactly; every hostile edit of its label, metadata areas or metadata text (CRCs recomputed) leaves it as it is, saying why",
  TOOLS,
  async (t) => {
    await using dir = await tempDir();
    const base = await makeBase(dir.path);
    const { vg, pv, areas } = base;
    const [mda] = areas.mdas;
    {
      const region = await pvReport(base.path);
      assert.strictEqual(region.status, "mapped", region.reason);
      assert.deepStrictEqual((await mapOf(base.path)).ranges, base.free);
    }
    const text = vgText(vg);
    let n = 0;
    /** A copy of the base, edited by `edit`, must be refused with `reason`. */
    const refused = (
      name: string,
      edit: (path: string) => Promise<void>,
      reason: RegExp,
    ) =>
      t.step(name, async () => {
        const path = join(dir.path, `v${n++}.img`);
        await Deno.copyFile(base.path, path);
        await edit(path);
        const region = await pvReport(path);
        assert.strictEqual(region.status, "untouched");
        assert.strictEqual(region.found, "LVM2 PV");
        assert.match(region.reason!, reason);
        await Deno.remove(path);
      });
    const withText = (replace: (t: string) => string) => (path: string) =>
      writeMetadataText(path, mda, replace(text));

    // The attacker's writer is right: LVM2 reads what it writes.
    await t.step(
      "LVM2 reads metadata written by the test's writer",
      async () => {
        const path = join(dir.path, "writer.img");
        await Deno.copyFile(base.path, path);
        await writeMetadataText(
          path,
          mda,
          text.replace("\na {", "\nrenamed {").replace(
            /seqno = \d+/,
            "seqno = 40",
          ),
          9 * 512,
        );
        {
          await using lvm = new LvmSession();
          await lvm.attach(path, 0, 64 * MiB);
          const segs = await lvm.lvSegments(vg.name);
          assert.deepStrictEqual(Object.keys(segs).sort(), ["b", "renamed"]);
        }
        const region = await pvReport(path);
        assert.strictEqual(region.status, "mapped", region.reason);
        assert.deepStrictEqual(
          region.volumes!.map((v) => v.name),
          [`${vg.name}/renamed`, `${vg.name}/b`],
        );
        await Deno.remove(path);
      },
    );

    // The label.
    await refused(
      "label CRC not recomputed",
      (p) => patch(p, areas.label + 40, Uint8Array.of(0x41)),
      /label CRC 0x[0-9a-f]+ does not match its contents/,
    );
    await refused("label sector number", async (p) => {
      await patch(p, areas.label + 8, u64(3));
      await fixLabelCrc(p, areas.label);
    }, /LVM2 label in sector 1 says it is in sector 3/);
    await refused(
      "label device size past the disk",
      async (p) => {
        await patch(p, areas.label + 64, u64(128 * MiB));
        await fixLabelCrc(p, areas.label);
      },
      /device holds 134217728 bytes, the region 67108864: truncated|past the end of the region/,
    );
    await refused("label data area after pe_start", async (p) => {
      await patch(p, areas.label + 72, u64(pv.peStart + MiB));
      await fixLabelCrc(p, areas.label);
    }, /lie outside the data area the PV header names/);
    await refused("label UUID of another PV", async (p) => {
      await patch(p, areas.label + 32, new TextEncoder().encode("X"));
      await fixLabelCrc(p, areas.label);
    }, /this PV \(UUID X.*\) is not among VG vgbase\d+'s PVs/);
    await refused("a second label in sector 2", async (p) => {
      await patch(p, areas.label + 512, await readAt(p, areas.label, 512));
    }, /LVM2 labels in sectors 1 and 2/);
    await refused("label extension with an unknown flag", async (p) => {
      // After the UUID, the size, the data area and metadata area lists.
      const at = areas.label + 32 + 32 + 8 + 32 + 32;
      await patch(p, at + 4, u32(0x80));
      await fixLabelCrc(p, areas.label);
    }, /PV header extension has unknown flags 0x80/);
    await refused("no metadata area listed", async (p) => {
      await patch(p, areas.label + 104, new Uint8Array(16));
      await fixLabelCrc(p, areas.label);
    }, /no metadata area: its VG's metadata is on other PVs/);

    // The metadata area header.
    await refused(
      "metadata area header CRC not recomputed",
      (p) => patch(p, mda.offset + 20, u32(2)),
      /metadata area 1 header CRC 0x[0-9a-f]+ does not match its contents/,
    );
    await refused("metadata area header version 2", async (p) => {
      await patch(p, mda.offset + 20, u32(2));
      await fixMdaCrc(p, mda.offset);
    }, /metadata area 1 header version 2 is not 1/);
    await refused("metadata area header start moved", async (p) => {
      await patch(p, mda.offset + 24, u64(8192));
      await fixMdaCrc(p, mda.offset);
    }, /metadata area 1 header says \d+ bytes at byte 8192, the PV header/);
    await refused("uncommitted metadata in slot 1", async (p) => {
      await patch(p, mda.offset + 64, await readAt(p, mda.offset + 40, 24));
      await fixMdaCrc(p, mda.offset);
    }, /written but not committed/);
    await refused("text larger than the area", async (p) => {
      await patch(p, mda.offset + 48, u64(mda.size));
      await fixMdaCrc(p, mda.offset);
    }, /text size \d+ does not fit the area's buffer/);
    await refused("text offset past the area", async (p) => {
      await patch(p, mda.offset + 40, u64(mda.size + 512));
      await fixMdaCrc(p, mda.offset);
    }, /text offset \d+ lies outside the area's buffer/);
    await refused("unknown raw location flag", async (p) => {
      await patch(p, mda.offset + 60, u32(4));
      await fixMdaCrc(p, mda.offset);
    }, /text has unknown flags 0x4/);
    await refused("every metadata area ignored", async (p) => {
      await patch(p, mda.offset + 60, u32(1));
      await fixMdaCrc(p, mda.offset);
    }, /marked ignored/);
    await refused("text edited, its CRC not recomputed", async (p) => {
      await writeMetadataText(p, mda, text);
      const h = await readAt(p, mda.offset + 40, 8);
      const at = Number(new DataView(h.buffer).getBigUint64(0, true));
      await patch(p, mda.offset + at + 10, new TextEncoder().encode("Z"));
    }, /metadata area 1 text CRC 0x[0-9a-f]+ does not match its header's/);

    // The metadata text, CRCs recomputed.
    const seg = (lv: string, k: number) =>
      new RegExp(
        `(\\n${lv} \\{[^]*?segment${k} \\{[^]*?)stripes = \\[\\n"pv0", (\\d+)`,
      );
    await refused(
      "overlapping segments",
      withText((t) => t.replace(seg("b", 2), '$1stripes = [\n"pv0", 10')),
      /LV vgbase\d+\/a segment 1 and LV vgbase\d+\/b segment 2 both use extents 10-11 of PV pv0/,
    );
    await refused(
      "extents past the PV's end",
      withText((t) =>
        t.replace(seg("b", 1), `$1stripes = [\n"pv0", ${pv.peCount - 2}`)
      ),
      new RegExp(
        `segment 1 uses extents ${pv.peCount - 2}-${
          pv.peCount + 1
        } of PV pv0, which has ${pv.peCount} extents`,
      ),
    );
    await refused(
      "a huge number",
      withText((t) =>
        t.replace("extent_count = 8", "extent_count = 184467440737095516160")
      ),
      /integer 184467440737095516160 is out of range/,
    );
    await refused(
      "an extent count just past 2^53",
      withText((t) =>
        t.replace("pe_count = ", "pe_count = 9007199254740993 #")
      ),
      /integer 9007199254740993 is out of range/,
    );
    await refused(
      "sections nested 10000 deep",
      withText((t) =>
        t.replace(
          "\n}\n# written",
          "\n" + "x {\n".repeat(10000) + "}\n".repeat(10000) + "}\n# written",
        )
      ),
      /sections nest deeper than 8/,
    );
    await refused(
      "a list of a million items",
      withText((t) =>
        t.replace("flags = []", `tags = [${"1,".repeat(300000)}1]\nflags = []`)
      ),
      /more than 262144 keys and list items/,
    );
    await refused(
      "segment_count larger than the segments",
      withText((t) => t.replace("segment_count = 2", "segment_count = 3")),
      /metadata vgbase\d+\/logical_volumes\/b: segment3 is missing, not a section/,
    );
    await refused(
      "a segment left out of segment_count",
      withText((t) => t.replace("segment_count = 2", "segment_count = 1")),
      /LV vgbase\d+\/b has 2 sections, its segment_count is 1/,
    );
    await refused(
      "segments that leave a gap",
      withText((t) => t.replace("start_extent = 4", "start_extent = 5")),
      /LV vgbase\d+\/b segment 2 starts at extent 5, not 4: segments leave a gap/,
    );
    await refused(
      "an unknown segment type",
      withText((t) => t.replace('type = "striped"', 'type = "frobnicated"')),
      /LV vgbase\d+\/a is a volume of an unknown kind \(segment 1 type "frobnicated"\)/,
    );
    await refused(
      "a stripe on an LV (pvmove)",
      withText((t) => t.replace('"pv0", 4', '"pvmove0", 4')),
      /LV vgbase\d+\/a segment 1 names "pvmove0", which is not a PV of the VG/,
    );
    await refused(
      "an LV being moved",
      withText((t) => t.replace('"VISIBLE"]', '"VISIBLE", "LOCKED"]')),
      /LV vgbase\d+\/a is being moved \(status LOCKED\)/,
    );
    await refused(
      "an LV striped over two stripes",
      withText((t) =>
        t.replace(
          'stripe_count = 1\nstripes = [\n"pv0", 4',
          'stripe_count = 2\nstripe_size = 128\nstripes = [\n"pv0", 40, "pv0", 4',
        )
      ),
      /LV vgbase\d+\/a is striped over 2 stripes \(segment 1\)/,
    );
    await refused(
      "pe_start inside the metadata area",
      withText((t) => t.replace(/pe_start = \d+/, "pe_start = 16")),
      /lie outside the data area|overlap a metadata area/,
    );
    await refused(
      "dev_size past the disk",
      withText((t) => t.replace(/dev_size = \d+/, "dev_size = 1048576")),
      /dev_size 1048576\), the region 67108864: truncated/,
    );
    await refused(
      "pe_count past the device",
      withText((t) => t.replace(/pe_count = \d+/, "pe_count = 200")),
      /200 extents from byte \d+ end at byte \d+, past the device's/,
    );
    await refused(
      "extent_size past the device",
      withText((t) => t.replace("extent_size = 2048", "extent_size = 2097152")),
      /past the device's/,
    );
    await refused(
      "this PV marked missing",
      withText((t) =>
        t.replace(
          'status = ["ALLOCATABLE"]\nflags = []',
          'status = ["ALLOCATABLE"]\nflags = ["MISSING"]',
        )
      ),
      /marks this PV \(pv0\) missing/,
    );
    await refused(
      "a key given twice",
      withText((t) => t.replace("seqno = 1", "seqno = 1\nseqno = 2")),
      /seqno is given twice/,
    );
    await refused(
      "two volume groups",
      withText((t) => t + "other {\nseqno = 1\n}\n"),
      /metadata text holds 2 sections, not one volume group/,
    );
    await refused(
      "an unclosed string",
      withText((t) => t + 'comment = "open\n'),
      /a string is not closed/,
    );
    await refused(
      "a float",
      withText((t) => t.replace("version = 1", "version = 1.0")),
      /"1\." is not an integer/,
    );
    await refused(
      "a NUL in the text",
      withText((t) => t.replace("max_lv", "max\0lv")),
      /holds a NUL byte before its end/,
    );
    await refused(
      "an unknown VG status word",
      withText((t) => t.replace('"RESIZEABLE"', '"RESIZEABLE", "FROZEN"')),
      /VG vgbase\d+ status has unknown word "FROZEN"/,
    );
    await refused(
      "text that is not UTF-8",
      (p) =>
        writeMetadataText(
          p,
          mda,
          Uint8Array.of(...new TextEncoder().encode(text), 0xff, 0xfe),
        ),
      /text is not UTF-8/,
    );
  },
);

lvmTest(
  "snapshots, thin pools and RAID volumes that LVM2 writes keep the whole PV as it is",
  TOOLS,
  async (t) => {
    await using dir = await tempDir();
    const base = await makeBase(dir.path);
    const { vg } = base;
    const raw = (body: string) =>
      `status = ["READ", "WRITE", "VISIBLE"]\nflags = []\ncreation_host = "test"\ncreation_time = 1700000000\nsegment_count = 1\n${body}`;
    const hidden = (pe: number, count: number) =>
      `status = ["READ", "WRITE"]\nflags = []\ncreation_host = "test"\ncreation_time = 1700000000\nsegment_count = 1\nsegment1 {\nstart_extent = 0\nextent_count = ${count}\ntype = "striped"\nstripe_count = 1\nstripes = ["pv0", ${pe}]\n}`;
    const cases: Array<[string, VgSpec["lvs"], boolean, RegExp]> = [
      [
        "an old-style snapshot of LV a",
        [{ name: "snap", raw: hidden(40, 2) }, {
          name: "snapshot0",
          raw: raw(
            'segment1 {\nstart_extent = 0\nextent_count = 8\ntype = "snapshot"\nchunk_size = 8\norigin = "a"\ncow_store = "snap"\n}',
          ),
        }],
        false,
        /LV vgbase\d+\/snapshot0 is a snapshot \(segment 1 type "snapshot"\)/,
      ],
      [
        "a thin pool",
        [{ name: "pool_tmeta", raw: hidden(40, 1) }, {
          name: "pool_tdata",
          raw: hidden(41, 4),
        }, {
          name: "pool",
          raw: raw(
            'segment1 {\nstart_extent = 0\nextent_count = 4\ntype = "thin-pool"\nmetadata = "pool_tmeta"\npool = "pool_tdata"\ntransaction_id = 0\nchunk_size = 128\ndiscards = "passdown"\nzero_new_blocks = 1\n}',
          ),
        }],
        true,
        /LV vgbase\d+\/pool is a thin pool \(segment 1 type "thin-pool"\)/,
      ],
      [
        "a RAID1 volume",
        [
          { name: "r_rmeta_0", raw: hidden(40, 1) },
          { name: "r_rimage_0", raw: hidden(41, 2) },
          { name: "r_rmeta_1", raw: hidden(43, 1) },
          { name: "r_rimage_1", raw: hidden(44, 2) },
          {
            name: "r",
            raw: raw(
              'segment1 {\nstart_extent = 0\nextent_count = 2\ntype = "raid1"\ndevice_count = 2\nregion_size = 1024\nraids = ["r_rmeta_0", "r_rimage_0", "r_rmeta_1", "r_rimage_1"]\n}',
            ),
          },
        ],
        true,
        /LV vgbase\d+\/r is a RAID volume \(segment 1 type "raid1"\)/,
      ],
    ];
    for (const [name, extra, force, reason] of cases) {
      await t.step(name, async () => {
        const path = join(dir.path, "kind.img");
        await Deno.copyFile(base.path, path);
        const spec = { ...vg, seqno: 5, lvs: [...vg.lvs, ...extra] };
        {
          await using lvm = new LvmSession();
          const dev = await lvm.attach(path, 0, 64 * MiB);
          await lvm.restore(
            { ...spec, pvs: [{ ...base.pv, device: dev }] },
            force,
          );
          // LVM2 took it (this is its own metadata now).
          assert.ok(
            Object.keys(await lvm.lvSegments(vg.name)).length > 2,
          );
        }
        const region = await pvReport(path);
        assert.strictEqual(region.status, "untouched");
        assert.match(region.reason!, reason);
      });
    }
  },
);

lvmTest(
  "metadata that wraps around the end of its area is read (LVM2 writes it so), and two metadata areas must agree",
  TOOLS,
  async (t) => {
    await using dir = await tempDir();
    await t.step("wrapping text", async () => {
      const path = join(dir.path, "wrap.img");
      await blank(path, 32 * MiB);
      await fillNoise(path, 0, 32 * MiB, 9);
      let vg: VgSpec;
      let wrapped = false;
      const free: FreeRange[] = [];
      {
        await using lvm = new LvmSession();
        const dev = await lvm.attach(path, 0, 32 * MiB);
        const pv = await lvm.pv(dev, 0, "pv0", MiB, [
          "--metadatasize",
          "8k",
          "--dataalignment",
          "64k",
        ]);
        const tags = Array.from(
          { length: 50 },
          (_, i) => `"t${i}${"x".repeat(100)}"`,
        ).join(", ");
        vg = {
          name: `vgwrap${Date.now() % 100000}`,
          id: "vgvgvg-aaaa-bbbb-cccc-dddd-eeee-ffffff",
          seqno: 1,
          extentBytes: MiB,
          pvs: [pv],
          lvs: [{ name: "a", segments: [{ pv: "pv0", pe: 3, count: 8 }] }],
          extra: `tags = [${tags}]`,
        };
        const [mda] = (await pvAreas(path, 0)).mdas;
        // LVM2 writes each new version after the last, wrapping at the end.
        for (let s = 1; s < 40 && !wrapped; s++) {
          await lvm.restore({ ...vg, seqno: s });
          const h = await readAt(path, mda.offset + 40, 16);
          const v = new DataView(h.buffer);
          const offset = Number(v.getBigUint64(0, true));
          const size = Number(v.getBigUint64(8, true));
          wrapped = offset + size > mda.size;
        }
        assert.ok(wrapped, "LVM2 wrote a text that wraps");
        free.push(...await lvm.freeExtents(pv, MiB));
      }
      free.push(...await ext4Lv(dir.path, path, vg, "a", 3));
      const { report, ranges } = await mapOf(path);
      assert.strictEqual(
        report.regions[0].status,
        "mapped",
        report.regions[0].reason,
      );
      assert.deepStrictEqual(ranges, merge(free));
    });

    await t.step("two metadata areas", async () => {
      const base = await makeBase(join(dir.path), ["--pvmetadatacopies", "2"]);
      assert.strictEqual(base.areas.mdas.length, 2);
      {
        const { report, ranges } = await mapOf(base.path);
        assert.strictEqual(
          report.regions[0].status,
          "mapped",
          report.regions[0].reason,
        );
        assert.deepStrictEqual(ranges, base.free);
        // The second area, after the last extent, is kept.
        const [, second] = base.areas.mdas;
        assert.ok(ranges.every((r) => r.offset + r.length <= second.offset));
      }
      const [, second] = base.areas.mdas;
      const text = await readMetadataText(base.path, second);
      const seqno = Number(/seqno = (\d+)/.exec(text)![1]);
      const path = join(dir.path, "two.img");
      for (
        const [name, edited, reason] of [
          [
            "another seqno",
            text.replace(/seqno = \d+/, `seqno = ${seqno + 1}`),
            new RegExp(
              `metadata areas 1 and 2 hold seqno ${seqno} and ${seqno + 1}`,
            ),
          ],
          [
            "another text, same seqno",
            text.replace("\na {", "\nz {"),
            new RegExp(
              `metadata areas 1 and 2 hold different texts for seqno ${seqno}`,
            ),
          ],
        ] as const
      ) {
        await Deno.copyFile(base.path, path);
        await writeMetadataText(path, second, edited);
        const region = await pvReport(path);
        assert.strictEqual(region.status, "untouched", name);
        assert.match(region.reason!, reason);
      }
    });
  },
);

lvmTest(
  "a VG over two PVs on one GPT disk: an LV on both is kept on both, the LVs on one PV and the free extents are mapped",
  TOOLS,
  async () => {
    await using dir = await tempDir();
    const path = join(dir.path, "twopv.img");
    await blank(path, 128 * MiB);
    await sh("sfdisk", ["-q", path], {
      stdin:
        "label: gpt\n,60M,E6D6D379-F507-44C2-A23C-238F2A3DF928\n,,E6D6D379-F507-44C2-A23C-238F2A3DF928\n",
    });
    const parts = await sfdiskParts(path);
    for (const p of parts) await fillNoise(path, p.offset, p.length, 9);
    let vg: VgSpec;
    const free: FreeRange[] = [];
    {
      await using lvm = new LvmSession();
      const d0 = await lvm.attach(path, parts[0].offset, parts[0].length);
      const d1 = await lvm.attach(path, parts[1].offset, parts[1].length);
      const pv0 = await lvm.pv(d0, parts[0].offset, "pv0", MiB);
      const pv1 = await lvm.pv(d1, parts[1].offset, "pv1", MiB);
      vg = {
        name: `vgtwo${Date.now() % 100000}`,
        id: "vgvgvg-aaaa-bbbb-cccc-dddd-eeee-ffffff",
        seqno: 1,
        extentBytes: MiB,
        pvs: [pv0, pv1],
        lvs: [
          { name: "one", segments: [{ pv: "pv0", pe: 2, count: 12 }] },
          { name: "two", segments: [{ pv: "pv1", pe: 5, count: 12 }] },
          {
            name: "span",
            segments: [{ pv: "pv0", pe: 20, count: 8 }, {
              pv: "pv1",
              pe: 30,
              count: 8,
            }],
          },
          { name: "empty", segments: [{ pv: "pv1", pe: 40, count: 4 }] },
        ],
      };
      await lvm.restore(vg);
      free.push(...await lvm.freeExtents(pv0, MiB));
      free.push(...await lvm.freeExtents(pv1, MiB));
    }
    free.push(...await ext4Lv(dir.path, path, vg, "one", 4));
    free.push(...await ext4Lv(dir.path, path, vg, "two", 5));
    // span holds an ext4 too: none of it may be dropped.
    await ext4Lv(dir.path, path, vg, "span", 6);
    const { report, ranges } = await mapOf(path);
    assert.deepStrictEqual(ranges, merge(free));
    const lines = report.regions.map((r) => [
      r.status,
      r.volumes!.map((v) =>
        `${v.name.split("/")[1]}: ${v.status} ${v.found}${
          v.reason ? `, ${v.reason}` : ""
        }`
      ),
    ]);
    assert.deepStrictEqual(lines, [
      ["mapped", [
        "one: mapped ext4",
        "span: untouched not read, 8 of its 16 extents lie on other PVs (pv1): its extents here are copied as they are",
      ]],
      ["mapped", [
        "two: mapped ext4",
        "span: untouched not read, 8 of its 16 extents lie on other PVs (pv0): its extents here are copied as they are",
        "empty: untouched unknown, no filesystem that --sparsify handles was found",
      ]],
    ]);
  },
);
