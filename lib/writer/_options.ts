// Argument checks shared by the writer stages.
import { MAX_CLUSTER_BITS, MIN_CLUSTER_BITS } from "../format/constants.ts";

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
