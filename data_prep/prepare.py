"""Turn one source (HR export, support tickets, rubric scores) into train/validation/test chat JSONL.

Steps, the same for every source: read (bad records rejected with their line number) -> build the
prompts and labels -> drop exact duplicates -> seeded grouped-stratified split -> answers (HR reasons
use training-split statistics only) -> write ``train.jsonl``, ``validation.jsonl``, ``test.jsonl``,
``rejects.jsonl``, ``manifest.json`` and ``prepare.log`` (what the console showed) into
``<out_dir>.partial``, renamed to ``out_dir`` once complete. An existing ``out_dir`` is refused unless
``overwrite=true``, and it is replaced only by that last rename: an interrupted or failed run leaves it as it
was. The run fails on a configuration or input-file problem, or when every record was rejected (the top
reasons named), never on a bad record; the counts in the manifest add up.

Ids are pseudonymised with a keyed hash. The key (the salt) is read from the environment
(``DATA_PREP_SALT``) or from a file (``pii.salt_file=<path>``), never from the config or the command line,
so that nothing written (no Hydra config dump, log or manifest) holds it; the manifest records its
fingerprint, equal for datasets made with the same salt. Without a salt, a random one is drawn per run.

The source reader is the one the task registers (`data_prep.tasks`); a task from another module is loaded
with ``task_modules=[<module>]``.

Examples:
    DATA_PREP_SALT=$(cat ~/.salt) python -m data_prep data_prep=hr_ibm_attrition input=../shared/data/hr/ibm_hr_attrition.csv
    python -m data_prep data_prep=hr_hrdataset_v14 input=../shared/data/hr/HRDataset_v14.csv answer_format=json
    python -m data_prep data_prep=tickets input=../shared/data/tickets overwrite=true
    python -m data_prep data_prep=rubric input=submissions/ pii.salt_file=$HOME/.config/gpt-oss/salt
    python -m data_prep --help
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from data_prep import config as _config  # noqa: F401  (registers the schema in the ConfigStore)
from data_prep import tasks
from data_prep.config import SALT_ENV, ConfigError, pii_salt, salt_argv_problem, salt_fingerprint, validate
from data_prep.dataset import SPLITS, _reason_kind, drop_duplicates, split_codes, write_dataset
from data_prep.table import InputError

log = logging.getLogger(__name__)

LOG_NAME = "prepare.log"
# What a folder data_prep wrote may hold (.hydra/ from runs before the salt left the config); overwrite=true
# replaces only such a folder (or one with a manifest.json), never a folder of someone else's files.
OUTPUT_NAMES = frozenset(
    {"train.jsonl", "validation.jsonl", "test.jsonl", "rejects.jsonl", "manifest.json", LOG_NAME, ".hydra"}
)


class NothingWrittenError(ValueError):
    """Every record was rejected (or there were none): nothing to write; the message names the top reasons."""


def run(cfg: DictConfig, log_fn: Callable[[str], None] = log.info) -> dict:
    """Prepare one dataset from a composed config; return its manifest.

    Everything is written into ``<out_dir>.partial`` and renamed to ``out_dir`` at the end, so an existing
    ``out_dir`` (replaced only with ``overwrite=true``) stays byte-identical when the run fails or is
    interrupted. ``prepare.log`` holds every line given to ``log_fn``.

    Raises:
        ConfigError: The config has problems (all listed, each with its fix), or out_dir exists.
        InputError: An input file is missing or does not match the mapping.
        NothingWrittenError: No example is left to write; the message names the top reject reasons.

    Examples:
        python -m data_prep data_prep=tickets input=../shared/data/tickets out_dir=work/data/tickets
    """
    validate(cfg)
    out = Path(cfg.out_dir)
    _check_out_dir(out, cfg.overwrite)
    transcript: list[str] = []

    def say(message: str) -> None:
        log_fn(message)
        transcript.append(message)

    salt = pii_salt(cfg)
    fingerprint = salt_fingerprint(salt) if salt else None
    if cfg.pii.mode == "hash":
        say(
            f"pii: ids hashed with the given salt (fingerprint {fingerprint})"
            if salt
            else f"pii: no salt given ({SALT_ENV} or pii.salt_file): a salt random per run, ids differ between runs"
        )
    module = tasks.get(cfg.data_prep.task).source  # validate loaded cfg.task_modules
    ex, rejects, n_records, extra = module.build(cfg)
    ex, dups = drop_duplicates(ex)
    by_source = {sr.source: sr for sr in rejects}
    for source, r in dups:
        by_source[source].rejects.append(r)
    if len(ex.frame) == 0:
        raise NothingWrittenError(_nothing_written(cfg, rejects, n_records))
    fractions = {name: float(cfg.splits[name]) for name in SPLITS}
    codes = split_codes(ex.frame["group"], ex.frame["stratum"], fractions, cfg.seed)
    ex.frame["split"] = pd.Categorical.from_codes(codes, categories=SPLITS)
    tasks.get(cfg.data_prep.task).check_split(ex, cfg)  # e.g. a prompt column that states the label
    answer_columns, answer_extra = module.answers(ex, cfg)
    for name, values in answer_columns.items():
        ex.set_column(name, values)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
        say(f"removed {partial}, left by an interrupted run")
    try:
        partial.mkdir(parents=True)
        manifest = write_dataset(
            partial,
            ex,
            task=cfg.data_prep.task,
            system_prompt=module.system_prompt(ex, cfg),
            rejects=rejects,
            inputs=module.input_paths(cfg),
            n_records=n_records,
            manifest_extra={
                "source_config": cfg.data_prep.name,
                "answer_format": cfg.answer_format,
                "seed": cfg.seed,
                "splits": fractions,
                "pii": {
                    "mode": cfg.pii.mode,
                    "salt": "given" if salt else "random per run",
                    **({"salt_fingerprint": fingerprint} if salt else {}),
                },
                **extra,
                **answer_extra,
            },
        )
        c = manifest["counts"]
        say(
            f"{cfg.data_prep.name}: {c['records']} records -> {c['written']} written "
            f"({', '.join(f'{k} {v}' for k, v in c['by_split'].items())}) + {c['rejected']} rejected "
            f"(see {out / 'rejects.jsonl'}); manifest {out / 'manifest.json'}"
        )
        (partial / LOG_NAME).write_text("".join(f"{line}\n" for line in transcript), encoding="utf-8")
        _replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise ConfigError(
            f"out_dir={out} exists; pass overwrite=true to replace it, or choose another out_dir="
        )
    if not out.is_dir() or out.is_symlink():
        raise ConfigError(f"out_dir={out} exists and is not a folder; choose another out_dir=")
    names = {p.name for p in out.iterdir()}
    if "manifest.json" not in names and not names <= OUTPUT_NAMES:
        raise ConfigError(
            f"out_dir={out} holds files data_prep did not write ({', '.join(sorted(names - OUTPUT_NAMES)[:3])}); "
            "overwrite=true replaces only a data_prep output folder: choose another out_dir="
        )


def _replace(partial: Path, out: Path) -> None:
    """Rename the complete ``partial`` to ``out``; a previous ``out`` goes only once the new one is in place."""
    if not out.exists():
        os.rename(partial, out)
        return
    previous = out.with_name(out.name + ".previous")
    if previous.exists():
        shutil.rmtree(previous)
    os.rename(out, previous)
    os.rename(partial, out)
    shutil.rmtree(previous)


def _nothing_written(cfg: DictConfig, rejects: list, n_records: int) -> str:
    if n_records == 0:
        return f"no examples written: input={cfg.input} holds no records (only a header, or empty files)"
    reasons, first = Counter(), {}
    for sr in rejects:
        for r in sr.rejects:
            kind = _reason_kind(r.reason)
            reasons[kind] += 1
            first.setdefault(kind, f"{sr.source} line {r.line}")
    top = "; ".join(f"{n} x {kind} (first: {first[kind]})" for kind, n in reasons.most_common(3))
    k = len(reasons) - 3
    more = f" (and {k} more reason{'s' if k > 1 else ''})" if k > 0 else ""
    return (
        f"no examples written: all {n_records} records were rejected; top reasons: {top}{more}. Fix the input or "
        f"its mapping (data_prep={cfg.data_prep.name}); nothing was written (an existing out_dir is left as it was)"
    )


CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(config_path=CONF_DIR, config_name="data_prep", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg, log_fn=print)
    except (ConfigError, InputError, NothingWrittenError) as e:
        raise SystemExit(f"error: {e}") from None


def main() -> None:
    """Entry point: ``python -m data_prep data_prep=<source> input=<path>``.

    A salt on the command line is refused before Hydra starts, so it reaches no config dump and no log.
    """
    problem = salt_argv_problem(sys.argv[1:])
    if problem:
        raise SystemExit(problem)
    _hydra_main()


if __name__ == "__main__":
    main()
