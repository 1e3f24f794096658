"""Temporary names carry the host (atomic_io.temp_path): a multi-host extraction's workers write shards to one
shared workdir, and the lock holder's litter cleanup (atomic_io.clean_litter) judges only its own host's pids; another
host's temporary files are left alone unless untouched for atomic_io.LITTER_AGE (a day)."""

import os
import subprocess
import sys
import time

import numpy as np

from cleannet_tf import atomic_io
from cleannet_tf.features import store as feature_store


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_every_temporary_name_carries_this_host_and_pid(tmp_path):
    for target in (tmp_path / "shard-00000.features.npy", tmp_path / "model.keras", tmp_path / "verify"):
        name = os.path.basename(atomic_io.temp_path(str(target)))
        assert atomic_io.temp_owner(name) == ("tmp", atomic_io.host_name(), os.getpid()), name
        assert f".tmp-{atomic_io.host_name()}-{os.getpid()}-" in name
    seen = []
    real_save = np.save
    np.save = lambda path, array: (seen.append(os.path.basename(path)), real_save(path, array))
    try:
        feature_store._atomic_save(str(tmp_path / "shard-00001.features.npy"), np.zeros(3))
    finally:
        np.save = real_save
    assert seen[0].startswith(f"shard-00001.features.tmp-{atomic_io.host_name()}-{os.getpid()}-"), seen


def test_litter_cleanup_judges_this_hosts_pids_and_another_hosts_age(tmp_path):
    dead, me = _dead_pid(), atomic_io.host_name()
    other = "other-host-7" if me != "other-host-7" else "another-host"
    this_dead = tmp_path / f"shard-00000.features.tmp-{me}-{dead}-0a1b2c3d.npy"
    this_alive = tmp_path / f"shard-00001.features.tmp-{me}-{os.getpid()}-0a1b2c3d.npy"
    older_version = tmp_path / f"references.npz.tmp-{dead}-0a1b2c3d"  # a name of a version before hosts
    # Another host's shard in progress: its pid means nothing here (dead here, alive there): left alone.
    other_writing = tmp_path / f"shard-00002.features.tmp-{other}-{dead}-0a1b2c3d.npy"
    other_stale = tmp_path / f"shard-00003.features.tmp-{other}-{dead}-0a1b2c3d.npy"
    other_aside = tmp_path / f"features.old-{other}-{dead}-0a1b2c3d"  # a folder moved aside there, just now
    for path in (this_dead, this_alive, older_version, other_writing, other_stale):
        path.write_bytes(b"x")
    other_aside.mkdir()
    day_ago = time.time() - atomic_io.LITTER_AGE - 60
    os.utime(other_stale, (day_ago, day_ago))
    cleaned = atomic_io.clean_litter(str(tmp_path))
    assert sorted(cleaned) == sorted(map(str, (this_dead, older_version, other_stale)))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (this_alive, other_writing,
                                                                                 other_aside))
    os.utime(other_aside, (day_ago, day_ago))  # untouched for a day: put back as this host's would be
    assert atomic_io.clean_litter(str(tmp_path)) == [str(other_aside)]
    assert (tmp_path / "features").is_dir()


def test_a_host_name_with_digits_and_dashes_is_told_from_the_pid(tmp_path):
    for host in ("node-12", "123", "gpu-3-a", "h_x"):
        name = f"shard-00000.features.tmp-{host}-4567-89abcdef.npy"
        assert atomic_io.temp_owner(name) == ("tmp", host, 4567)
    assert atomic_io.temp_owner("config.run.json.tmp-4567") == ("tmp", atomic_io.host_name(), 4567)
    assert atomic_io.temp_owner("config.run.json.tmp") is None
    assert atomic_io.temp_owner("photo.old-summer-2019.jpg") is None  # a host name comes with a token
