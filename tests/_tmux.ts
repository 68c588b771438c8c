// A real terminal for the CLI tests: a tmux server of its own (its socket
// in a temporary directory, so other tmux users are untouched) with one
// pane of a chosen size, whose screen the test reads back. Tests that need
// tmux are skipped with a visible message when it is absent, except under
// CI, where its absence fails the test.

import { has, toolTest } from "./_qemu.ts";

/** Whether tmux can be run here. */
export const HAVE_TMUX: boolean = has("tmux", ["-V"]);

/** Registers a test that needs tmux (skipped without it, failed under CI). */
export const tmuxTest: (name: string, fn: () => Promise<void>) => void =
  toolTest("tmux", HAVE_TMUX, "apt-get install tmux");

const quote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

/** One tmux pane running a command, on a private tmux server. */
export class TmuxPane implements AsyncDisposable {
  #dir: string;
  #socket: string;

  private constructor(dir: string) {
    this.#dir = dir;
    this.#socket = `${dir}/socket`;
  }

  /**
   * Starts `argv` in a `columns` × `rows` pane, in `cwd`. When it ends, the
   * pane shows `[exit N]` and stays open for reading. Ctrl-C reaches the
   * command (the shell around it survives it, to print the status).
   */
  static async start(
    argv: string[],
    options: { columns: number; rows: number; cwd: string },
  ): Promise<TmuxPane> {
    // The server's socket in a directory of its own, removed at the end
    // (tmux leaves it behind when its server is killed).
    const pane = new TmuxPane(
      await Deno.makeTempDir({ prefix: "qcow2pipe-tmux-" }),
    );
    const script = `trap : INT; ${
      argv.map(quote).join(" ")
    }; echo "[exit $?]"; exec sleep 3600`;
    await pane.#tmux(
      "-f",
      "/dev/null",
      "new-session",
      "-d",
      "-x",
      String(options.columns),
      "-y",
      String(options.rows),
      "-c",
      options.cwd,
      `env NO_COLOR=1 TERM=xterm sh -c ${quote(script)}`,
    );
    return pane;
  }

  async #tmux(...args: string[]): Promise<string> {
    const out = await new Deno.Command("tmux", {
      args: ["-S", this.#socket, ...args],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      throw new Error(
        `tmux ${args[0]} failed: ${new TextDecoder().decode(out.stderr)}`,
      );
    }
    return new TextDecoder().decode(out.stdout);
  }

  /**
   * The screen as the terminal shows it: one string per row, trailing
   * spaces and trailing empty rows removed.
   */
  rows(): Promise<string[]> {
    return this.#capture();
  }

  /** capture-pane's rows, trailing spaces and trailing empty rows removed. */
  async #capture(...args: string[]): Promise<string[]> {
    const text = await this.#tmux("capture-pane", "-p", ...args);
    const rows = text.split("\n").map((r) => r.trimEnd());
    while (rows.length > 0 && rows.at(-1) === "") rows.pop();
    return rows;
  }

  /**
   * Every row the pane has held: its scrollback (what scrolled off the top,
   * or what a clear of the screen copied there) and then the screen, as
   * {@linkcode TmuxPane.rows} trims them.
   */
  history(): Promise<string[]> {
    return this.#capture("-S", "-");
  }

  /** Polls the screen until `test` accepts it; fails after `what` never shows. */
  async waitFor(
    what: string,
    test: (rows: string[]) => boolean,
  ): Promise<string[]> {
    // A guard against a hang, not a timing requirement.
    const deadline = Date.now() + 120_000;
    for (;;) {
      const rows = await this.rows();
      if (test(rows)) return rows;
      if (Date.now() > deadline) {
        throw new Error(`never saw ${what}; the screen:\n${rows.join("\n")}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Makes the pane `columns` wide. */
  async resize(columns: number, rows: number): Promise<void> {
    await this.#tmux(
      "resize-window",
      "-x",
      String(columns),
      "-y",
      String(rows),
    );
  }

  /** Types keys (tmux key names: `C-c`). */
  async sendKeys(...keys: string[]): Promise<void> {
    await this.#tmux("send-keys", ...keys);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.#tmux("kill-server").catch(() => {});
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }
}
