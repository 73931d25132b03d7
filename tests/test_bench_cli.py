"""`python -m pyconv bench`: options, JSON report, plot, progress bar.

Speed is never asserted here (see bench/ and the CLI itself); these tests
check that the command measures what it says and reports it faithfully.
"""

import importlib.util
import io
import json

import pytest

from pyconv import __main__ as cli


def _run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr().out
    return code, out


def test_list(capsys):
    code, out = _run(["bench", "--list"], capsys)
    assert code == 0
    for name in ("vgg16_c3_1", "maxpool_2x2", "resnet50_res4_1x1_step"):
        assert name in out


def test_small_run_with_json(tmp_path, capsys):
    report = tmp_path / "r.json"
    code, out = _run(["bench", "--shapes", "lenet_c2,global_avg,lenet_c2_step", "--repeat", "1",
                      "--threads", "1", "--json", str(report)], capsys)
    assert code == 0
    for name in ("lenet_c2", "global_avg", "lenet_c2_step", "geomean"):
        assert name in out
    data = json.loads(report.read_text())
    assert {"date", "machine", "config", "versions", "options", "rows", "geomean"} <= set(data)
    rows = {r["shape"]["name"] if isinstance(r["shape"], dict) else r["shape"]: r for r in data["rows"]}
    assert set(rows) == {"lenet_c2", "global_avg", "lenet_c2_step"}
    conv = rows["lenet_c2"]
    assert conv["results"]["pyconv"]["median_ms"] > 0
    if "numpy" in conv["results"]:  # the reference agrees with pyconv, or the command fails
        assert conv["results"]["numpy"]["matches_pyconv"] is True
    assert data["options"]["threads"] == 1


def test_unknown_shape_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--shapes", "no_such_layer"])
    assert info.value.code == 2
    assert "no_such_layer" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_plot(tmp_path, capsys):
    png = tmp_path / "bench.png"
    code, _ = _run(["bench", "--shapes", "lenet_c2,global_avg", "--repeat", "1", "--no-numpy",
                    "--plot", str(png)], capsys)
    assert code == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--shapes", "lenet_c2", "--plot", str(tmp_path / "x.png")])
    assert info.value.code == 2
    assert "pip install 'pyconv[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch):
    tty = _Tty()
    monkeypatch.setattr("sys.stderr", tty)
    bar = cli.Progress(4)
    assert bar.enabled
    bar.show(2, "vgg16_c3_1")
    bar.close()
    text = tty.getvalue()
    assert "vgg16_c3_1" in text and "\r" in text

    pipe = io.StringIO()  # not a terminal: nothing at all
    monkeypatch.setattr("sys.stderr", pipe)
    bar = cli.Progress(4)
    bar.show(2, "vgg16_c3_1")
    bar.close()
    assert pipe.getvalue() == ""
