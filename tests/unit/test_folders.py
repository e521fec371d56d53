import pytest

from medweave.folders import replace_folder


def test_replace_folder_swaps_and_keeps_the_old_one_if_the_move_fails(tmp_path, monkeypatch):
    out, new = tmp_path / "cohort", tmp_path / ".cohort.tmp"
    out.mkdir()
    (out / "old.txt").write_text("old")
    new.mkdir()
    (new / "new.txt").write_text("new")

    real_rename = type(new).rename

    def failing(self, target):
        if self == new:
            raise OSError("disk full")
        return real_rename(self, target)

    monkeypatch.setattr(type(new), "rename", failing)
    with pytest.raises(OSError):
        replace_folder(new, out)
    assert (out / "old.txt").read_text() == "old"  # put back
    monkeypatch.undo()

    replace_folder(new, out)
    assert [p.name for p in out.iterdir()] == ["new.txt"] and not new.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cohort"]  # nothing left aside
