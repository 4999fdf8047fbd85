"""How wanlite shows things: figures that display as images wherever they are returned, progress bars, and the
one headless switch.

`WANLITE_HEADLESS=1` (set by `make test`, the pipeline and CI) means nobody is watching: progress bars are plain
text, live figures stay silent, widgets are replaced by their static pictures.
"""

from __future__ import annotations

import io
import os


def headless() -> bool:
    """True when nobody watches live output (papermill, nbval, CI, scripts): `WANLITE_HEADLESS` is set."""
    return os.environ.get("WANLITE_HEADLESS", "") not in ("", "0")


def in_kernel() -> bool:
    """True inside a Jupyter kernel (where returned figures and widgets can display)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def png(fig, dpi: int = 90) -> bytes:
    """A figure's PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def new_figure(*args, **kwargs):
    """A matplotlib Figure outside pyplot (nothing leaks, nothing pops up, headless-safe) that displays as a PNG
    when a notebook cell returns it."""
    from matplotlib.figure import Figure

    if in_kernel():
        formatter = __import__("IPython").get_ipython().display_formatter.formatters["image/png"]
        if Figure not in formatter.type_printers:
            formatter.for_type(Figure, png)
    return Figure(*args, **kwargs)


def progress(iterable, **kwargs):
    """A tqdm progress bar: a notebook widget while it runs when someone watches (that leaves its final line as
    text, so a saved notebook shows it without the widget state), plain text when headless (on stdout in a
    kernel, stderr in a terminal)."""
    import sys

    from tqdm import tqdm

    if not in_kernel():
        return tqdm(iterable, **kwargs)
    if headless():  # an executed notebook: one text output updated in place (not one output per update)
        return tqdm(iterable, **({"file": _OneLine(), "mininterval": 1.0} | kwargs))
    try:
        import ipywidgets  # noqa: F401  (tqdm.notebook needs it for the widget)
        from tqdm.notebook import tqdm as notebook_tqdm
    except ImportError:
        return tqdm(iterable, **({"file": sys.stdout} | kwargs))
    return _text_when_done(notebook_tqdm)(iterable, **kwargs)


class _OneLine:
    """A file for tqdm that shows its latest line in one notebook output (a display id updated in place), so an
    executed notebook keeps one line for a 20,000-step bar instead of 20,000 stream outputs."""

    def __init__(self):
        from IPython.display import display

        self.handle = display({"text/plain": ""}, raw=True, display_id=True)

    def write(self, text: str) -> None:
        line = text.replace("\r", "\n").strip().rsplit("\n", 1)[-1]
        if line:
            self.handle.update({"text/plain": line}, raw=True)

    def flush(self) -> None:
        pass


def _text_when_done(base):
    class Bar(base):
        """tqdm.notebook's bar, displayed under a display id and replaced by its final text line on close."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, display=False, **kwargs)
            self.handle = None
            if not self.disable:
                from IPython.display import display

                self.handle = display(self.container, display_id=True)
                self.displayed = True

        def close(self):
            super().close()
            if self.handle is not None:
                handle, self.handle = self.handle, None
                handle.update({"text/plain": str(self) if self.leave else ""}, raw=True)
                self.container.close()

    return Bar
