"""The stage folders a store can hold, declared once, in the order the pipeline builds them.

`distillery gc` collects every folder kind listed here that no kept run uses; a stage whose
folder name is missing here would never be collected (shards, re-tokenized data and student
augmentation once were not). `tests/test_gc.py` checks that every stage name the code builds
with (`run_stage`, `fan_out`, `stage=`) is declared.
"""

from __future__ import annotations

STAGE_FOLDERS = (
    "data",
    "teacher",
    "augment",
    "logit_shard",  # one unit of a sharded logit cache; assembled into logit_cache
    "logit_cache",
    "student_data",  # the data re-tokenized for a student with another tokenizer
    "student_augment",  # the augmented rows in the student's token ids
    "student",
    "evaluation",
    "export",
    "quantize",
)
