"""What the commands tell the user as they work, on stderr: the live progress line of a
transfer (the application layer's Reporter, as the terminal shows it), and what
--annex-urls recorded. The annex recording is imported only with --annex-urls."""
import sys
import time


def report_annexed(prog, directory, layer_urls, quiet):
    """--annex-urls: annex DIR, register the layers' registry URLs, say how many."""
    from ..application.annex import record_urls

    linked, kept = record_urls(directory, layer_urls)
    if not quiet:
        print(f"{prog}: {directory} annexed: {linked} layer(s) linked to their registry (git annex can drop and "
              f"get them), {kept} kept only in the annex", file=sys.stderr)


class Progress:
    """A live line on a TTY stderr ("label: 106 MB of 547 MB (19%), 25.7 MB/s, 4.1 s, 17 s
    left"), kept as one final line when done; silent when stderr is not a terminal.
    `waiting` says what the first byte waits for until it comes."""

    def __init__(self, label, total=None, waiting=None, enabled=True):
        self.label = label
        self.total = total
        self.enabled = enabled and sys.stderr.isatty()
        self.done = 0
        self.start = time.monotonic()
        self._shown = 0.0
        if self.enabled and waiting:
            self._write(f"{waiting}" + (f" ({human(total)})" if total else ""))

    def __call__(self, nbytes):
        self.done += nbytes
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._shown >= 0.2:
            self._shown = now
            self._draw(now)

    def _write(self, text):
        sys.stderr.write(f"\r{self.label}: {text}\033[K")
        sys.stderr.flush()

    def _draw(self, now, final=False):
        elapsed = max(now - self.start, 1e-6)
        rate = self.done / elapsed
        if not self.total:
            self._write(f"{human(self.done)}, {human(rate)}/s, {elapsed:.1f} s")
            return
        share = min(self.done / self.total, 1.0)
        text = f"{human(self.done)} of {human(self.total)} ({share:.0%}), {human(rate)}/s, {elapsed:.1f} s"
        if not final and elapsed >= 1 and self.done:  # earlier, a rate says little
            left = (self.total - self.done) / rate if self.done < self.total else 0.0
            text += f", {left:.0f} s left"
        self._write(text)

    def reset(self, total):
        """Count again from zero, towards another total (the whole image after a short one)."""
        self.done, self.total = 0, total

    def relabel(self, label):
        self.label = label
        if self.enabled:
            self._draw(time.monotonic())

    def close(self):
        if self.enabled:
            self._draw(time.monotonic(), final=True)
            sys.stderr.write("\n")
            sys.stderr.flush()

    def cancel(self):
        self.enabled = False


class TerminalReporter:
    """The application layer's reports (application.Reporter), on stderr unless quiet."""

    def __init__(self, prog, quiet=False):
        self.prog = prog
        self.quiet = quiet

    def waiting(self, message):
        if not self.quiet:
            print(f"{self.prog}: {message}", file=sys.stderr)

    notice = waiting

    def failed(self, message):
        clear = "\r\033[K" if not self.quiet and sys.stderr.isatty() else ""  # a progress line may be there
        print(f"{clear}{self.prog}: {message}", file=sys.stderr)

    def transfer(self, label, total=None, waiting=None):
        return Progress(label, total, waiting, enabled=not self.quiet)


def human(nbytes):
    if nbytes < 1000:
        return f"{nbytes:.0f} B"
    for unit in ("kB", "MB"):
        nbytes /= 1000
        if nbytes < 1000:
            return f"{nbytes:.1f} {unit}"
    return f"{nbytes / 1000:.1f} GB"
