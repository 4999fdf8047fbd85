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
    """A tqdm progress bar: a notebook widget when someone watches, plain text when headless."""
    if headless():
        from tqdm import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(iterable, **kwargs)
