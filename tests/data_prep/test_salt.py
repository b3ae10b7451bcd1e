"""The PII salt comes from the environment or a file, is never written anywhere, and is refused in the config."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dp_helpers import REPO, compose_cfg, hr_rows, read_split_files, to_csv_bytes

from data_prep.config import SALT_ENV, ConfigError, pii_salt, salt_argv_problem, salt_fingerprint, validate
from data_prep.prepare import run

SALT = "s4lt-9f3c1e7a2b6d4058"  # distinctive: found by chance in no output


def _cli(cwd, *args: str, salt_env: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != SALT_ENV}
    env["PYTHONPATH"] = str(REPO)
    if salt_env is not None:
        env[SALT_ENV] = salt_env
    return subprocess.run(
        [sys.executable, "-m", "data_prep", *args], cwd=cwd, env=env, capture_output=True, timeout=300
    )


def _secrets(salt: str) -> list[bytes]:
    """The salt and what it keys: the SipHash key data_prep.hr derives from it."""
    key = base64.b64encode(hashlib.sha256(salt.encode()).digest()).decode()[:16]
    return [salt.encode(), key.encode()]


def _files_holding(root, secrets: list[bytes]) -> tuple[list[str], list[str]]:
    """(every file under root, those whose bytes contain any secret)."""
    files, hits = [], []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            files.append(os.path.relpath(path, root))
            data = Path(path).read_bytes()
            if any(s in data for s in secrets):
                hits.append(files[-1])
    return files, hits


def test_salt_from_environment_and_file_is_written_nowhere(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "secret").mkdir()
    src = tmp_path / "in" / "hr.csv"
    src.write_bytes(to_csv_bytes(hr_rows(60)))
    salt_file = tmp_path / "secret" / "salt"
    salt_file.write_text(SALT + "\n")
    outs = {}
    for how in ("env", "file"):
        # A fresh working directory: Hydra's run dir (.), any outputs/ or .hydra/ and out_dir all land in it.
        cwd = tmp_path / f"cwd-{how}"
        cwd.mkdir()
        args = ["data_prep=hr_generic", f"input={src}", "out_dir=data/out", "progress=false"]
        if how == "env":
            r = _cli(cwd, *args, salt_env=SALT)
        else:
            r = _cli(cwd, *args, f"pii.salt_file={salt_file}")
        assert r.returncode == 0, r.stderr.decode()
        files, hits = _files_holding(cwd, _secrets(SALT))
        assert {"data/out/train.jsonl", "data/out/manifest.json", "data/out/prepare.log"} <= set(files), files
        assert all(f.startswith("data/out/") for f in files), files  # nothing beside the dataset
        assert hits == []
        assert not any(s in r.stdout + r.stderr for s in _secrets(SALT))
        outs[how] = cwd / "data" / "out"
    manifests = {how: json.loads((out / "manifest.json").read_text()) for how, out in outs.items()}
    for m in manifests.values():
        assert m["pii"] == {"mode": "hash", "salt": "given", "salt_fingerprint": salt_fingerprint(SALT)}
    # The same salt, read either way, gives the same pseudonyms.
    assert (outs["env"] / "train.jsonl").read_bytes() == (outs["file"] / "train.jsonl").read_bytes()


def test_salt_on_the_command_line_is_refused_without_echoing_it(tmp_path):
    src = tmp_path / "hr.csv"
    src.write_bytes(to_csv_bytes(hr_rows(10)))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    r = _cli(cwd, "data_prep=hr_generic", f"input={src}", "out_dir=out", f"pii.salt={SALT}")
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "DATA_PREP_SALT" in err and "pii.salt_file=<path>" in err, err
    assert SALT.encode() not in r.stdout + r.stderr
    assert list(cwd.iterdir()) == []  # refused before Hydra or data_prep wrote anything


@pytest.mark.parametrize(
    "argv",
    [["pii.salt=abc"], ["+pii.salt=abc"], ["++pii.salt=abc"], ["pii={mode: hash, salt: abc}"]],
)
def test_every_command_line_form_of_the_salt_is_refused(argv):
    problem = salt_argv_problem(["data_prep=hr_generic", *argv])
    assert problem is not None and "abc" not in problem and SALT_ENV in problem


def test_salt_file_and_mode_overrides_are_not_refused():
    assert salt_argv_problem(["pii.salt_file=/run/secrets/salt", "pii.mode=drop", "pii={mode: drop}"]) is None


def test_salt_in_the_config_is_refused_by_validate(monkeypatch):
    monkeypatch.delenv(SALT_ENV, raising=False)
    cfg = compose_cfg("data_prep=hr_generic", "input=x", f"pii.salt={SALT}")
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "pii.salt_file=<path>" in str(e.value) and SALT not in str(e.value)


def test_salt_sources(monkeypatch, tmp_path):
    monkeypatch.delenv(SALT_ENV, raising=False)
    cfg = compose_cfg("data_prep=hr_generic", "input=x")
    assert pii_salt(cfg) == ""  # none given: the readers draw a random one per run
    monkeypatch.setenv(SALT_ENV, "from-env")
    assert pii_salt(cfg) == "from-env"
    f = tmp_path / "salt"
    f.write_text("  from-file \r\n")
    cfg = compose_cfg("data_prep=hr_generic", "input=x", f"pii.salt_file={f}")
    with pytest.raises(ConfigError, match="given twice"):
        pii_salt(cfg)
    monkeypatch.delenv(SALT_ENV)
    assert pii_salt(cfg) == "from-file"
    f.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        pii_salt(cfg)
    cfg = compose_cfg("data_prep=hr_generic", "input=x", f"pii.salt_file={tmp_path / 'absent'}")
    with pytest.raises(ConfigError, match="cannot be read"):
        validate(cfg)


def test_fingerprint_tells_salts_apart():
    assert salt_fingerprint("a") == salt_fingerprint("a")
    assert salt_fingerprint("a") != salt_fingerprint("b")
    assert len(salt_fingerprint("a")) == 16 and int(salt_fingerprint("a"), 16) >= 0


def test_the_salt_keys_the_ids_and_none_means_random_per_run(tmp_path, monkeypatch):
    src = tmp_path / "hr.csv"
    src.write_bytes(to_csv_bytes(hr_rows(30)))

    def ids(name: str, salt: str | None) -> tuple[list[str], dict]:
        if salt is None:
            monkeypatch.delenv(SALT_ENV, raising=False)
        else:
            monkeypatch.setenv(SALT_ENV, salt)
        cfg = compose_cfg(
            "data_prep=hr_generic", f"input={src}", f"out_dir={tmp_path / name}", "progress=false"
        )
        manifest = run(cfg, log_fn=lambda _: None)
        return sorted(e.id for s in read_split_files(tmp_path / name).values() for e in s), manifest["pii"]

    a1, pii = ids("a1", "a")
    assert pii == {"mode": "hash", "salt": "given", "salt_fingerprint": salt_fingerprint("a")}
    assert ids("a2", "a")[0] == a1
    assert ids("b", "b")[0] != a1
    r1, pii = ids("r1", None)
    assert pii == {"mode": "hash", "salt": "random per run"}
    assert ids("r2", None)[0] != r1
