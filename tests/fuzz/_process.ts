// What a fuzz runner process (_runner.ts, _sparsify_runner.ts) reports with
// (not a test file): one JSON line per message on stdout, and its own peak
// resident memory, read and reset through Linux's /proc.

const encoder = new TextEncoder();

/** Writes `value` as one JSON line on stdout, whole, before returning. */
export function emit(value: unknown): void {
  const line = encoder.encode(JSON.stringify(value) + "\n");
  let done = 0;
  while (done < line.length) done += Deno.stdout.writeSync(line.subarray(done));
}

/**
 * Resets the peak resident memory (Linux `clear_refs` 5); false where it
 * cannot (not Linux, or not allowed), and sampled values must do.
 */
export function resetPeak(): boolean {
  try {
    Deno.writeTextFileSync("/proc/self/clear_refs", "5");
    return true;
  } catch {
    return false;
  }
}

/** Peak resident memory since the last reset (VmHWM), in bytes; 0 if unknown. */
export function peakResident(): number {
  try {
    const m = /^VmHWM:\s+(\d+) kB$/m.exec(
      Deno.readTextFileSync("/proc/self/status"),
    );
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}
