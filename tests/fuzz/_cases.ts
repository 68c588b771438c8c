// Running seeded fuzz cases in a child process (not a test file): the
// cases go to a runner script as a JSON file; the runner prints
// `{"begin": id}` before a case and its outcome after; a case that takes
// longer than the timeout is killed and reported, and the rest run in a
// new process.

/** One case: an id, the base it mutates, its seed. */
export interface FuzzCase {
  id: string;
  base: string;
  seed: number;
}

/** What the runner said about a case. */
export interface FuzzOutcome {
  id: string;
  outcome: string;
  problem?: string;
  reason?: string;
  mutation?: string[];
}

/** Splits a text stream into lines. */
async function* lines(stream: ReadableStream<Uint8Array>) {
  let rest = "";
  for await (const text of stream.pipeThrough(new TextDecoderStream())) {
    rest += text;
    let nl: number;
    while ((nl = rest.indexOf("\n")) >= 0) {
      yield rest.slice(0, nl);
      rest = rest.slice(nl + 1);
    }
  }
}

/**
 * Runs `cases` with `runner` (`deno run -A runner JOBS.json ...args`),
 * restarting it after a case that hangs or crashes it.
 */
export async function runFuzzCases(options: {
  /** Where the jobs file is written. */
  file: string;
  runner: string;
  config: string;
  args: string[];
  bases: unknown[];
  cases: FuzzCase[];
  timeoutMs: number;
}): Promise<FuzzOutcome[]> {
  const out: FuzzOutcome[] = [];
  let pending = options.cases;
  while (pending.length > 0) {
    await Deno.writeTextFile(
      options.file,
      JSON.stringify({ bases: options.bases, cases: pending }),
    );
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--quiet",
        "--config",
        options.config,
        options.runner,
        options.file,
        ...options.args,
      ],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    const stderr = new Response(child.stderr).text();
    let current: string | undefined;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let killed = false;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        killed = true;
        child.kill("SIGKILL");
      }, options.timeoutMs);
    };
    arm();
    for await (const line of lines(child.stdout)) {
      const msg = JSON.parse(line) as { begin?: string } & FuzzOutcome;
      if (msg.begin !== undefined) {
        current = msg.begin;
        arm();
      } else {
        out.push(msg);
        current = undefined;
      }
    }
    clearTimeout(timer);
    const status = await child.status;
    const done = new Set(out.map((o) => o.id));
    const left = pending.filter((c) => !done.has(c.id));
    if (left.length > 0 || !status.success) {
      const id = current ?? left[0]?.id ?? "(runner)";
      out.push({
        id,
        outcome: "crash",
        problem: killed
          ? `did not finish within ${options.timeoutMs} ms`
          : `runner exited with ${status.code}: ${(await stderr).slice(-2000)}`,
      });
      pending = left.filter((c) => c.id !== id);
    } else {
      pending = [];
    }
  }
  return out;
}
