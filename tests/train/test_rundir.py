"""The run folder (`mcir_cli.train.rundir`) on its own: validation history, the log, the lock,
discarding a run that never got going, a full disk while logging."""

from __future__ import annotations

import json

import pytest

from mcir_cli.errors import McirError
from mcir_cli.train.rundir import RunFolder

pytestmark = pytest.mark.unit  # fast units only (pytest -m unit)


def test_run_folder_validation_history(tmp_path):
    folder = RunFolder(tmp_path)
    header = {"conventions": {}, "data": {}}
    for step, psnr in ((0, 30.0), (2, 30.5), (4, 30.2)):
        folder.record_validation({"step": step, "psnr": psnr}, header)
    data = json.loads((tmp_path / "val.json").read_text())
    assert data["best"] == {"step": 2, "psnr": 30.5}
    folder.record_validation({"step": 2, "psnr": 29.0}, header)  # a resumed step 2 replaces 2 and after
    assert [h["step"] for h in folder.validations(10)] == [0, 2]
    assert [h["step"] for h in folder.validations(1)] == [0]
    (tmp_path / "val.json").write_text("{}")
    with pytest.raises(McirError, match="val.json is damaged"):
        folder.validations(10)


def test_run_folder_log_truncation_and_unstarted(tmp_path):
    folder = RunFolder(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert folder.is_unstarted()
    lines = [{"event": "start", "step": 0}, {"step": 1, "l_rec": 0.1}, {"step": 2, "l_rec": 0.1}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 3, "l_r')
    assert folder.is_unstarted()  # steps logged, but nothing saved to resume from
    (tmp_path / "state.pt").write_bytes(b"")
    assert not folder.is_unstarted()
    folder.truncate_log(1)
    assert [json.loads(x)["step"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [0, 1]


def test_run_folder_lock_is_exclusive(tmp_path):
    folder = RunFolder(tmp_path)
    with folder.lock():
        with pytest.raises(McirError, match="another mcir process"):
            with RunFolder(tmp_path).lock():
                pass
    with RunFolder(tmp_path).lock():  # released
        pass


def test_discard_keeps_a_run_that_got_going(tmp_path):
    started = tmp_path / "a"
    started.mkdir()
    (started / "log.jsonl").write_text('{"step": 1, "l_rec": 0.1}\n')
    RunFolder(started).discard_if_unstarted()
    assert started.exists()
    empty = tmp_path / "b"
    (empty / "sub").mkdir(parents=True)
    RunFolder(empty).discard_if_unstarted()
    assert not empty.exists()


def test_a_full_disk_while_logging_is_one_line_naming_the_log(tmp_path):
    import errno

    from mcir_cli.train.rundir import RunLog

    log = RunLog(tmp_path / "log.jsonl")

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    log.fh = Full()
    with pytest.raises(McirError, match="No space left on device") as info:
        log.write({"step": 1})
    assert "log.jsonl" in str(info.value)
