"""threadpoolctl support: pyconv's OpenMP pool is one threadpoolctl can see and limit.

pyconv's kernels take their team size from pyconv's own setting
(:func:`pyconv.set_num_threads`), not from the OpenMP runtime's, so
threadpoolctl's libgomp controller alone would not reach them.  This module
registers a controller for pyconv's compiled module (user API ``"openmp"``,
internal API ``"pyconv"``), found among the loaded libraries by the C
symbols ``pyconv_get_num_threads`` / ``pyconv_set_num_threads`` it exports::

    from threadpoolctl import threadpool_info, threadpool_limits
    with threadpool_limits(limits=1, user_api="openmp"):
        pyconv.conv2d(x, w)          # one thread
    [i for i in threadpool_info() if i["internal_api"] == "pyconv"]

threadpoolctl is optional and not imported by ``import pyconv`` (that would
add ~14 ms to every import): if it is already imported the controller is
registered at once, otherwise a one-shot import hook registers it when
threadpoolctl is first imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any, Optional, Sequence

_REGISTERED_FLAG = "_pyconv_controller_registered"


def _register(threadpoolctl: ModuleType) -> None:
    """Register pyconv's controller with an imported threadpoolctl (once)."""
    if getattr(threadpoolctl, _REGISTERED_FLAG, False) or not hasattr(threadpoolctl, "register"):
        return  # already done, or threadpoolctl < 3.5 (no custom controllers)

    class PyconvController(threadpoolctl.LibController):  # type: ignore[misc, name-defined]
        user_api = "openmp"
        internal_api = "pyconv"
        filename_prefixes = ("_core",)
        # Another package's "_core" module lacks these and is skipped.
        check_symbols = ("pyconv_get_num_threads", "pyconv_set_num_threads")

        def get_num_threads(self) -> int:
            return int(self.dynlib.pyconv_get_num_threads())

        def set_num_threads(self, num_threads: int) -> None:
            self.dynlib.pyconv_set_num_threads(int(num_threads))

        def get_version(self) -> Optional[str]:
            from . import __version__

            return __version__

    threadpoolctl.register(PyconvController)
    setattr(threadpoolctl, _REGISTERED_FLAG, True)


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when threadpoolctl is about to be imported it
    wraps that module's loader so the controller is registered right after
    the module runs, then removes itself from ``sys.meta_path``."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Any = None) -> Any:
        if fullname != "threadpoolctl":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_and_register(module: ModuleType) -> None:
            exec_module(module)
            try:
                _register(module)
            except Exception:  # noqa: BLE001 - a threadpoolctl API change must not break its import
                pass

        loader.exec_module = exec_and_register  # type: ignore[union-attr]
        return spec


def install() -> None:
    """Register now if threadpoolctl is imported, else when it is."""
    module = sys.modules.get("threadpoolctl")
    if module is not None:
        _register(module)
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
