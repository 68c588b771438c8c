// The progress bar of `convert -p`: bytes done of total, speed and ETA on
// one line of stderr, redrawn in place at most ten times a second. The line
// always fits the terminal (narrower terminals get fewer fields and a
// shorter bar), follows resizes, and is erased before anything else is
// written to stderr, so that it never scrolls.
import {
  formatBytes,
  formatRate,
  setStatusLine,
  terminalColumns,
} from "./_util.ts";

export interface Progress {
  update(done: number): void;
  finish(): void;
}

/** Columns assumed when stderr is not a terminal (`-p` into a pipe). */
const DEFAULT_COLUMNS = 80;
/** The bar's width when there is room for it all. */
const BAR_MAX = 30;
/** A narrower bar says too little: below this the bar is left out. */
const BAR_MIN = 10;
/** How often the line is redrawn, at most. */
const REDRAW_MS = 100;

function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "--:--";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

/**
 * Renders one progress line in at most `columns - 3` characters: the last
 * column is left free (writing there makes some terminals wrap), and so is
 * room for the `^C` a terminal echoes on Ctrl-C. Fields are
 * dropped from the least useful (sizes, then speed, then ETA) until the
 * rest fits beside a bar of at least 10 columns; a terminal narrower than
 * that gets the text without a bar, cut to fit.
 */
export function renderProgress(
  done: number,
  total: number | undefined,
  elapsedMs: number,
  columns = DEFAULT_COLUMNS,
): string {
  const room = Math.max(1, columns - 3);
  const rate = elapsedMs > 0 ? done / (elapsedMs / 1000) : 0;
  // No speed in the first second: it would say nothing yet.
  const speed = formatRate(done, elapsedMs / 1000);
  if (total === undefined || total <= 0) {
    return [formatBytes(done), speed].filter((f) => f).join("  ").slice(
      0,
      room,
    );
  }
  const frac = Math.min(1, done / total);
  const percent = `${(frac * 100).toFixed(1).padStart(5)}%`;
  const sizes = `${formatBytes(done)} / ${formatBytes(total)}`;
  const eta = `ETA ${formatEta(rate > 0 ? (total - done) / rate : NaN)}`;
  const choices = [
    [percent, sizes, speed, eta],
    [percent, speed, eta],
    [percent, eta],
    [percent],
  ].map((fields) => fields.filter((f) => f).join("  "));
  for (const text of choices) {
    const width = Math.min(BAR_MAX, room - text.length - 3);
    if (width >= BAR_MIN) {
      const filled = Math.round(frac * width);
      return `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${text}`;
    }
  }
  return (choices.find((text) => text.length <= room) ?? percent.trim())
    .slice(0, room);
}

/** A progress bar on stderr, or a no-op when disabled. */
export function createProgress(
  enabled: boolean,
  total: number | undefined,
): Progress {
  if (!enabled) return { update() {}, finish() {} };
  const start = performance.now();
  let lastDraw = 0;
  let done = 0;
  let columns = terminalColumns() ?? DEFAULT_COLUMNS;
  const draw = () => {
    lastDraw = performance.now();
    columns = terminalColumns() ?? columns;
    setStatusLine(renderProgress(done, total, lastDraw - start, columns));
  };
  // Redraws while no progress is reported (the ETA and a resize are
  // followed); unref'd, so it never keeps the process alive.
  const timer = setInterval(() => {
    if (
      performance.now() - lastDraw >= REDRAW_MS ||
      terminalColumns() !== columns
    ) draw();
  }, REDRAW_MS);
  Deno.unrefTimer(timer);
  return {
    update(n) {
      done = n;
      if (performance.now() - lastDraw >= REDRAW_MS) draw();
    },
    finish() {
      clearInterval(timer);
      done = total ?? done;
      draw();
      setStatusLine(undefined, { keep: true });
    },
  };
}

/**
 * qemu-img's progress steps: a percentage is printed when it moved by more
 * than this since the last one printed, and at 0 and 100.
 */
