// Argument checks shared by the writer stages.
import { MAX_CLUSTER_BITS, MIN_CLUSTER_BITS } from "../format/constants.ts";
import type { ClusterRecord } from "./records.ts";

/** Returns the cluster size if it is a power of two in [512, 2 MiB]; throws RangeError otherwise. */
export function checkClusterSize(size: number): number {
  const bits = Math.log2(size);
  if (
    !Number.isInteger(bits) || bits < MIN_CLUSTER_BITS ||
    bits > MAX_CLUSTER_BITS
  ) {
    throw new RangeError(
      `Cannot use cluster size ${size}: must be a power of two in [${
        2 ** MIN_CLUSTER_BITS
      }, ${2 ** MAX_CLUSTER_BITS}]`,
    );
  }
  return size;
}

/** Returns refcount_order for a refcount width in bits (1..64, power of two); throws RangeError otherwise. */
export function refcountOrderOf(bits: number): number {
  const order = Math.log2(bits);
  if (!Number.isInteger(order) || order < 0 || order > 6) {
    throw new RangeError(
      `Cannot use refcount width ${bits}: must be 1, 2, 4, 8, 16, 32 or 64 bits`,
    );
  }
  return order;
}

/**
 * Checks that a record's bytes fit its cluster count at this stage's
 * cluster size: two stages wired with different cluster sizes would
 * otherwise map bytes to the wrong clusters without a word.
 *
 * @throws {RangeError} Naming the stage, the record and both sizes.
 */
export function checkRecord(
  record: ClusterRecord,
  clusterSize: number,
  stage: string,
): void {
  const mismatch = (what: string) =>
    new RangeError(
      `Cannot ${stage}: ${what} at cluster size ${clusterSize}; the stage before uses another cluster size`,
    );
  if (record.kind === "data") {
    if (record.data.length !== record.count * clusterSize) {
      throw mismatch(
        `a data record of ${record.count} cluster(s) at index ${record.index} holds ${record.data.length} bytes, not ${
          record.count * clusterSize
        }`,
      );
    }
  } else if (record.kind === "compressed") {
    const total = record.lengths.reduce((n, l) => n + l, 0);
    const tooLong = record.lengths.find((l) => l >= clusterSize);
    if (
      record.lengths.length !== record.count || total !== record.data.length ||
      tooLong !== undefined
    ) {
      throw mismatch(
        `a compressed record of ${record.count} cluster(s) at index ${record.index} has ${record.lengths.length} payload(s) of ${total} bytes${
          tooLong === undefined ? "" : `, one of ${tooLong} bytes`
        }`,
      );
    }
  }
}
