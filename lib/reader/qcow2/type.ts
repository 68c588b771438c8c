/**
 * The qcow2 image type: opening a qcow2 file (header, external data file,
 * backing file, snapshot) for what it is opened for.
 *
 * @module
 */

import { Qcow2Error } from "../../format/errors.ts";
import { backingFormat, dataFileName } from "../../format/header.ts";
import { INCOMPAT } from "../../format/constants.ts";
import type { SnapshotEntry } from "../../format/snapshot.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import type { GuestImage } from "../image.ts";
import type { ImageType, OpenContext, OpenedDataFile } from "../image_type.ts";
import { readHeader } from "./header.ts";
import { Qcow2Image } from "./image.ts";
import { readSnapshotTable } from "./snapshots.ts";

/**
 * Opens a qcow2 image: reads its header (as QEMU inspects it, unless it is
 * read), follows its external data file and backing file through the
 * walk, and selects the snapshot asked for.
 *
 * @example Open an image written by the forward pipeline
 * ```ts
 * import assert from "node:assert";
 * import { openImage } from "../open.ts";
 * import { convertToBytes } from "../../writer/qcow2_writer.ts";
 * await using image = await openImage(await convertToBytes(new Uint8Array(512)), { format: "qcow2" });
 * assert.strictEqual(image.format, "qcow2");
 * ```
 */
export const qcow2Type: ImageType = {
  name: "qcow2",
  open: openQcow2,
};

async function openQcow2(
  source: RandomAccessSource,
  context: OpenContext,
): Promise<GuestImage> {
  const reading = context.purpose === "read";
  const header = await readHeader(source, {
    inspection: !reading,
    check: context.check,
  });
  let dataFile: OpenedDataFile | undefined;
  let backing: GuestImage | undefined;
  try {
    if (
      context.purpose !== "describe" &&
      (header.incompatibleFeatures & INCOMPAT.DATA_FILE) !== 0n
    ) {
      const name = dataFileName(header);
      if (name === undefined) {
        throw new Qcow2Error(
          "UNSUPPORTED_FEATURE",
          "Cannot open image: the external data file bit is set but no data file name is stored",
          { field: "incompatible_features", offset: 72 },
        );
      }
      dataFile = await context.dataFile(name);
    }
    if (header.backingFile !== undefined && header.backingFile !== "") {
      backing = await context.backing(
        header.backingFile,
        backingFormat(header),
      );
    }
    // An inspected image's snapshots are read when it is described.
    const snapshots = reading
      ? (await readSnapshotTable(source, header)).entries
      : undefined;
    let snapshot: SnapshotEntry | undefined;
    if (context.snapshot !== undefined) {
      const want = context.snapshot;
      const all = snapshots ?? [];
      snapshot = all.find((s) => s.id === want) ??
        all.find((s) => s.name === want);
      if (!snapshot) {
        const names = all.map((s) => `${s.id} "${s.name}"`).join(", ") ||
          "none";
        throw new Qcow2Error(
          "BAD_SNAPSHOT",
          `Cannot open snapshot "${want}": no snapshot has that ID or name (snapshots: ${names})`,
        );
      }
    }
    return await Qcow2Image.create({
      source,
      header,
      purpose: context.purpose,
      name: context.name,
      backing,
      dataFile,
      snapshot,
      snapshots,
      cacheBytes: context.cacheBytes,
      ownsSource: context.ownsSource,
    });
  } catch (err) {
    await dataFile?.source?.close?.();
    await backing?.close();
    throw err;
  }
}
