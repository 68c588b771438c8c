// `compare -s`: where the block status of two images first differs, as
// qemu-img's strict mode reports it. The status of a range is what
// `qemu-img map --output=json` shows of it (allocated, zero, data, whether
// it has a host offset) and whether the run reaches the end of the image:
// QEMU compares its status flags whole, end-of-file flag included.
import type { ImageFormat } from "../reader/open.ts";
import type { ImageInput } from "../tools/input.ts";
import { type MapEntry, mapImageEntries } from "../tools/map.ts";
import type { HttpTransport } from "../io/http_source.ts";

/** The flags qemu-img compares for a run that ends the image or not. */
function status(e: MapEntry, size: number): string {
  return [
    e.present,
    e.zero,
    e.data,
    e.offset !== undefined,
    e.start + e.length === size,
  ].join();
}

/**
 * The first offset where two images of the same virtual size differ in
 * block status, or undefined when they never do.
 */
export async function firstStatusMismatch(
  a: ImageInput,
  b: ImageInput,
  formats: [ImageFormat | undefined, ImageFormat | undefined],
  size: number,
  http?: HttpTransport,
): Promise<number | undefined> {
  const ia = mapImageEntries(a, { format: formats[0], http });
  const ib = mapImageEntries(b, { format: formats[1], http });
  try {
    let ea = (await ia.next()).value as MapEntry | undefined;
    let eb = (await ib.next()).value as MapEntry | undefined;
    for (let offset = 0; offset < size && ea && eb;) {
      if (status(ea, size) !== status(eb, size)) return offset;
      const endA = ea.start + ea.length;
      const endB = eb.start + eb.length;
      offset = Math.min(endA, endB);
      if (endA === offset) ea = (await ia.next()).value as MapEntry | undefined;
      if (endB === offset) eb = (await ib.next()).value as MapEntry | undefined;
    }
    return undefined;
  } finally {
    await ia.return(undefined);
    await ib.return(undefined);
  }
}
