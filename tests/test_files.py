"""kit.files: atomic writes (a failed write leaves the old file and no temporary one), tables read with
one line naming the file."""
import errno
import json
import os
import signal

import pandas as pd
import pytest

from kit import files


def test_write_text_atomic_replaces_or_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.csv"
    files.write_text_atomic(path, "old\n")
    files.write_text_atomic(str(path), "new\n")
    assert path.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]

    def full_disk(src, dst):
        raise OSError("No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        files.write_text_atomic(path, "lost\n")
    assert path.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]  # no m.csv.tmp


def test_write_json_and_csv(tmp_path):
    files.write_json({"path": tmp_path, "n": 1}, tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text()) == {"path": str(tmp_path), "n": 1}
    rows = [{"epoch": 1, "split": "train", "extra": "dropped"}, {"epoch": 1, "split": "val"}]
    files.write_csv(rows, tmp_path / "m.csv", ["epoch", "split", "loss"])
    assert (tmp_path / "m.csv").read_text() == "epoch,split,loss\n1,train,\n1,val,\n"


def test_read_table_and_require_columns_name_the_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("")
    with pytest.raises(ValueError, match=rf"^{path}: cannot read as CSV"):
        files.read_table(path)
    path.write_text("a,b\n1,2\n")
    frame = files.read_table(path)
    files.require_columns(frame, ["a"], path)
    with pytest.raises(ValueError, match=rf"^{path}: missing column\(s\) \['c'\]; found \['a', 'b'\]"):
        files.require_columns(frame, ["a", "c"], path)
    assert isinstance(frame, pd.DataFrame)


def test_save_figure_is_atomic_and_closes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    files.save_figure(fig, tmp_path / "f.png", dpi=50)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"] and not plt.fignum_exists(fig.number)


def test_a_ctrl_c_inside_nested_write_blocks_waits_for_the_outer_block(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with files.ctrl_c_after_writes():
            with files.ctrl_c_after_writes():
                os.kill(os.getpid(), signal.SIGINT)
                files.write_json({"a": 1}, tmp_path / "one.json")
                done.append("inner")
            files.write_json({"b": 2}, tmp_path / "two.json")
            done.append("outer")
    assert done == ["inner", "outer"] and (tmp_path / "two.json").is_file()
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back
    with files.ctrl_c_after_writes():  # no Ctrl-C: nothing is raised
        done.append("quiet")


def test_a_refused_write_is_one_line_naming_the_file_whatever_the_writer_made_of_it(tmp_path):
    path = tmp_path / "last.pt"
    files.write_text_atomic(path, "old")

    class Handle:  # what torch's writer does with a refused write: its own RuntimeError, raised while handling
        def __init__(self, handle):
            self.handle = handle

        def save(self):
            try:
                self.handle.write(b"x" * 10)
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    def refusing_write(data):
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    with pytest.raises(files.WriteError) as info:
        with files.write_atomic(path) as handle:
            handle._handle.write = refusing_write
            Handle(handle).save()
    assert str(info.value) == f"{path}: could not be written (file too large); the previous last.pt is intact"
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    with pytest.raises(RuntimeError, match="not a write"):  # an error that is no refused write stays itself
        with files.write_atomic(path):
            raise RuntimeError("not a write")
    with pytest.raises(files.WriteError, match=rf"^{tmp_path}/new/x.csv: could not be written \(no such file"):
        files.write_text_atomic(tmp_path / "new" / "x.csv", "a")  # its folder is missing; nothing was there before


def test_read_sheet_names_the_file(tmp_path):
    path = tmp_path / "grades.xlsx"
    pd.DataFrame({"Image name": ["a.tif"], "grade": [2]}).to_excel(path, index=False)
    assert files.read_sheet(path).to_dict("list") == {"Image name": ["a.tif"], "grade": [2]}
    path.write_bytes(b"PK\x03\x04 not a workbook")
    with pytest.raises(ValueError, match=rf"^{path}: cannot read as an Excel sheet \(") as info:
        files.read_sheet(path)
    assert "\n" not in str(info.value)
