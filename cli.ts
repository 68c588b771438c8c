/**
 * The qcow2pipe command line.
 *
 * @module
 */
import { defaultHeader, geometryOf } from "./mod.ts";

if (import.meta.main) {
  const g = geometryOf(defaultHeader({ size: 1 << 30 }));
  console.log(
    `qcow2pipe format core: cluster ${g.clusterSize} B, ${g.l2Entries} L2 entries per table`,
  );
}
