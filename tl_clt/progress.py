"""Progress bars: tqdm's notebook widget in a Jupyter kernel that has ipywidgets, plain text otherwise.

`tqdm.auto` picks the widget in any kernel and, when ipywidgets is missing, warns "IProgress not
found" and falls back to text; we choose up front so that our bars never warn. For widget bars in
notebooks: `pip install "tl-clt[notebook]"` (ipywidgets).
"""

from __future__ import annotations

import importlib.util
import sys

from tqdm.std import tqdm as text_tqdm


def _in_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def has_widgets() -> bool:
    return importlib.util.find_spec("ipywidgets") is not None


def tqdm(*args, **kwargs):
    """A tqdm bar: the notebook widget inside a kernel with ipywidgets, the text bar otherwise."""
    if _in_kernel() and has_widgets():
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(*args, **kwargs)
    return text_tqdm(*args, **kwargs)
