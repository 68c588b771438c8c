// The progress bar of `convert -p`: bytes done of total, MB/s and ETA on
// stderr, redrawn at most ten times a second.
import { formatBytes } from "./_util.ts";

export interface Progress {
  update(done: number): void;
  finish(): void;
}

const encoder = new TextEncoder();

function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "--:--";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

/** Renders one progress line (exported for tests). */
export function renderProgress(
  done: number,
  total: number | undefined,
  elapsedMs: number,
  width = 30,
): string {
  const rate = elapsedMs > 0 ? done / (elapsedMs / 1000) : 0;
  const mbs = `${(rate / 1e6).toFixed(1)} MB/s`;
  if (total === undefined || total <= 0) {
    return `${formatBytes(done)}  ${mbs}`;
  }
  const frac = Math.min(1, done / total);
  const filled = Math.round(frac * width);
  const bar = "#".repeat(filled) + "-".repeat(width - filled);
  const eta = rate > 0 ? (total - done) / rate : NaN;
  return `[${bar}] ${(frac * 100).toFixed(1).padStart(5)}%  ${
    formatBytes(done)
  } / ${formatBytes(total)}  ${mbs}  ETA ${formatEta(eta)}`;
}

/** A progress bar on stderr, or a no-op when disabled. */
export function createProgress(
  enabled: boolean,
  total: number | undefined,
): Progress {
  if (!enabled) return { update() {}, finish() {} };
  const start = performance.now();
  let last = 0;
  let lastDone = 0;
  const draw = (done: number) => {
    const line = renderProgress(done, total, performance.now() - start);
    Deno.stderr.writeSync(encoder.encode(`\r${line}\x1b[K`));
  };
  return {
    update(done) {
      lastDone = done;
      const now = performance.now();
      if (now - last < 100) return;
      last = now;
      draw(done);
    },
    finish() {
      draw(total ?? lastDone);
      Deno.stderr.writeSync(encoder.encode("\n"));
    },
  };
}
