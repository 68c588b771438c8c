/**
 * Which file a differencing VHD names as its parent. Its dynamic header
 * holds the parent's name and up to eight parent locators, each a name
 * for one platform:
 *
 * - `W2ru`: a Windows path relative to the image, UTF-16LE (`.\base.vhd`)
 * - `W2ku`: an absolute Windows path, UTF-16LE (`C:\vms\base.vhd`)
 * - `Wi2r`, `Wi2k`: the same in the deprecated single-byte encoding
 * - `MacX`: a file URL, UTF-8 (`file://localhost/Users/me/base.vhd`)
 * - `Mac `: a Mac OS alias record, which names nothing here
 *
 * QEMU 7.2 reads none of them (it reads a differencing disk as a dynamic
 * one, without its parent). Here one name is chosen, as Hyper-V tries
 * them: the relative locator first, then the file URL, then the absolute
 * Windows path, then the name in the header; Windows separators become
 * `/`, and a name that only means something on Windows (a drive letter, a
 * UNC share) is passed over. The name chosen is followed by the chain
 * walk through the reference gate, as a qcow2 backing file name is.
 *
 * @module
 */

import { Qcow2Error } from "../../format/errors.ts";
import type { RandomAccessSource } from "../../io/source.ts";
import { readExact } from "../_bounds.ts";
import {
  type ParentLocator,
  untilNul,
  type VhdDynamicHeader,
} from "./layout.ts";

/** The longest locator data read: 32 Ki UTF-16 code units, a Windows path's limit. */
export const MAX_LOCATOR_BYTES = 65536;

/** Locator platforms in the order they are tried, with how their data decodes. */
const PLATFORMS: readonly [string, string][] = [
  ["W2ru", "utf-16le"],
  ["Wi2r", "latin1"],
  ["MacX", "utf-8"],
  ["W2ku", "utf-16le"],
  ["Wi2k", "latin1"],
];

/** A Windows-only path: a drive letter or a UNC share. */
const WINDOWS_ONLY = /^(?:[A-Za-z]:|\\\\|\/\/)/;

/**
 * The name a locator's text gives on this side: separators as `/`, a
 * leading `./` dropped, file URLs as paths; undefined when it names
 * nothing that can be opened here.
 */
function usableName(platform: string, text: string): string | undefined {
  let name = untilNul(text).trim();
  if (name === "") return undefined;
  if (platform === "MacX") {
    const m = /^file:\/\/(?:localhost)?(\/.*)$/i.exec(name);
    if (!m) return undefined;
    try {
      return decodeURIComponent(m[1]);
    } catch {
      return undefined;
    }
  }
  if (WINDOWS_ONLY.test(name)) return undefined;
  name = name.replaceAll("\\", "/");
  while (name.startsWith("./")) name = name.slice(2);
  return name === "" ? undefined : name;
}

/** Reads one locator's data, bounded and inside the file. */
async function locatorText(
  source: RandomAccessSource,
  locator: ParentLocator,
  encoding: string,
): Promise<string> {
  const { dataOffset, dataLength, platform } = locator;
  const what = `parent locator "${platform}"`;
  if (dataLength > MAX_LOCATOR_BYTES) {
    throw new Qcow2Error(
      "OUT_OF_RANGE",
      `Cannot open image: ${what} data length ${dataLength} is out of range [0, ${MAX_LOCATOR_BYTES}]`,
      { offset: dataOffset, field: "platform_data_length" },
    );
  }
  if (dataOffset + dataLength > source.size) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot open image: ${what} data at ${dataOffset} with ${dataLength} bytes ends past the end of the file (${source.size} bytes)`,
      { offset: dataOffset, field: "platform_data_offset" },
    );
  }
  const bytes = await readExact(source, dataOffset, dataLength, what);
  return new TextDecoder(encoding).decode(bytes);
}

/**
 * The parent name a differencing image gives, chosen among its locators
 * and the header's parent name (see the module doc).
 *
 * @param source The image file.
 * @param header Its dynamic disk header.
 * @returns The name, with `/` separators.
 * @throws {Qcow2Error} OUT_OF_RANGE or TRUNCATED for locator data that
 * is too long or lies past the end of the file; BACKING when no locator
 * names a file that can be opened here.
 */
export async function parentName(
  source: RandomAccessSource,
  header: VhdDynamicHeader,
): Promise<string> {
  for (const [platform, encoding] of PLATFORMS) {
    for (const locator of header.locators) {
      if (locator.platform !== platform || locator.dataLength === 0) continue;
      const name = usableName(
        platform,
        await locatorText(source, locator, encoding),
      );
      if (name !== undefined) return name;
    }
  }
  const name = usableName("", header.parentName);
  if (name !== undefined) return name;
  const named = header.parentName ||
    header.locators.map((l) => l.platform).join(", ");
  throw new Qcow2Error(
    "BACKING",
    named === ""
      ? "Cannot open backing file: the differencing image names no parent (no parent name, no parent locator)"
      : `Cannot open backing file "${named}": the differencing image names its parent only by Windows absolute paths or Mac aliases, and has no relative locator (W2ru)`,
    { field: "parent_locator" },
  );
}
