"""Fast variant (in `make test`) of tests/test_train_run.py's slow resume tests: a run killed in its second epoch
and resumed from its last checkpoint ends with the same validations, test metrics and exported weights as an
unbroken run."""

from __future__ import annotations

from tests.test_train_run import assert_resumed_ends_like_unbroken

# tiny_bert, uni-encoder (it reads the labels in their shuffled order); 12 rows: 9 train (3 steps of 4), 3 validation;
# two epochs; one test set of 4 rows
FAST = [
    "arch=uni",
    "trainer.max_epochs=2",
    "data.benchmarks=['emotion:train:12']",
    "data.eval_datasets=['sst2:test:4']",
    "eval_embed_sim=false",
]


def test_a_resumed_run_ends_like_an_unbroken_one_fast(tmp_path):
    # killed at the start of step 4 (mid epoch 2), after the step-4 checkpoint: the resumed run must replay only
    # epoch 2's validation (a run that started afresh would log epoch 1's as well) and end like the unbroken one
    assert_resumed_ends_like_unbroken(tmp_path, FAST, {"step": 4})
