"""Turn one source (HR export, support tickets, rubric scores) into train/validation/test chat JSONL.

Steps, the same for every source: read (bad records rejected with their line number) -> build the
prompts and labels -> drop exact duplicates -> seeded grouped-stratified split -> answers (HR reasons
use training-split statistics only) -> write ``train.jsonl``, ``validation.jsonl``, ``test.jsonl``,
``rejects.jsonl`` and ``manifest.json`` under ``out_dir``. The run fails only on a configuration or
input-file problem, never on a bad record; the counts in the manifest add up.

The source reader is the one the task registers (`data_prep.tasks`); a task from another module is loaded
with ``task_modules=[<module>]``.

Examples:
    python -m data_prep data_prep=hr_ibm_attrition input=../shared/data/hr/ibm_hr_attrition.csv
    python -m data_prep data_prep=hr_hrdataset_v14 input=../shared/data/hr/HRDataset_v14.csv answer_format=json
    python -m data_prep data_prep=tickets input=../shared/data/tickets
    python -m data_prep data_prep=rubric input=submissions/ pii.salt=$DATA_PREP_SALT
    python -m data_prep --help
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from data_prep import config as _config  # noqa: F401  (registers the schema in the ConfigStore)
from data_prep import tasks
from data_prep.config import ConfigError, validate
from data_prep.dataset import SPLITS, drop_duplicates, split_codes, write_dataset
from data_prep.table import InputError

log = logging.getLogger(__name__)


def run(cfg: DictConfig, log_fn: Callable[[str], None] = log.info) -> dict:
    """Prepare one dataset from a composed config; return its manifest.

    Raises:
        ConfigError: The config has problems (all listed, each with its fix).
        InputError: An input file is missing or does not match the mapping.

    Examples:
        python -m data_prep data_prep=tickets input=../shared/data/tickets out_dir=work/data/tickets
    """
    validate(cfg)
    module = tasks.get(cfg.data_prep.task).source  # validate loaded cfg.task_modules
    ex, rejects, n_records, extra = module.build(cfg)
    ex, dups = drop_duplicates(ex)
    by_source = {sr.source: sr for sr in rejects}
    for source, r in dups:
        by_source[source].rejects.append(r)
    fractions = {name: float(cfg.splits[name]) for name in SPLITS}
    codes = split_codes(ex.frame["group"], ex.frame["stratum"], fractions, cfg.seed)
    ex.frame["split"] = pd.Categorical.from_codes(codes, categories=SPLITS)
    answer_columns, answer_extra = module.answers(ex, cfg)
    for name, values in answer_columns.items():
        ex.set_column(name, values)
    manifest = write_dataset(
        cfg.out_dir,
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
            "pii": {"mode": cfg.pii.mode, "salt": "given" if cfg.pii.salt else "random per run"},
            **extra,
            **answer_extra,
        },
    )
    c = manifest["counts"]
    log_fn(
        f"{cfg.data_prep.name}: {c['records']} records -> {c['written']} written "
        f"({', '.join(f'{k} {v}' for k, v in c['by_split'].items())}) + {c['rejected']} rejected "
        f"(see {Path(cfg.out_dir) / 'rejects.jsonl'}); manifest {Path(cfg.out_dir) / 'manifest.json'}"
    )
    return manifest


CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(config_path=CONF_DIR, config_name="data_prep", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: ``python -m data_prep data_prep=<source> input=<path>``."""
    try:
        run(cfg, log_fn=print)
    except (ConfigError, InputError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
