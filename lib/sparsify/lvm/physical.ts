/**
 * Reads an LVM2 physical volume from a region: the label, every metadata
 * area's header and committed text (CRCs checked, a text that wraps
 * around the area's end joined), the text parsed into the volume group,
 * and the layout of this PV's extents. Two metadata areas must hold the
 * same text.
 *
 * @module
 */

import { Refusal, type RegionReader } from "../_region.ts";
import { parseLvmConfig } from "./config.ts";
import { planPv, type PvLayout } from "./layout.ts";
import {
  LABEL_SCAN_SECTORS,
  labelSectors,
  LVM_SECTOR,
  lvmCrc,
  parsePvLabel,
  type PvLabel,
} from "./label.ts";
import { MDA_HEADER_SIZE, parseMdaHeader } from "./mda.ts";
import { readVolumeGroup, type VolumeGroup } from "./metadata.ts";

/** A physical volume, read and checked. */
export interface PhysicalVolume {
  label: PvLabel;
  vg: VolumeGroup;
  layout: PvLayout;
  /** SHA-256 of every byte read (label, area headers, texts), hexadecimal. */
  digest: string;
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** Reads one metadata area's committed text, or undefined when it is ignored. */
async function readArea(
  region: RegionReader,
  label: PvLabel,
  n: number,
  kept: Uint8Array[],
): Promise<Uint8Array | undefined> {
  const area = label.metadataAreas[n];
  const which = `metadata area ${n + 1}`;
  const floor = LABEL_SCAN_SECTORS * LVM_SECTOR;
  if (
    area.offset < floor || area.size < 2 * MDA_HEADER_SIZE ||
    area.offset + area.size > label.deviceSize
  ) {
    throw new Refusal(
      `${which} (${area.size} bytes at byte ${area.offset}) does not lie between the label sectors and the end of the device (${label.deviceSize} bytes)`,
    );
  }
  const head = await region.read(
    area.offset,
    MDA_HEADER_SIZE,
    `${which} header`,
  );
  kept.push(head);
  const mda = parseMdaHeader(head, area.offset, area.size, which);
  if (!mda.text) return undefined;
  const text = new Uint8Array(mda.text.size);
  let at = 0;
  let crc: number | undefined;
  for (const p of mda.text.pieces) {
    const piece = await region.read(
      area.offset + p.offset,
      p.length,
      `${which} text`,
    );
    text.set(piece, at);
    at += piece.length;
    crc = lvmCrc(piece, crc);
  }
  if (crc !== mda.text.checksum) {
    throw new Refusal(
      `${which} text CRC 0x${
        crc!.toString(16).padStart(8, "0")
      } does not match its header's 0x${
        mda.text.checksum.toString(16).padStart(8, "0")
      }`,
    );
  }
  kept.push(text);
  return text;
}

/** Decodes and parses a metadata text (its one trailing NUL dropped). */
function volumeGroupOf(text: Uint8Array, which: string): VolumeGroup {
  const body = text.at(-1) === 0 ? text.subarray(0, -1) : text;
  if (body.includes(0)) {
    throw new Refusal(`${which} text holds a NUL byte before its end`);
  }
  let decoded: string;
  try {
    decoded = utf8.decode(body);
  } catch {
    throw new Refusal(`${which} text is not UTF-8`);
  }
  return readVolumeGroup(parseLvmConfig(decoded));
}

/**
 * Reads and checks the PV in `region`.
 *
 * @param region The PV (a partition or a whole disk).
 * @returns The PV.
 * @throws {Refusal} When any structure is missing, damaged, inconsistent
 * or not handled (see the label, area, metadata and layout checks).
 */
export async function readPhysicalVolume(
  region: RegionReader,
): Promise<PhysicalVolume> {
  const sectors = await region.read(
    0,
    LABEL_SCAN_SECTORS * LVM_SECTOR,
    "LVM2 label sectors",
  );
  const found = labelSectors(sectors);
  if (found.length !== 1) {
    throw new Refusal(
      found.length === 0
        ? "no LVM2 label in the first four sectors"
        : `LVM2 labels in sectors ${
          found.join(" and ")
        }: which one counts is not clear`,
    );
  }
  const s = found[0];
  const labelBytes = sectors.subarray(s * LVM_SECTOR, (s + 1) * LVM_SECTOR);
  const label = parsePvLabel(labelBytes, s);
  if (label.metadataAreas.length === 0) {
    throw new Refusal(
      "the PV has no metadata area: its VG's metadata is on other PVs",
    );
  }
  const kept: Uint8Array[] = [labelBytes];
  const texts: Array<{ text: Uint8Array; which: string }> = [];
  for (let n = 0; n < label.metadataAreas.length; n++) {
    const text = await readArea(region, label, n, kept);
    if (text) texts.push({ text, which: `metadata area ${n + 1}` });
  }
  if (label.metadataAreas.length === 2) {
    const [a, b] = label.metadataAreas;
    if (a.offset < b.offset + b.size && b.offset < a.offset + a.size) {
      throw new Refusal("the PV's two metadata areas overlap");
    }
  }
  if (texts.length === 0) {
    throw new Refusal(
      "every metadata area of the PV is marked ignored: its VG's metadata is kept on other PVs",
    );
  }
  const groups = texts.map(({ text, which }) => volumeGroupOf(text, which));
  if (texts.length === 2) {
    const [a, b] = groups;
    if (a.seqno !== b.seqno) {
      throw new Refusal(
        `metadata areas 1 and 2 hold seqno ${a.seqno} and ${b.seqno}`,
      );
    }
    const [x, y] = texts.map((t) => t.text);
    if (x.length !== y.length || x.some((v, i) => v !== y[i])) {
      throw new Refusal(
        `metadata areas 1 and 2 hold different texts for seqno ${a.seqno}`,
      );
    }
  }
  const vg = groups[0];
  const layout = planPv(label, vg, region.length);
  return { label, vg, layout, digest: await digestOf(kept) };
}

async function digestOf(parts: Uint8Array[]): Promise<string> {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const all = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return [...d].map((b) => b.toString(16).padStart(2, "0")).join("");
}
