"""Runs never overwrite each other: each takes the next free ``version_N`` (also when several
start at once or when resuming into the same logdir), and a ``--logdir`` that cannot be a folder is
refused in one line."""

import threading

from conftest import fashion_config
from reliability_support import one_error_line, run_main
from rupq.main import next_version_dir


def snapshot(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_next_version_skips_everything_taken(tmp_path):
    (tmp_path / "version_0").mkdir()
    (tmp_path / "version_0" / "model.ckpt").write_bytes(b"first run")
    (tmp_path / "version_2").mkdir()
    (tmp_path / "version_5").write_text("a file named like a version is taken too")
    (tmp_path / "version_x").mkdir()
    assert next_version_dir(tmp_path) == tmp_path / "version_6"
    assert next_version_dir(tmp_path) == tmp_path / "version_7"
    assert (tmp_path / "version_0" / "model.ckpt").read_bytes() == b"first run"


def test_runs_starting_at_once_get_different_versions(tmp_path):
    created, barrier = [], threading.Barrier(8)

    def start():
        barrier.wait()
        created.append(next_version_dir(tmp_path / "logs"))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(path.name for path in created) == [f"version_{n}" for n in range(8)]


def test_second_run_and_resumed_run_leave_earlier_versions_alone(tmp_path, tiny_fashion_mnist):
    config = fashion_config(tmp_path / "cfg.yaml", tiny_fashion_mnist, epochs=1)
    logs = tmp_path / "logs"
    assert run_main("--config", config, "--logdir", logs).returncode == 0
    first = snapshot(logs / "version_0")
    assert {"model.ckpt", "results.json", "config.yaml"} <= {path.name for path in first}
    assert run_main("--config", config, "--logdir", logs).returncode == 0
    longer = fashion_config(tmp_path / "longer.yaml", tiny_fashion_mnist, epochs=2)
    resumed = run_main("--config", longer, "--logdir", logs,
                       "--checkpoint_path", logs / "version_0" / "checkpoints" / "last.ckpt")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "writing to " + str(logs / "version_2") in resumed.stdout
    assert snapshot(logs / "version_0") == first  # byte for byte, checkpoints included
    assert (logs / "version_1" / "model.ckpt").is_file() and (logs / "version_2" / "model.ckpt").is_file()


def test_logdir_that_is_a_file_or_inside_one(tmp_path, tiny_fashion_mnist):
    config = fashion_config(tmp_path / "cfg.yaml", tiny_fashion_mnist)
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert one_error_line(run_main("--config", config, "--logdir", afile)) == (
        f"error: --logdir {afile} is a file, not a folder")
    assert one_error_line(run_main("--config", config, "--logdir", afile / "logs")) == (
        f"error: cannot create --logdir {afile / 'logs'}: Not a directory")
    assert afile.read_text() == "keep me"
