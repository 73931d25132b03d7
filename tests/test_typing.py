"""pyconv's annotations serve its users: ``mypy --strict`` passes on a
realistic user script (tests/typing_user_script.py), and reports the
mistakes the annotations exist to catch (the negative control, so this test
can fail).

mypy checks the script against the pyconv this test-suite imports, with the
compiled module typed by ``pyconv/_core.pyi``.  Errors *inside* pyconv are
silenced (``follow_imports = silent``), as for any installed package: the
contract checked here is the public API's types, not the package's own
strictness.
"""

from __future__ import annotations

import re
import runpy
import site
import textwrap
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

import pyconv

pytest.importorskip("mypy")
from mypy import api as mypy_api  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
USER_SCRIPT = TESTS_DIR / "typing_user_script.py"
PACKAGE_PARENT = Path(pyconv.__file__).resolve().parent.parent


def _site_dirs() -> List[Path]:
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [Path(d).resolve() for d in dirs]


@pytest.fixture(scope="module")
def mypy_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mypy configuration that finds the pyconv under test."""
    root = tmp_path_factory.mktemp("mypy")
    lines = ["[mypy]", f"cache_dir = {root / 'cache'}"]
    if PACKAGE_PARENT not in _site_dirs():
        # A source checkout (or an editable install): put it first on
        # mypy's path.  An installed copy is found through site-packages
        # (py.typed), where mypy refuses an explicit path.
        lines.append(f"mypy_path = {PACKAGE_PARENT}")
    lines += ["", "[mypy-pyconv.*]", "follow_imports = silent", ""]
    config = root / "mypy.ini"
    config.write_text("\n".join(lines))
    return config


def _mypy(config: Path, *files: Path) -> Tuple[str, int]:
    stdout, stderr, status = mypy_api.run(
        ["--strict", "--config-file", str(config), "--no-error-summary", "--show-error-codes",
         *map(str, files)])
    return stdout + stderr, status


def test_user_script_passes_mypy_strict(mypy_config: Path) -> None:
    report, status = _mypy(mypy_config, USER_SCRIPT)
    assert status == 0, f"mypy --strict failed on {USER_SCRIPT.name}:\n{report}"
    assert report.strip() == "", report


def test_user_script_runs() -> None:
    """The script type-checks *and* is correct: it runs against this pyconv."""
    result = runpy.run_path(str(USER_SCRIPT), run_name="typing_user_script")["main"]()
    assert result["algo"] == pyconv.plan((2, 3, 16, 16), (8, 3, 3, 3), padding=1)["algo"]
    assert result["pool_shape"] == (2, 3, 8, 8)


# The negative control: every line marked ``# E: <fragment>`` is a mistake
# mypy must report, with a message containing the fragment.
BAD_SCRIPT = textwrap.dedent('''\
    import numpy as np
    import pyconv
    import pyconv.autograd
    x = np.ones((1, 1, 4, 4), np.float32)
    pyconv.conv2d(x, x, stride="2")  # E: Argument "stride" to "conv2d" has incompatible type "str"
    label: str = pyconv.conv2d(x, x)  # E: Incompatible types in assignment
    pyconv.conv2d(x, x, layout="NCWH")  # E: Argument "layout" to "conv2d" has incompatible type
    pyconv.max_pool2d(x, 2, return_indices=True).ndim  # E: has no attribute "ndim"
    pyconv.config()["thread"]  # E: TypedDict "Config" has no key "thread"
    pyconv.set_num_threads(2.0)  # E: Argument 1 to "set_num_threads" has incompatible type "float"
    y, pullback = pyconv.autograd.conv2d_vjp(x, x)
    pullback(y).shape  # E: has no attribute "shape"
    ''')


def test_mypy_reports_type_errors(mypy_config: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad_user_script.py"
    bad.write_text(BAD_SCRIPT)
    expected = {n: line.split("# E: ", 1)[1] for n, line in enumerate(BAD_SCRIPT.splitlines(), 1)
                if "# E: " in line}
    report, status = _mypy(mypy_config, bad)
    assert status == 1, f"mypy found no error in the negative control:\n{report}"
    errors: Dict[int, List[str]] = {}
    for line in report.splitlines():
        match = re.match(rf"{re.escape(str(bad))}:(\d+): error: (.*)", line)
        if match:
            errors.setdefault(int(match.group(1)), []).append(match.group(2))
    assert set(errors) == set(expected), (
        f"mypy errors on lines {sorted(errors)}, expected on {sorted(expected)}:\n{report}")
    for lineno, fragment in expected.items():
        assert any(fragment in message for message in errors[lineno]), (
            f"expected a mypy error containing {fragment!r} on line {lineno} of the negative control, "
            f"got:\n{report}")
