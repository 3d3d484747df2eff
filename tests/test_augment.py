"""Distillation data augmentation: seeded, distinct, unlabelled, labelled through the cache."""

import numpy as np
import pytest

from distill.augment import augment_texts, augmentation_stage, load_augmented
from distill.config import AugmentationConfig
from distill.logit_cache import logit_cache_stage, open_targets
from distill.losses import UNLABELLED
from distill.teacher import teacher_stage

TEXTS = [
    f"the film number {i} was a {'great' if i % 2 else 'dull'} ride for everyone" for i in range(40)
]


def test_augmented_text_is_seeded_sized_and_new():
    config = AugmentationConfig(multiplier=1.5, seed=3)
    first = augment_texts(TEXTS, config)
    assert first == augment_texts(TEXTS, config)
    assert first != augment_texts(TEXTS, AugmentationConfig(multiplier=1.5, seed=4))
    assert len(first) == 60
    assert len(set(first)) == 60 and not set(first) & set(TEXTS)
    vocabulary = {word for text in TEXTS for word in text.split()}
    assert all(set(text.split()) <= vocabulary for text in first)


def test_zero_multiplier_makes_nothing():
    assert augment_texts(TEXTS, AugmentationConfig(multiplier=0.0)) == []


@pytest.fixture(scope="module")
def tiny_teacher(tiny_config, tiny_data):
    return teacher_stage(tiny_config.workdir, tiny_config.teacher, tiny_data)


def test_augmented_rows_are_unlabelled_and_cached_after_the_train_rows(
    tiny_config, tiny_data, tiny_teacher
):
    config = AugmentationConfig(multiplier=0.5)
    augmented = augmentation_stage(tiny_config.workdir, config, tiny_data, tiny_teacher.path)
    rows = load_augmented(augmented)
    assert len(rows) == 140 and set(rows["label"]) == {UNLABELLED}
    plain = logit_cache_stage(tiny_config.workdir, tiny_teacher, tiny_data)
    with_augmented = logit_cache_stage(tiny_config.workdir, tiny_teacher, tiny_data, augmented)
    assert plain.key != with_augmented.key
    assert with_augmented.manifest.shape == [280 + 140, 2]
    both, train_only = open_targets(with_augmented), open_targets(plain)
    np.testing.assert_allclose(both.logits[:280], train_only.logits, atol=1e-5)
    assert both.cls_states.shape == (420, 3, 32)  # embeddings + 2 teacher layers, hidden 32