const QEMU_MIN_SKIP = 1;
/** qemu-img's convert copies at most this much per request (IO_BUF_SIZE). */
export const QEMU_COPY_CHUNK = 2 * 1024 * 1024;

/**
 * One step of qemu-img's progress: `    (25.00/100%)` and a carriage return.
 *
 * @param percent How far, 0 to 100.
 * @returns The text to print.
 */
export function qemuProgressLine(percent: number): string {
  return `    (${Math.fround(percent).toFixed(2)}/100%)\r`;
}

/**
 * Progress as qemu-img prints it with `-p` when it is not drawing a bar for
 * a terminal: `    (NN.NN/100%)` and a carriage return at each step, a
 * newline at the end. A step is a piece of the data to copy (`pieces`: the
 * guest offset where each piece ends and its length, in order), counted
 * once the conversion has passed its end; the percentage is of the data
 * (zero and unallocated ranges count for nothing), in single precision as
 * qemu-img keeps it.
 *
 * @param pieces The data pieces to copy, in guest order.
 * @param write Where the text goes (qemu-img writes it on stdout).
 * @returns The progress, started at 0.
 */
export function createQemuProgress(
  pieces: { end: number; length: number }[],
  write: (text: string) => void,
): Progress {
  const total = pieces.reduce((sum, p) => sum + p.length, 0);
  let current = 0;
  let lastPrinted = 0;
  let next = 0;
  let done = 0;
  const print = (percent: number) => {
    current = Math.fround(Math.min(100, percent));
    if (
      current > lastPrinted + QEMU_MIN_SKIP ||
      current < lastPrinted - QEMU_MIN_SKIP || current === 100 ||
      current === 0
    ) {
      lastPrinted = current;
      write(qemuProgressLine(current));
    }
  };
  print(0);
  const advance = (offset: number) => {
    while (next < pieces.length && pieces[next].end <= offset) {
      done += pieces[next++].length;
      print(100 * done / total);
    }
  };
  return {
    update: advance,
    finish() {
      advance(Infinity);
      print(100);
      write("\n");
    },
  };
}

/** An extent as qemu-img's progress sees it. */
export interface ProgressExtent {
  offset: number;
  length: number;
  /** Whether it holds data qemu-img copies (not zeros, not a hole). */
  data: boolean;
  /** Where its bytes are: the image of the chain and the host offset. */
  depth?: number;
  hostOffset?: number;
  /** A compressed cluster: a piece of its own. */
  compressed?: boolean;
}

/**
 * The pieces `createQemuProgress` counts: the runs of data as QEMU's block
 * status reports them (extents joined while they lie one after the other
 * in the same file of the chain; compressed clusters one by one), each cut
 * into copies of at most `chunk` bytes.
 *
 * @param extents The source's extents, in guest order.
 * @param chunk The most bytes qemu-img copies at once.
 * @returns The pieces, in guest order.
 */
export function qemuProgressPieces(
  extents: Iterable<ProgressExtent>,
  chunk: number,
): { end: number; length: number }[] {
  const runs: { offset: number; end: number; last: ProgressExtent }[] = [];
  for (const e of extents) {
    if (!e.data || e.length === 0) continue;
    const run = runs.at(-1);
    const prev = run?.last;
    const joins = run !== undefined && prev !== undefined &&
      run.end === e.offset && !e.compressed && !prev.compressed &&
      prev.depth === e.depth &&
      (prev.hostOffset === undefined ||
        prev.hostOffset + prev.length === e.hostOffset);
    if (joins) {
      run.end += e.length;
      run.last = e;
    } else runs.push({ offset: e.offset, end: e.offset + e.length, last: e });
  }
  const pieces: { end: number; length: number }[] = [];
  for (const run of runs) {
    for (let at = run.offset; at < run.end; at += chunk) {
      const length = Math.min(chunk, run.end - at);
      pieces.push({ end: at + length, length });
    }
  }
  return pieces;
}
